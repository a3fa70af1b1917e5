//! Causal attention on flex as one op with its own backward pass. (Over 500 lines: the forward,
//! the backward and the autodiff node share one block layout and belong together.)
//!
//! Queries are taken in blocks of [`BLOCK`] rows; block `i` multiplies only against the keys
//! it can see (`..(i + 1)·BLOCK`), so at long sequences the matmuls skip most of the masked
//! upper triangle (at 1024, 36 of 64 tiles are computed). Each block's scores become
//! probabilities in place ([`super::softmax_row`]), and those probabilities are what the
//! backward pass keeps (no recomputation: the shapes this runs at are small enough to hold
//! them). Backward, per block, with `δ = rowsum(dO ⊙ O)`:
//!
//! ```text
//! dP = dO·Vᵀ    dS = scale · P ⊙ (dP − δ)    dQ = dS·K    dK += dSᵀ·Q    dV += Pᵀ·dO
//! ```
//!
//! Items and heads run in parallel, and within one every product is a call of the `gemm`
//! crate (flex's own engine) on the inputs where they lie (strided views, no copies) that
//! writes into its place in the output, the probabilities or the gradients ([`super::gemm`]):
//! no product is copied after it is made, and the key and value gradients accumulate inside
//! `gemm`. Without autodiff (prefill, scoring) no probabilities are kept: one scratch block per
//! thread. Under autodiff the op is registered with burn's graph as one node with three parents
//! (burn-autodiff's `Backward`), so the backward pass above replaces the chain of ops burn
//! records for its attention fallback.
//!
//! A KV-cache decoding step (a few queries after many cached keys) takes [`decode`]: dot
//! products, the row softmax and a weighted sum of value rows, read from the cache's buffer
//! in place.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::any::Any;

use super::flex::{as_backend, slice};
use super::gemm::{matmul_into, Mat, MatMut};
use super::{softmax_row, softmax_row_backward};

/// Query rows per block. Smaller blocks skip more of the masked triangle but make smaller,
/// less efficient matmuls: on the 2-core development machine, 128 beat 32 and 64 at
/// sequences 256 and 512 (`cargo bench --bench attention`, forward + backward).
const BLOCK: usize = 128;

