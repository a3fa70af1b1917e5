//! The key/value cache for incremental decoding. It belongs to the caller (llama-burn style),
//! so one model can serve many independent generations.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::rope::Positions;

/// Keys and values of every layer for the tokens decoded so far, plus the left padding of
/// each row of the batch.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer: keys and values, `[batch, kv_heads, len, head_dim]` each (grouped-query
    /// attention caches only its key/value heads).
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Pad tokens at the start of each row; those keys are never attended to.
    left_padding: Vec<usize>,
    /// Tokens cached so far (padding included).
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model of `n_layers` and rows with no padding.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            left_padding: Vec::new(),
            len: 0,
        }
    }

    /// An empty cache for a left-padded batch: row `b` starts with `left_padding[b]` pad
    /// tokens, which get no position and are masked out of attention.
    pub fn with_left_padding(n_layers: usize, left_padding: Vec<usize>) -> Self {
        Self {
            layers: vec![None; n_layers],
            left_padding,
            len: 0,
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn padded(&self) -> bool {
        self.left_padding.iter().any(|&p| p > 0)
    }

    /// Positions of the next `seq` tokens.
    pub(crate) fn positions(&self, batch: usize, seq: usize, device: &B::Device) -> Positions<B> {
        if !self.padded() {
            return Positions::Contiguous { start: self.len };
        }
        assert_eq!(
            self.left_padding.len(),
            batch,
            "left padding given for another batch size"
        );
        let ids = self
            .left_padding
            .iter()
            .flat_map(|&pad| (self.len..self.len + seq).map(move |t| t.saturating_sub(pad) as i64))
            .collect::<Vec<_>>();
        Positions::PerToken(Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [batch, seq]),
            device,
        ))
    }

    /// The attention mask for the next `seq` queries against every key (`true` = hidden), or
    /// `None` when no row is padded. Pad keys are hidden; a pad query sees only key 0 (also a
    /// pad), so that no softmax row is empty and no NaN can appear.
    pub(crate) fn mask(
        &self,
        batch: usize,
        heads: usize,
        seq: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 4, Bool>> {
        if !self.padded() {
            return None;
        }
        let keys = self.len + seq;
        let mut hidden = Vec::with_capacity(batch * seq * keys);
        for &pad in &self.left_padding {
            for query in self.len..self.len + seq {
                for key in 0..keys {
                    hidden.push(key < pad && (query >= pad || key != 0));
                }
            }
        }
        let mask =
            Tensor::<B, 4, Bool>::from_data(TensorData::new(hidden, [batch, 1, seq, keys]), device);
        Some(mask.expand([batch, heads, seq, keys]))
    }

    /// Appends a layer's new keys and values and returns all of them. On flex the layer keeps
    /// buffers with room to spare and the new rows are written into them in place (see the
    /// crate's `kernels::flex::append_kv`); elsewhere the cache grows by concatenation. Either
    /// way the first `len` positions of what is stored are the cache.
    pub(crate) fn update(
        &mut self,
        layer: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let end = self.len + keys.dims()[2];
        let entry = &mut self.layers[layer];
        #[cfg(feature = "flex")]
        let appended = crate::kernels::flex::append_kv(entry, self.len, &keys, &values);
        #[cfg(not(feature = "flex"))]
        let appended = false;
        if !appended {
            *entry = Some(match entry.take() {
                None => (keys, values),
                Some((past_keys, past_values)) => (
                    Tensor::cat(vec![past_keys.narrow(2, 0, self.len), keys], 2),
                    Tensor::cat(vec![past_values.narrow(2, 0, self.len), values], 2),
                ),
            });
        }
        let (keys, values) = entry.as_ref().expect("stored above");
        (
            keys.clone().narrow(2, 0, end),
            values.clone().narrow(2, 0, end),
        )
    }

    /// Records that `seq` more tokens went through every layer.
    pub(crate) fn advance(&mut self, seq: usize) {
        self.len += seq;
    }
}
