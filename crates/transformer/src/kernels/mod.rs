//! CPU kernels for the elementwise and row-wise work of a training step, on plain `f32`
//! slices, and (with the `flex` feature) the bridge that runs them on burn's flex backend.
//!
//! A training step on the CPU spends a large share of its time outside the matmuls: in scalar
//! `expf` (flex's sigmoid and softmax call libm once per element) and in the chains of small
//! ops that burn's autodiff records for an activation or a softmax (each a pass over memory
//! forward, and more of them backward). The kernels here compute, in one pass each, what those
//! chains compute, with an `exp` the compiler vectorises.
//!
//! They enter the autodiff graph by **local linearisation**: for `y = f(x)` with a known
//! Jacobian `J` at the current `x`, the graph records `y' = x·J + (y − x·J)` where `J` and the
//! bracket are constants. Its value is `y` and its gradient is `Jᵀ·grad`, so the backward pass
//! is a multiplication instead of the op's own chain. For an elementwise `f` the Jacobian is a
//! diagonal `d`. The values match burn's ops to float rounding (tested); the gradients are
//! exact first derivatives, as autodiff's are.
//!
//! Causal attention is one op of its own instead (`attention`, with the `flex` feature):
//! block-causal matmuls, the row softmax here, and a backward pass registered with burn's
//! autodiff. The losses, whose gradients are computed in the forward pass, become one graph
//! node that hands them back (`flex::with_gradients`).
//!
//! Inference has two more: matrix products of a few rows (`matmul`: a decoding step's linear
//! layers and tied head, vectorised through `pulp`'s run-time dispatch), and the KV cache's
//! buffers written in place (`flex::append_kv`) and read in place by the decoding step's
//! attention. `gemm` calls flex's matmul engine directly, into the caller's buffers.

// Without the `flex` feature only their tests use the slice kernels.
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

#[cfg(feature = "flex")]
pub(crate) mod attention;
#[cfg(feature = "flex")]
pub(crate) mod coded;
#[cfg(feature = "flex")]
pub(crate) mod flex;
#[cfg(feature = "flex")]
pub(crate) mod gemm;
#[cfg(feature = "flex")]
pub(crate) mod matmul;

use rayon::prelude::*;

/// Rows up to which an inference matmul takes the few-rows kernels unless told otherwise.
const FEW_ROWS: usize = 16;

thread_local! {
    static FEW_ROWS_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(FEW_ROWS) };
}

/// Sets, for the calling thread, the rows up to which an inference matmul on burn's flex
/// backend takes Ember's few-rows kernels (`kernels::matmul`) instead of flex's gemm (default
/// 16; no effect elsewhere).
///
/// A decoding step has one row per sequence of the batch. The few-rows kernels add each
/// output's products in an order that does not depend on the rows beside it, so up to this
/// many rows a sequence decodes bit for bit the same alone as in a batch (the gemm's blocking
/// depends on the row count: the same up to rounding). From 2 to 16 rows they are also the
/// faster ones, even unpacked (batch 4: +35% decoding tokens/s, batch 8: +20%), and at one row
/// the gemm's matrix-vector path runs on one thread where these split the columns over all of
/// them; with the weights packed (`set_packed_weights_limit`) SmolLM2-135M's 30 layers take
/// 33 ms at 16 rows, 53 ms at 32 and 94 ms at 64 (2 cores).
///
/// The default stays at 16 so that a run's results are those of earlier versions (a
/// pipeline's rollouts decode 128 rows at a time); `ember serve` sets its batch size, so that
/// a seeded answer is the same alone or among others at every batch size.
pub fn set_few_rows_limit(rows: usize) {
    FEW_ROWS_LIMIT.with(|limit| limit.set(rows));
}

/// The calling thread's [`set_few_rows_limit`].
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn few_rows_limit() -> usize {
    FEW_ROWS_LIMIT.with(|limit| limit.get())
}

/// Elements per parallel task: below this, rayon's overhead dominates.
const CHUNK: usize = 16 * 1024;