/// The `[start, end)` query rows of each block.
fn blocks(seq: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> + ExactSizeIterator {
    (0..seq)
        .step_by(BLOCK)
        .map(move |start| (start, (start + BLOCK).min(seq)))
}

/// An extra attention mask (true: hidden) of shape `[batch or 1, heads or 1, queries, keys]`.
#[derive(Debug)]
struct Mask {
    hidden: Vec<bool>,
    batch_stride: usize,
    head_stride: usize,
    keys: usize,
}

impl Mask {
    /// `None` when `mask` does not have that shape.
    fn new<B: Backend>(
        mask: &Tensor<B, 4, Bool>,
        [batch, heads, queries, keys]: [usize; 4],
    ) -> Option<Self> {
        let [mask_batch, mask_heads, rows, columns] = mask.dims();
        if rows != queries
            || columns != keys
            || ![1, batch].contains(&mask_batch)
            || ![1, heads].contains(&mask_heads)
        {
            return None;
        }
        let hidden = mask.clone().into_data().iter::<bool>().collect::<Vec<_>>();
        let head_stride = if mask_heads == 1 { 0 } else { queries * keys };
        let batch_stride = if mask_batch == 1 {
            0
        } else {
            mask_heads * queries * keys
        };
        Some(Self {
            hidden,
            batch_stride,
            head_stride,
            keys,
        })
    }

    /// The flags of the first `keys` keys for `query` in head `head` of item `item`.
    fn row(&self, item: usize, head: usize, query: usize, keys: usize) -> &[bool] {
        &self.hidden[item * self.batch_stride + head * self.head_stride + query * self.keys..]
            [..keys]
    }
}

/// What the backward pass needs: the inputs (views, as the caller passed them), the output
/// (contiguous) and the probabilities (per item and head, each block's `[rows, keys]` one
/// after another).
#[derive(Clone, Debug)]
struct Saved {
    query: FlexTensor,
    key: FlexTensor,
    value: FlexTensor,
    output: FlexTensor,
    probabilities: Vec<f32>,
    scale: f32,
}

fn dims(tensor: &FlexTensor) -> [usize; 4] {
    let shape = tensor.layout().shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The `[rows, dim]` matrices of a `[batch, heads, rows, dim]` flex tensor, one per item and
/// head (a "unit"), read where they lie whatever its (non-negative) strides.
struct Heads<'a> {
    values: &'a [f32],
    offset: usize,
    strides: [usize; 4],
    heads: usize,
    dim: usize,
}

impl<'a> Heads<'a> {
    fn new(tensor: &'a FlexTensor) -> Option<Self> {
        let layout = tensor.layout();
        let strides = layout
            .strides()
            .iter()
            .map(|&s| usize::try_from(s).ok())
            .collect::<Option<Vec<_>>>()?;
        let [_, heads, _, dim] = dims(tensor);
        Some(Self {
            values: tensor.storage::<f32>(),
            offset: layout.start_offset(),
            strides: strides.try_into().ok()?,
            heads,
            dim,
        })
    }

    /// Whether each row's values are contiguous (what [`Heads::row`] needs).
    fn contiguous_rows(&self) -> bool {
        self.strides[3] == 1
    }

    fn start(&self, unit: usize, row: usize) -> usize {
        let [b, h, r, _] = self.strides;
        self.offset + unit / self.heads * b + unit % self.heads * h + row * r
    }

    /// Rows `rows` of a unit's matrix.
    fn mat(&self, unit: usize, rows: std::ops::Range<usize>) -> Mat<'a> {
        Mat::new(
            self.values,
            self.start(unit, rows.start),
            [rows.len(), self.dim],
            [self.strides[2], self.strides[3]],
        )
    }

    /// One row of a unit (needs [`Heads::contiguous_rows`]).
    fn row(&self, unit: usize, row: usize) -> &'a [f32] {
        &self.values[self.start(unit, row)..][..self.dim]
    }
}

/// Per unit, the offset of each block's probabilities, and their total.
fn probability_offsets(seq: usize) -> (Vec<usize>, usize) {
    let mut total = 0;
    let offsets = blocks(seq)
        .map(|(start, end)| {
            let offset = total;
            total += (end - start) * end;
            offset
        })
        .collect();
    (offsets, total)
}

