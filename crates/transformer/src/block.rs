//! One pre-norm decoder block.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::attention::{AttentionContext, CausalSelfAttention};
use crate::mlp::Mlp;
use crate::norm::Norm;
use crate::DecoderConfig;

/// `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    attention_norm: Norm<B>,
    attention: CausalSelfAttention<B>,
    mlp_norm: Norm<B>,
    mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// A block of `config`.
    pub fn init(config: &DecoderConfig, device: &B::Device) -> Self {
        Self {
            attention_norm: Norm::init(config, device),
            attention: CausalSelfAttention::init(config, device),
            mlp_norm: Norm::init(config, device),
            mlp: Mlp::init(config, device),
        }
    }

    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        context: AttentionContext<'_, B>,
    ) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .attention
                .forward(self.attention_norm.forward(x), context);
        x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
    }

    pub(crate) fn forward_cached(
        &self,
        x: Tensor<B, 3>,
        context: AttentionContext<'_, B>,
        layer: usize,
        cache: &mut crate::KvCache<B>,
    ) -> Tensor<B, 3> {
        let attended = self.attention.forward_cached(
            self.attention_norm.forward(x.clone()),
            context,
            layer,
            cache,
        );
        let x = x + attended;
        x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
    }
}
