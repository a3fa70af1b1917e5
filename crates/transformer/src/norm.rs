//! The two norms: RMSNorm (Llama) and LayerNorm (GPT-2).

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::{Architecture, DecoderConfig};

/// A pre-norm of either shape.
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    /// `x / rms(x) * gamma`
    Rms(RmsNorm<B>),
    /// `(x - mean) / std * gamma + beta`
    Layer(LayerNorm<B>),
}

impl<B: Backend> Norm<B> {
    /// The norm of `config`'s architecture.
    pub fn init(config: &DecoderConfig, device: &B::Device) -> Self {
        match config.architecture {
            Architecture::Llama => Norm::Rms(
                RmsNormConfig::new(config.d_model)
                    .with_epsilon(config.norm_eps)
                    .init(device),
            ),
            Architecture::Gpt2 => Norm::Layer(
                LayerNormConfig::new(config.d_model)
                    .with_epsilon(config.norm_eps)
                    .init(device),
            ),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Norm::Rms(norm) => norm.forward(x),
            Norm::Layer(norm) => norm.forward(x),
        }
    }
}
