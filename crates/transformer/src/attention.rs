//! Causal multi-head self-attention: burn's fused `attention` op, or Ember's kernel on flex.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use crate::init::{linear, linear_rows};
use crate::rope::{Positions, RotaryEmbedding};
use crate::{Architecture, DecoderConfig};

/// Causal self-attention with a fused query/key/value projection.
#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    /// d → 3d: queries, keys and values.
    qkv: Linear<B>,
    /// d → d, a residual projection.
    proj: Linear<B>,
    /// Number of heads.
    n_heads: usize,
}

/// What one attention call sees besides its input.
pub(crate) struct AttentionContext<'a, B: Backend> {
    pub rope: Option<&'a RotaryEmbedding<B>>,
    pub positions: &'a Positions<B>,
    pub mask: Option<Tensor<B, 4, Bool>>,
}

impl<B: Backend> CausalSelfAttention<B> {
    /// The attention layer of `config`.
    pub fn init(config: &DecoderConfig, device: &B::Device) -> Self {
        let d = config.d_model;
        let bias = config.architecture == Architecture::Gpt2;
        let residual_std = config.init_std / (2.0 * config.n_layers as f64).sqrt();
        Self {
            qkv: linear(d, 3 * d, bias, config.init_std, device),
            proj: linear(d, d, bias, residual_std, device),
            n_heads: config.n_heads,
        }
    }

    /// Queries, keys and values as `[batch, heads, seq, head_dim]`: views of the fused
    /// projection's output (`[batch, seq, 3·heads, head_dim]`, each a third of its heads,
    /// then the heads moved forward), no copies; the rotation of queries and keys makes new
    /// tensors.
    fn project(&self, x: Tensor<B, 3>, context: &AttentionContext<'_, B>) -> [Tensor<B, 4>; 3] {
        let [batch, seq, d] = x.dims();
        let (heads, head_dim) = (self.n_heads, d / self.n_heads);
        let qkv = linear_rows(&self.qkv, x).reshape([batch, seq, 3 * heads, head_dim]);
        let part = |i: usize| qkv.clone().narrow(2, i * heads, heads);
        let (query, key, value) = (part(0), part(1), part(2));
        let (query, key) = match context.rope {
            Some(rope) => (
                rope.apply(query, context.positions),
                rope.apply(key, context.positions),
            ),
            None => (query, key),
        };
        [query, key, value].map(|t| t.swap_dims(1, 2))
    }

    fn attend(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let [batch, heads, seq, head_dim] = query.dims();
        let out = causal_attention(query, key, value, mask);
        linear_rows(
            &self.proj,
            out.swap_dims(1, 2).reshape([batch, seq, heads * head_dim]),
        )
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        context: AttentionContext<'_, B>,
    ) -> Tensor<B, 3> {
        let [query, key, value] = self.project(x, &context);
        self.attend(query, key, value, context.mask)
    }

    /// Incremental decoding: attends to the cached keys and values of this layer too, and
    /// appends the new ones to the cache.
    pub(crate) fn forward_cached(
        &self,
        x: Tensor<B, 3>,
        context: AttentionContext<'_, B>,
        layer: usize,
        cache: &mut crate::KvCache<B>,
    ) -> Tensor<B, 3> {
        let [query, key, value] = self.project(x, &context);
        let (key, value) = cache.update(layer, key, value);
        self.attend(query, key, value, context.mask)
    }
}

/// Causal scaled-dot-product attention, `softmax(q·kᵀ/√d + mask) · v`, on `[batch, heads,
/// seq, head_dim]` queries, keys and values; `mask` (true: hidden) applies besides the causal
/// one and broadcasts over `batch` and `heads` where it has 1 there. With the `flex` feature,
/// on flex (with or without autodiff), queries at the keys' positions (no KV cache) take
/// Ember's kernel: block-causal matmuls and one fused backward pass (see the crate's
/// `kernels::attention`). Everything else, and every other backend, takes burn's fused
/// `attention` op. Both give the same values and gradients (tested).
pub fn causal_attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if let Some(out) =
        crate::kernels::attention::causal_attention(&query, &key, &value, mask.as_ref())
    {
        return out;
    }
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    };
    attention(query, key, value, mask, None, options)
}