/// `eˣ` to about 2 ulp for `x ≥ −87`, 0 below, `e⁸⁸` above 88: Cephes' `expf` (a degree-6
/// polynomial on `[−ln2/2, ln2/2]` and a power of two built in the exponent bits), written
/// without branches or library calls so that a loop of it vectorises.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5 · 2²³: adding it rounds to an integer, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let clamped = if x > 88.0 { 88.0 } else { x };
    let clamped = if clamped < -87.0 { -87.0 } else { clamped };
    let t = clamped * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = clamped - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let poly = p * r * r + r + 1.0;
    let integer = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let scale = f32::from_bits(((integer + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        poly * scale
    }
}

/// `1 / (1 + e⁻ᶻ)`.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

// GPT-2's tanh GELU as `x · σ(u₂)`, `u₂ = A·x + B·x³` (see `crate::gelu_tanh`).
const GELU_A: f32 = crate::mlp::GELU_A as f32;
const GELU_B: f32 = crate::mlp::GELU_B as f32;

/// Runs `f` over matching chunks of an input and an output, in parallel (on the calling
/// thread when there is one chunk: handing it to rayon's pool costs more than it computes).
fn par_map(x: &[f32], y: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
    if x.len() <= CHUNK {
        return f(x, y);
    }
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| f(x, y));
}

/// `y = gelu_tanh(x)`.
pub(crate) fn gelu(x: &[f32], y: &mut [f32]) {
    par_map(x, y, |x, y| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * sigmoid(x * (GELU_A + GELU_B * x * x));
        }
    });
}

/// The local linearisation of `gelu_tanh` at `x`: its derivative `d` and `c = y − x·d`.
pub(crate) fn gelu_local(x: &[f32], d: &mut [f32], c: &mut [f32]) {
    d.par_chunks_mut(CHUNK)
        .zip(c.par_chunks_mut(CHUNK))
        .zip(x.par_chunks(CHUNK))
        .for_each(|((d, c), x)| {
            for ((d, c), &x) in d.iter_mut().zip(c.iter_mut()).zip(x) {
                let x2 = x * x;
                let s = sigmoid(x * (GELU_A + GELU_B * x2));
                // d/dx [x σ(u₂)] = σ + x σ (1 − σ) u₂′, u₂′ = A + 3B x².
                let slope = s + x * s * (1.0 - s) * (GELU_A + 3.0 * GELU_B * x2);
                *d = slope;
                *c = x * s - x * slope;
            }
        });
}

/// `y = silu(g) · u`.
pub(crate) fn swiglu(g: &[f32], u: &[f32], y: &mut [f32]) {
    let body = |y: &mut [f32], g: &[f32], u: &[f32]| {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = g * sigmoid(g) * u;
        }
    };
    if y.len() <= CHUNK {
        return body(y, g, u);
    }
    y.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(y, (g, u))| body(y, g, u));
}

/// The local linearisation of `silu(g) · u`: the partial derivatives `dg`, `du` and
/// `c = y − g·dg − u·du` (`= −g·dg`, since `y = u·du`).
pub(crate) fn swiglu_local(g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32], c: &mut [f32]) {
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(c.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(((dg, du), c), (g, u))| {
            for ((((dg, du), c), &g), &u) in dg
                .iter_mut()
                .zip(du.iter_mut())
                .zip(c.iter_mut())
                .zip(g)
                .zip(u)
            {
                let s = sigmoid(g);
                let silu = g * s;
                // d silu/dg = σ (1 + g (1 − σ)).
                let slope = u * s * (1.0 + g * (1.0 - s));
                *dg = slope;
                *du = silu;
                *c = -g * slope;
            }
        });
}

/// Cross-entropy of each row of `logits` (`vocab` wide) against its target, weighted by
/// `mask`: returns `Σ mask·(logsumexp − logit[target])` and writes the gradient
/// `(softmax − one-hot) · mask · scale` into `grad`. Targets must be `< vocab`.
pub(crate) fn softmax_cross_entropy(
    logits: &[f32],
    vocab: usize,
    targets: &[usize],
    mask: &[f32],
    scale: f32,
    grad: &mut [f32],
) -> f64 {
    grad.par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter().zip(mask))
        .map(|((grad, row), (&target, &weight))| {
            widest(|| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                for (g, &x) in grad.iter_mut().zip(row) {
                    *g = exp(x - max);
                }
                let sum = sum_lanes(grad);
                let factor = weight * scale / sum;
                for g in grad.iter_mut() {
                    *g *= factor;
                }
                grad[target] -= weight * scale;
                f64::from(weight) * (f64::from(max) + f64::from(sum).ln() - f64::from(row[target]))
            })
        })
        .sum()
}

