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

    /// Rows of the batch once something is cached; 0 before.
    pub fn rows(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |(keys, _)| keys.dims()[0])
    }

    /// The pad tokens at the start of each row.
    pub fn left_padding(&self) -> Vec<usize> {
        if self.left_padding.is_empty() {
            vec![0; self.rows()]
        } else {
            self.left_padding.clone()
        }
    }

    /// Keeps the rows `keep`, in that order, and drops the rest: a finished sequence leaves a
    /// running batch (continuous batching). Positions that are padding in every row left are
    /// dropped too, so the cache is as long as its longest row.
    ///
    /// # Errors
    /// A row index out of range.
    pub fn retain_rows(&mut self, keep: &[usize]) -> crate::Result<()> {
        let rows = self.rows();
        if let Some(&row) = keep.iter().find(|&&row| row >= rows) {
            return Err(crate::Error::Input(format!(
                "row {row} of a KV cache of {rows} rows"
            )));
        }
        if keep.len() == rows && keep.iter().enumerate().all(|(i, &row)| i == row) {
            return Ok(());
        }
        let padding = self.left_padding();
        let len = self.len;
        for entry in &mut self.layers {
            let Some((keys, values)) = entry.take() else {
                continue;
            };
            if keep.is_empty() {
                continue;
            }
            let device = keys.device();
            let index = Tensor::<B, 1, Int>::from_data(
                TensorData::new(keep.iter().map(|&r| r as i64).collect(), [keep.len()]),
                &device,
            );
            *entry = Some((
                keys.narrow(2, 0, len).select(0, index.clone()),
                values.narrow(2, 0, len).select(0, index),
            ));
        }
        if keep.is_empty() {
            self.left_padding.clear();
            self.len = 0;
            return Ok(());
        }
        self.left_padding = keep.iter().map(|&row| padding[row]).collect();
        self.trim();
        Ok(())
    }

    /// Appends the rows of `other`, a cache of the same model, after these: a new sequence
    /// joins a running batch (continuous batching). The shorter side is left-padded so that
    /// both end at the same position; every row keeps its own positions.
    ///
    /// # Errors
    /// Caches of different models (layers, heads or head widths).
    pub fn extend(&mut self, other: KvCache<B>) -> crate::Result<()> {
        if other.rows() == 0 {
            return Ok(());
        }
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        let shape = |cache: &KvCache<B>| {
            cache
                .layers
                .iter()
                .map(|l| l.as_ref().map(|(k, _)| [k.dims()[1], k.dims()[3]]))
                .collect::<Vec<_>>()
        };
        if shape(self) != shape(&other) {
            return Err(crate::Error::Input(
                "KV caches of different models cannot share a batch".into(),
            ));
        }
        let len = self.len.max(other.len);
        let (mine, theirs) = (self.left_padding(), other.left_padding());
        let (shift_mine, shift_theirs) = (len - self.len, len - other.len);
        let pad = |t: Tensor<B, 4>, from: usize, shift: usize| {
            let t = t.narrow(2, 0, from);
            if shift == 0 {
                return t;
            }
            let [batch, heads, _, dim] = t.dims();
            let zeros = Tensor::<B, 4>::zeros([batch, heads, shift, dim], &t.device());
            Tensor::cat(vec![zeros, t], 2)
        };
        for (entry, theirs) in self.layers.iter_mut().zip(other.layers) {
            let (Some((k1, v1)), Some((k2, v2))) = (entry.take(), theirs) else {
                return Err(crate::Error::Input(
                    "a KV cache with a layer not yet filled cannot share a batch".into(),
                ));
            };
            *entry = Some((
                Tensor::cat(
                    vec![
                        pad(k1, self.len, shift_mine),
                        pad(k2, other.len, shift_theirs),
                    ],
                    0,
                ),
                Tensor::cat(
                    vec![
                        pad(v1, self.len, shift_mine),
                        pad(v2, other.len, shift_theirs),
                    ],
                    0,
                ),
            ));
        }
        self.left_padding = mine
            .into_iter()
            .map(|p| p + shift_mine)
            .chain(theirs.into_iter().map(|p| p + shift_theirs))
            .collect();
        self.len = len;
        self.trim();
        Ok(())
    }

    /// Drops the leading positions that are padding in every row.
    fn trim(&mut self) {
        let Some(&drop) = self.left_padding.iter().min() else {
            return;
        };
        if drop == 0 {
            return;
        }
        let len = self.len - drop;
        for (keys, values) in self.layers.iter_mut().flatten() {
            *keys = keys.clone().narrow(2, drop, len);
            *values = values.clone().narrow(2, drop, len);
        }
        for pad in &mut self.left_padding {
            *pad -= drop;
        }
        self.len = len;
    }
}