/// `softmax(scale · q·kᵀ, causal, mask) · v` and, when `keep` (autodiff), what its backward
/// pass needs: `None` when a tensor has negative strides. Items and heads run in parallel;
/// within one, the blocks' products are written straight into the probabilities (kept, or a
/// scratch block reused) and the output rows.
fn forward(
    query: FlexTensor,
    key: FlexTensor,
    value: FlexTensor,
    mask: Option<&Mask>,
    scale: f32,
    keep: bool,
) -> Option<Saved> {
    let [batch, heads, seq, dim] = dims(&query);
    let (q, k, v) = (Heads::new(&query)?, Heads::new(&key)?, Heads::new(&value)?);
    let (offsets, per_unit) = probability_offsets(seq);
    let mut output = vec![0.0f32; batch * heads * seq * dim];
    let mut probabilities = vec![0.0f32; if keep { batch * heads * per_unit } else { 0 }];
    // One item and head: its blocks' probabilities go to `p` (all of them, at their offsets,
    // when kept; else one block at a time at its start).
    let unit = |unit: usize, out: &mut [f32], p: &mut [f32]| {
        let (item, head) = (unit / heads, unit % heads);
        for ((start, end), &offset) in blocks(seq).zip(&offsets) {
            let rows = end - start;
            let offset = if keep { offset } else { 0 };
            let block = &mut p[offset..offset + rows * end];
            matmul_into(
                MatMut::new(block, [rows, end], end),
                q.mat(unit, start..end),
                k.mat(unit, 0..end).t(),
                false,
            );
            for (i, row) in block.chunks_exact_mut(end).enumerate() {
                let query = start + i;
                let hidden = mask.map(|m| m.row(item, head, query, end));
                softmax_row(row, query + 1, scale, hidden);
            }
            matmul_into(
                MatMut::new(&mut out[start * dim..end * dim], [rows, dim], dim),
                Mat::new(block, 0, [rows, end], [end, 1]),
                v.mat(unit, 0..end),
                false,
            );
        }
    };
    if keep {
        output
            .par_chunks_mut(seq * dim)
            .zip(probabilities.par_chunks_mut(per_unit))
            .enumerate()
            .for_each(|(i, (out, p))| unit(i, out, p));
    } else {
        output.par_chunks_mut(seq * dim).enumerate().for_each_init(
            || vec![0.0f32; BLOCK.min(seq) * seq],
            |scratch, (i, out)| unit(i, out, scratch),
        );
    }
    Some(Saved {
        query,
        key,
        value,
        output: tensor(output, [batch, heads, seq, dim]),
        probabilities,
        scale,
    })
}

/// The gradients of the query, key and value from the output's, per item and head in
/// parallel. Walking the blocks backwards, the last block (which sees every key) writes the
/// key and value gradients and each earlier one adds into their first rows.
fn backward(saved: &Saved, grad: FlexTensor) -> [FlexTensor; 3] {
    let [batch, heads, seq, dim] = dims(&saved.query);
    let grad = if Heads::new(&grad).is_some_and(|g| g.contiguous_rows()) {
        grad
    } else {
        grad.to_contiguous()
    };
    let g = Heads::new(&grad).expect("contiguous rows");
    let [q, k, v] = [&saved.query, &saved.key, &saved.value]
        .map(|t| Heads::new(t).expect("the forward pass read it"));
    let output = slice(&saved.output);
    let (offsets, per_unit) = probability_offsets(seq);
    let size = batch * heads * seq * dim;
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; size], vec![0.0f32; size], vec![0.0f32; size]);
    dq.par_chunks_mut(seq * dim)
        .zip(dk.par_chunks_mut(seq * dim))
        .zip(dv.par_chunks_mut(seq * dim))
        .zip(saved.probabilities.par_chunks(per_unit))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; BLOCK.min(seq) * seq],
            |scratch, (unit, (((dq, dk), dv), p))| {
                let out = &output[unit * seq * dim..][..seq * dim];
                let delta = (0..seq)
                    .map(|i| dot(g.row(unit, i), &out[i * dim..][..dim]))
                    .collect::<Vec<_>>();
                let last = offsets.len() - 1;
                for (b, ((start, end), &offset)) in blocks(seq).zip(&offsets).enumerate().rev() {
                    let rows = end - start;
                    let p = &p[offset..offset + rows * end];
                    let ds = &mut scratch[..rows * end];
                    matmul_into(
                        MatMut::new(ds, [rows, end], end),
                        g.mat(unit, start..end),
                        v.mat(unit, 0..end).t(),
                        false,
                    );
                    for (i, (ds, p)) in ds
                        .chunks_exact_mut(end)
                        .zip(p.chunks_exact(end))
                        .enumerate()
                    {
                        softmax_row_backward(ds, p, delta[start + i], saved.scale);
                    }
                    let ds = Mat::new(ds, 0, [rows, end], [end, 1]);
                    let p = Mat::new(p, 0, [rows, end], [end, 1]);
                    matmul_into(
                        MatMut::new(&mut dq[start * dim..end * dim], [rows, dim], dim),
                        ds,
                        k.mat(unit, 0..end),
                        false,
                    );
                    matmul_into(
                        MatMut::new(&mut dk[..end * dim], [end, dim], dim),
                        ds.t(),
                        q.mat(unit, start..end),
                        b != last,
                    );
                    matmul_into(
                        MatMut::new(&mut dv[..end * dim], [end, dim], dim),
                        p.t(),
                        g.mat(unit, start..end),
                        b != last,
                    );
                }
            },
        );
    let shape = [batch, heads, seq, dim];
    [tensor(dq, shape), tensor(dk, shape), tensor(dv, shape)]
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let gradients = backward(&ops.state, grad);
        for (parent, gradient) in ops.parents.into_iter().zip(gradients) {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, gradient);
            }
        }
    }
}