/// The softmax of `scale · s` over the first `visible` entries of `row`, in place, with the
/// entries flagged in `hidden` (true: masked) left out; everything else becomes 0, and so does
/// a row with nothing visible (as burn's attention makes it). Entries at or below −87 under
/// the row's maximum (after scaling) count as 0.
pub(crate) fn softmax_row(row: &mut [f32], visible: usize, scale: f32, hidden: Option<&[bool]>) {
    let (live, rest) = row.split_at_mut(visible);
    rest.fill(0.0);
    if let Some(hidden) = hidden {
        for (s, _) in live.iter_mut().zip(hidden).filter(|(_, &h)| h) {
            *s = f32::NEG_INFINITY;
        }
    }
    let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY {
        live.fill(0.0);
        return;
    }
    // Two passes, each of which the compiler vectorises: the exponentials, then their sum
    // in eight lanes.
    for s in live.iter_mut() {
        *s = exp((*s - max) * scale);
    }
    let sum = sum_lanes(live);
    let inverse = 1.0 / sum;
    for s in live.iter_mut() {
        *s *= inverse;
    }
}

/// Runs `f` inside a function compiled for the CPU's widest vectors (AVX2 and FMA where it has
/// them, chosen at run time through `pulp`), so that the loops the compiler vectorises in `f`
/// (and in what it inlines) use them: the crate is built for baseline x86-64, whose loops are
/// SSE, four lanes.
#[cfg(feature = "flex")]
#[inline(always)]
fn widest<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Without the `flex` feature (and `pulp`), `f` as it is.
#[cfg(not(feature = "flex"))]
#[inline(always)]
fn widest<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `Σ x` in eight independent lanes (a vectorisable reduction; a single running `f32` sum
/// is not, as the compiler keeps its order).
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder().iter().sum::<f32>();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The backward pass of [`softmax_row`] for one row: `ds = scale · p ⊙ (dp − δ)` in place
/// over `dp`, where `δ = Σⱼ pⱼ dpⱼ` is passed in (for attention it equals `dO · O`, one dot
/// product of `head_dim` values instead of one of the row's length).
pub(crate) fn softmax_row_backward(dp: &mut [f32], p: &[f32], delta: f32, scale: f32) {
    for (d, &p) in dp.iter_mut().zip(p) {
        *d = scale * p * (*d - delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 3.7e-4;
            let exact = f64::from(x).exp();
            let relative = ((f64::from(exp(x)) - exact) / exact).abs();
            worst = worst.max(relative);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-87.5), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(1000.0).is_finite());
    }

    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    }

    #[test]
    fn gelu_and_its_linearisation_match_an_f64_reference() {
        let x = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) * 6e-4)
            .collect::<Vec<_>>();
        let n = x.len();
        let (mut y, mut d, mut c) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        gelu(&x, &mut y);
        gelu_local(&x, &mut d, &mut c);
        for i in 0..n {
            let xi = f64::from(x[i]);
            let h = 1e-4;
            let slope = (gelu_f64(xi + h) - gelu_f64(xi - h)) / (2.0 * h);
            assert!((f64::from(y[i]) - gelu_f64(xi)).abs() < 2e-6, "gelu({xi})");
            assert!((f64::from(d[i]) - slope).abs() < 2e-5, "gelu'({xi})");
            // The linearisation reproduces the value.
            let value = f64::from(x[i] * d[i] + c[i]);
            assert!((value - gelu_f64(xi)).abs() < 1e-5, "x·d + c at {xi}");
        }
    }

    #[test]
    fn swiglu_and_its_linearisation_match_an_f64_reference() {
        let silu = |g: f64| g / (1.0 + (-g).exp());
        let g = (0..3000)
            .map(|i| (i as f32 - 1500.0) * 7e-3)
            .collect::<Vec<_>>();
        let u = (0..3000)
            .map(|i| ((i * 37 % 200) as f32 - 100.0) * 0.03)
            .collect::<Vec<_>>();
        let n = g.len();
        let (mut y, mut dg, mut du, mut c) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        swiglu(&g, &u, &mut y);
        swiglu_local(&g, &u, &mut dg, &mut du, &mut c);
        for i in 0..n {
            let (gi, ui) = (f64::from(g[i]), f64::from(u[i]));
            let h = 1e-5;
            let slope = ui * (silu(gi + h) - silu(gi - h)) / (2.0 * h);
            assert!((f64::from(y[i]) - silu(gi) * ui).abs() < 1e-5 * (1.0 + (gi * ui).abs()));
            assert!((f64::from(dg[i]) - slope).abs() < 1e-4, "∂g at {gi}, {ui}");
            assert!((f64::from(du[i]) - silu(gi)).abs() < 1e-6 * (1.0 + gi.abs()));
            let value = f64::from(g[i] * dg[i] + u[i] * du[i] + c[i]);
            assert!((value - silu(gi) * ui).abs() < 1e-5 * (1.0 + (gi * ui).abs()));
        }
    }

    #[test]
    fn softmax_cross_entropy_matches_an_f64_reference() {
        let (rows, vocab) = (5, 37);
        let logits = (0..rows * vocab)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.02)
            .collect::<Vec<_>>();
        let targets = [3usize, 0, 36, 17, 17];
        let mask = [1.0f32, 0.0, 1.0, 1.0, 0.5];
        let scale = 0.25;
        let mut grad = vec![0.0; rows * vocab];
        let loss = softmax_cross_entropy(&logits, vocab, &targets, &mask, scale, &mut grad);
        let mut expected = 0.0;
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let sum = row.iter().map(|&x| f64::from(x).exp()).sum::<f64>();
            expected += f64::from(mask[r]) * (sum.ln() - f64::from(row[targets[r]]));
            for (j, &x) in row.iter().enumerate() {
                let one_hot = if j == targets[r] { 1.0 } else { 0.0 };
                let g = (f64::from(x).exp() / sum - one_hot) * f64::from(mask[r] * scale);
                assert!((f64::from(grad[r * vocab + j]) - g).abs() < 1e-6);
            }
        }
        assert!((loss - expected).abs() < 1e-4, "{loss} vs {expected}");
    }

    #[test]
    fn the_row_softmax_and_its_backward_match_an_f64_reference() {
        let (len, scale) = (21, 0.35f32);
        let scores = (0..len)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 1.3)
            .collect::<Vec<_>>();
        let upstream = (0..len)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.2)
            .collect::<Vec<_>>();
        let mut hidden = vec![false; len];
        hidden[3] = true;
        hidden[17] = true;
        for (visible, hidden) in [(len, None), (13, Some(&hidden[..])), (1, None)] {
            let shown = |j: usize| j < visible && !hidden.is_some_and(|h| h[j]);
            let sum = (0..len)
                .filter(|&j| shown(j))
                .map(|j| (f64::from(scale) * f64::from(scores[j])).exp())
                .sum::<f64>();
            let expected = (0..len)
                .map(|j| match shown(j) {
                    true => (f64::from(scale) * f64::from(scores[j])).exp() / sum,
                    false => 0.0,
                })
                .collect::<Vec<_>>();
            let mut p = scores.clone();
            softmax_row(&mut p, visible, scale, hidden);
            for j in 0..len {
                assert!(
                    (f64::from(p[j]) - expected[j]).abs() < 1e-6,
                    "{visible}, {j}"
                );
            }
            // ds_j = scale · p_j · (g_j − Σ p g): the softmax's vector-Jacobian product.
            let delta = (0..len)
                .map(|j| expected[j] * f64::from(upstream[j]))
                .sum::<f64>();
            let mut ds = upstream.clone();
            softmax_row_backward(&mut ds, &p, delta as f32, scale);
            for j in 0..len {
                let want = f64::from(scale) * expected[j] * (f64::from(upstream[j]) - delta);
                assert!((f64::from(ds[j]) - want).abs() < 1e-6, "{visible}, {j}");
            }
        }
        let mut nothing = scores.clone();
        softmax_row(&mut nothing, 2, scale, Some(&[true; 21]));
        assert!(nothing.iter().all(|&p| p == 0.0), "a fully masked row is 0");
    }
}
