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

/// Causal self-attention with a fused query/key/value projection, multi-head or grouped-query.
#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    /// d → (heads + 2 · kv_heads) · head_dim: queries, keys and values.
    qkv: Linear<B>,
    /// d → d, a residual projection.
    proj: Linear<B>,
    /// Number of query heads.
    n_heads: usize,
    /// Number of key/value heads; divides `n_heads`.
    n_kv_heads: usize,
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
        let kv = config.kv_heads();
        let width = (config.n_heads + 2 * kv) * config.head_dim();
        Self {
            qkv: linear(
                d,
                width,
                bias || config.has_qkv_bias(),
                config.init_std,
                device,
            ),
            proj: linear(d, d, bias, residual_std, device),
            n_heads: config.n_heads,
            n_kv_heads: kv,
        }
    }

    /// Queries as `[batch, heads, seq, head_dim]`, keys and values as `[batch, kv_heads, seq,
    /// head_dim]`: views of the fused projection's output (`[batch, seq, heads + 2·kv_heads,
    /// head_dim]`: the query heads, then the key heads, then the value heads, each group
    /// moved forward), no copies; the rotation of queries and keys makes new tensors.
    fn project(&self, x: Tensor<B, 3>, context: &AttentionContext<'_, B>) -> [Tensor<B, 4>; 3] {
        let [batch, seq, d] = x.dims();
        let (heads, kv, head_dim) = (self.n_heads, self.n_kv_heads, d / self.n_heads);
        let qkv = linear_rows(&self.qkv, x).reshape([batch, seq, heads + 2 * kv, head_dim]);
        let query = qkv.clone().narrow(2, 0, heads);
        let key = qkv.clone().narrow(2, heads, kv);
        let value = qkv.narrow(2, heads + kv, kv);
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
        let groups = heads / self.n_kv_heads;
        // A decoding step on flex reads the grouped cache as it is; everything else sees keys
        // and values repeated for every query head.
        #[cfg(feature = "flex")]
        let grouped = (groups > 1)
            .then(|| {
                crate::kernels::attention::causal_attention(&query, &key, &value, mask.as_ref())
            })
            .flatten();
        #[cfg(not(feature = "flex"))]
        let grouped: Option<Tensor<B, 4>> = None;
        let out = match grouped {
            Some(out) => out,
            None => {
                let (key, value) = (repeat_kv(key, groups), repeat_kv(value, groups));
                causal_attention(query, key, value, mask)
            }
        };
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

/// Grouped-query attention's keys or values for every query head: `[batch, kv_heads, seq,
/// head_dim]` → `[batch, kv_heads · groups, seq, head_dim]`, key/value head `j` serving query
/// heads `j · groups .. (j + 1) · groups` (HF's `repeat_kv`). One head per query head is
/// returned as it is.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv, seq, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv, groups, seq, head_dim])
        .reshape([batch, kv * groups, seq, head_dim])
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