type Tracked = Autodiff<Flex>;

/// `Σ a ⊙ b` in eight independent lanes (vectorisable, as `super::sum_lanes`).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a, b) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(x, y)| x * y)
        .sum::<f32>();
    for (a, b) in a.zip(b) {
        for ((lane, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// Work (`batch·heads·queries·keys·dim`) below which a decoding step's attention stays on
/// the calling thread.
const DECODE_PARALLEL_MIN: usize = 1 << 16;

/// Attention of `queries` new positions against `keys` cached ones (the queries are the last
/// of them), without autodiff: per item and head, a row of dot products, the row softmax,
/// and the probability-weighted sum of the value rows, all read where they lie (the cache's
/// buffer: no copies of the keys and values). With grouped-query attention (`key` and
/// `value` have fewer heads, a divisor of the queries'), query head `h` reads key/value head
/// `h / groups`: the cache is never expanded. Returns `[batch, heads, queries, dim]`.
fn decode(
    query: &Heads,
    key: &Heads,
    value: &Heads,
    shape: [usize; 4],
    mask: Option<&Mask>,
    scale: f32,
) -> Vec<f32> {
    let [batch, heads, queries, keys] = shape;
    let dim = query.dim;
    let groups = heads / key.heads;
    let mut out = vec![0.0f32; batch * heads * queries * dim];
    let unit = |(unit, out): (usize, &mut [f32])| {
        let (item, head) = (unit / heads, unit % heads);
        let kv_unit = item * key.heads + head / groups;
        let mut scores = vec![0.0f32; keys];
        for (i, out) in out.chunks_exact_mut(dim).enumerate() {
            let visible = keys - queries + i + 1;
            let q = query.row(unit, i);
            let hidden = mask.map(|m| m.row(item, head, i, keys));
            // A left-padded row starts at its first visible key, so that it is computed
            // exactly as it would be alone (the same sums in the same lanes): a sequence's
            // answer does not depend on the batch it shares a step with.
            let first = hidden.map_or(0, |h| h[..visible].iter().position(|&h| !h).unwrap_or(0));
            for (j, score) in scores[first..visible].iter_mut().enumerate() {
                *score = dot(q, key.row(kv_unit, first + j));
            }
            softmax_row(
                &mut scores[first..],
                visible - first,
                scale,
                hidden.map(|h| &h[first..]),
            );
            for (j, &p) in scores[first..visible].iter().enumerate() {
                if p != 0.0 {
                    for (o, v) in out.iter_mut().zip(value.row(kv_unit, first + j)) {
                        *o += p * v;
                    }
                }
            }
        }
    };
    if batch * heads * queries * keys * dim < DECODE_PARALLEL_MIN {
        out.chunks_mut(queries * dim).enumerate().for_each(unit);
    } else {
        out.par_chunks_mut(queries * dim).enumerate().for_each(unit);
    }
    out
}

/// Queries per call up to which a KV-cache step takes [`decode`] (beyond, burn's op).
const DECODE_MAX_QUERIES: usize = 16;

/// A KV-cache step on flex without autodiff: `None` unless the shapes are `[batch, heads,
/// queries, dim]` against `[batch, kv_heads, keys, dim]` (`kv_heads` dividing `heads`) with
/// `queries < keys`, queries are few, and the rows of each tensor are contiguous.
fn cached_step<B: Backend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
) -> Option<Tensor<B, 4>> {
    let [batch, heads, queries, dim] = query.dims();
    let [_, kv_heads, keys, _] = key.dims();
    if key.dims() != [batch, kv_heads, keys, dim]
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || value.dims() != key.dims()
        || queries >= keys
        || queries > DECODE_MAX_QUERIES
    {
        return None;
    }
    let [query, key, value] = [query, key, value].map(|t| {
        let t: &dyn Any = t;
        t.downcast_ref::<Tensor<Flex, 4>>()
            .map(|t| t.clone().into_primitive().tensor())
    });
    let (query, key, value) = (query?, key?, value?);
    let mask = match mask {
        Some(mask) => Some(Mask::new(mask, [batch, heads, queries, keys])?),
        None => None,
    };
    let [query, key, value] = [&query, &key, &value].map(Heads::new);
    let (query, key, value) = (query?, key?, value?);
    if ![&query, &key, &value].iter().all(|t| t.contiguous_rows()) {
        return None;
    }
    let out = decode(
        &query,
        &key,
        &value,
        [batch, heads, queries, keys],
        mask.as_ref(),
        1.0 / (dim as f32).sqrt(),
    );
    Some(as_backend(Tensor::<Flex, 4>::from_primitive(
        TensorPrimitive::Float(tensor(out, [batch, heads, queries, dim])),
    )))
}

/// Causal attention on `[batch, heads, seq, head_dim]` with Ember's kernels: `None` unless `B`
/// is flex or autodiff over flex (and the kernels are on), the tensors are `f32`, and an extra
/// `mask` is `[batch or 1, heads or 1, queries, keys]`. Queries at the keys' positions take the
/// block kernel (with autodiff or without); a KV-cache step (fewer queries than keys, the last
/// of them) on flex itself takes [`decode`].
pub(crate) fn causal_attention<B: Backend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
) -> Option<Tensor<B, 4>> {
    let [batch, heads, seq, head_dim] = query.dims();
    if !super::flex::is_flex::<B>() || query.dtype() != DType::F32 {
        return None;
    }
    if key.dims() != [batch, heads, seq, head_dim] {
        return cached_step(query, key, value, mask);
    }
    if value.dims() != [batch, heads, seq, head_dim] {
        return None;
    }
    let mask = match mask {
        Some(mask) => Some(Mask::new(mask, [batch, heads, seq, seq])?),
        None => None,
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (query, key, value): (&dyn Any, &dyn Any, &dyn Any) = (query, key, value);
    let output = if let Some(query) = query.downcast_ref::<Tensor<Flex, 4>>() {
        let [key, value] = [key, value].map(|t| {
            let t = t.downcast_ref::<Tensor<Flex, 4>>().expect("one backend");
            t.clone().into_primitive().tensor()
        });
        let saved = forward(
            query.clone().into_primitive().tensor(),
            key,
            value,
            mask.as_ref(),
            scale,
            false,
        )?;
        as_backend(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(
            saved.output,
        )))
    } else {
        let [query, key, value] = [query, key, value].map(|t| {
            let t = t.downcast_ref::<Tensor<Tracked, 4>>().expect("one backend");
            t.clone().into_primitive().tensor()
        });
        let saved = forward(
            query.primitive.clone(),
            key.primitive.clone(),
            value.primitive.clone(),
            mask.as_ref(),
            scale,
            true,
        )?;
        let output = saved.output.clone();
        let nodes = [&query, &key, &value].map(|t| t.node.clone());
        let tracked = match AttentionBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(saved, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        as_backend(Tensor::<Tracked, 4>::from_primitive(
            TensorPrimitive::Float(tracked),
        ))
    };
    Some(output)
}
