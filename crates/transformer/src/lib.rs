#![doc = include_str!("../README.md")]

mod attention;
mod block;
mod cache;
mod config;
mod error;
mod generate;
mod init;
mod kernels;
mod loss;
mod mlp;
mod model;
mod norm;
mod rope;
mod sampling;

pub use attention::{causal_attention, CausalSelfAttention};
pub use block::Block;
pub use cache::KvCache;
pub use config::{Architecture, DecoderConfig};
pub use error::{Error, Result};
pub use generate::{generate, generate_streaming, FinishReason, GenerateConfig, Generation};
pub use init::{fresh_ids, linear, materialize};
#[cfg(feature = "flex")]
pub use kernels::flex::{
    packed_weights, set_coded_weights, set_flex_kernels, set_packed_weights_limit, PackedWeights,
};
pub use kernels::set_few_rows_limit;
pub use loss::{fused_cross_entropy, fused_linear_cross_entropy, masked_cross_entropy, TokenBatch};
pub use mlp::{gelu_tanh, GeluMlp, Mlp, SwiGlu};
pub use model::{Decoder, DecoderInput};
pub use norm::Norm;
pub use rope::{Positions, RotaryEmbedding};
pub use sampling::{Sampler, Sampling};

/// The decoder's first name (its default shape is Llama's, not GPT's).
#[deprecated(since = "0.1.0", note = "renamed to `Decoder`")]
pub type Gpt<B> = Decoder<B>;

/// The decoder config's first name.
#[deprecated(since = "0.1.0", note = "renamed to `DecoderConfig`")]
pub type GptConfig = DecoderConfig;
