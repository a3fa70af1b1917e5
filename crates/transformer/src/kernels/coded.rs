//! Packed weights kept as the small integers they were made of.
//!
//! A model imported from a quantised GGUF file (SmolLM2-135M-Instruct ships in Q4_1) holds
//! f32 weights that are exactly `d · q + m` for small integers `q` and one `(d, m)` per block
//! of 32 inputs of each output: llama.cpp's Q4_0, Q4_1 and Q8_0 dequantised. A decoding step at
//! batch 1 reads every weight once, so its speed is the speed of reading 4 bytes a weight.
//! [`code`] finds such a form for a whole panel-packed matrix, *checking that it gives back
//! every value bit for bit*, and [`Tile`] multiplies by it, rebuilding each weight in registers
//! with the same two roundings (`q · d`, then `+ m`) and adding the products in the same order,
//! fused, as the f32 panels' kernel: the same values bit for bit, from a quarter of the bytes
//! (one byte a weight, plus 8 per block of 32). A matrix without such a form (anything trained)
//! keeps f32 panels; nothing is approximated.
//!
//! The kernel is written for AVX2 with FMA (x86-64's level 3); elsewhere matrices keep their
//! f32 panels, which give the same values.

use rayon::prelude::*;

use super::matmul::PANEL;

/// Inputs per block: llama.cpp's Q4_0, Q4_1 and Q8_0 blocks.
pub(crate) const BLOCK: usize = 32;

/// A `[k, n]` matrix's whole panels as codes: `codes` is `[panels][k]` rows of [`PANEL`] (as
/// the f32 panels' values), `scales` is `[panels][blocks][2]` rows (each column's `d`, then its
/// `m`, for each block of [`BLOCK`] rows).
pub(crate) struct Coded {
    #[cfg(target_arch = "x86_64")]
    pub(crate) simd: pulp::x86::V3,
    pub(crate) codes: Vec<[i8; PANEL]>,
    pub(crate) scales: Vec<[f32; PANEL]>,
}

impl Coded {
    pub(crate) fn bytes(&self) -> usize {
        PANEL * (self.codes.len() + 4 * self.scales.len())
    }
}

/// Whether this CPU runs [`Tile`] (x86-64's level 3: AVX2 and FMA, at which pulp's kernels
/// add the products the way [`Tile`] repeats).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        pulp::x86::V3::try_new().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The codes of the first `panels` whole panels of `w` (`[k, n]`, row-major), or `None` when
/// some block of some column has no form `q · d + m` that gives back its values bit for bit.
pub(crate) fn code(w: &[f32], k: usize, n: usize, panels: usize) -> Option<Coded> {
    #[cfg(not(target_arch = "x86_64"))]
    return None;
    #[cfg(target_arch = "x86_64")]
    let simd = pulp::x86::V3::try_new()?;
    let blocks = k.div_ceil(BLOCK);
    let mut codes = vec![[0i8; PANEL]; panels * k];
    let mut scales = vec![[0.0f32; PANEL]; panels * blocks * 2];
    codes
        .par_chunks_mut(k.max(1))
        .zip(scales.par_chunks_mut((blocks * 2).max(1)))
        .enumerate()
        .try_for_each(|(p, (codes, scales))| {
            let mut values = [0.0f32; BLOCK];
            let mut q = [0i8; BLOCK];
            for b in 0..blocks {
                let rows = b * BLOCK..((b + 1) * BLOCK).min(k);
                let len = rows.len();
                for c in 0..PANEL {
                    for (v, i) in values.iter_mut().zip(rows.clone()) {
                        *v = w[i * n + p * PANEL + c];
                    }
                    let (d, m) = code_block(&values[..len], &mut q[..len])?;
                    scales[2 * b][c] = d;
                    scales[2 * b + 1][c] = m;
                    for (q, i) in q[..len].iter().zip(rows.clone()) {
                        codes[i][c] = *q;
                    }
                }
            }
            Some(())
        })?;
    Some(Coded {
        #[cfg(target_arch = "x86_64")]
        simd,
        codes,
        scales,
    })
}

/// The value the kernel rebuilds from a code: `q · d`, rounded, then `+ m`, rounded.
#[inline(always)]
pub(crate) fn decode(q: i8, d: f32, m: f32) -> f32 {
    f32::from(q) * d + m
}

/// A `(d, m)` and codes for which [`decode`] gives back each of `values` bit for bit, if one is
/// found: an offset form with codes 0..=15 (Q4_0: `m = −8 d`, the least or the greatest value;
/// Q4_1: `m` the least value) or a scale form with codes −128..=127 and `m = 0` (Q8_0). `d` is
/// looked for within a few units in the last place of what the range implies.
pub(crate) fn code_block(values: &[f32], q: &mut [i8]) -> Option<(f32, f32)> {
    let (mut least, mut greatest) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in values {
        if !v.is_finite() {
            return None;
        }
        least = least.min(v);
        greatest = greatest.max(v);
    }
    let offset = |m: f32, d: f32, q: &mut [i8]| {
        fits(values, q, d, m, |v| {
            if d == 0.0 {
                0.0
            } else {
                ((v - m) / d).round().clamp(0.0, 15.0)
            }
        })
    };
    let scale = |d: f32, q: &mut [i8]| {
        fits(values, q, d, 0.0, |v| {
            if d == 0.0 {
                0.0
            } else {
                (v / d).round().clamp(-128.0, 127.0)
            }
        })
    };
    // Q4_0 (`m = −8 d`, the code 0 always present): `d` is known exactly from `m`.
    for m in [least, greatest] {
        let d = -m / 8.0;
        if d != 0.0 && offset(m, d, q) {
            return Some((d, m));
        }
    }
    // Q4_1 (`m` the least value, the codes 0 and 15 present).
    let span = f64::from(greatest) - f64::from(least);
    for d in near((span / 15.0) as f32) {
        if offset(least, d, q) {
            return Some((d, least));
        }
    }
    let largest = f64::from(least.abs().max(greatest.abs()));
    for d in near((largest / 127.0) as f32) {
        if scale(d, q) {
            return Some((d, 0.0));
        }
    }
    None
}

/// `d` and the floats a few units in the last place either side of it (non-negative ones).
fn near(d: f32) -> impl Iterator<Item = f32> {
    [0i32, -1, 1, -2, 2, -3, 3, -4, 4]
        .into_iter()
        .map(move |step| f32::from_bits((d.to_bits() as i32).saturating_add(step).max(0) as u32))
}

/// Whether the codes `code(v)` of `values` decode with `(d, m)` to the values bit for bit
/// (writing them into `q`).
fn fits(values: &[f32], q: &mut [i8], d: f32, m: f32, code: impl Fn(f32) -> f32) -> bool {
    for (v, q) in values.iter().zip(q.iter_mut()) {
        *q = code(*v) as i8;
        if decode(*q, d, m).to_bits() != v.to_bits() {
            return false;
        }
    }
    true
}

/// A panel row of floats as two AVX vectors.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn halves(row: &[f32; PANEL]) -> [std::arch::x86_64::__m256; 2] {
    let [lo, hi]: [[f32; 8]; 2] = pulp::cast(*row);
    [pulp::cast(lo), pulp::cast(hi)]
}

/// A panel row's 16 weights rebuilt from their codes and their columns' `(d, m)`: `q · d`,
/// rounded, then `+ m`, rounded ([`decode`]'s roundings).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rebuild(
    simd: pulp::x86::V3,
    q: [i8; PANEL],
    d: [std::arch::x86_64::__m256; 2],
    m: [std::arch::x86_64::__m256; 2],
) -> [std::arch::x86_64::__m256; 2] {
    let (avx, avx2) = (simd.avx, simd.avx2);
    let q: std::arch::x86_64::__m128i = pulp::cast(q);
    let lo = avx2._mm256_cvtepi8_epi32(q);
    let hi = avx2._mm256_cvtepi8_epi32(simd.sse2._mm_srli_si128::<8>(q));
    let lo = avx._mm256_mul_ps(avx._mm256_cvtepi32_ps(lo), d[0]);
    let hi = avx._mm256_mul_ps(avx._mm256_cvtepi32_ps(hi), d[1]);
    [avx._mm256_add_ps(lo, m[0]), avx._mm256_add_ps(hi, m[1])]
}

/// Adds to the outputs of rows `0..R` on `P` panels all `k` products with the coded panels,
/// as the f32 panels' kernel does: `out` starts at row 0's first panel, rows `stride` floats
/// apart, panels [`PANEL`] apart; `x` holds the `R` rows' inputs, `k` each; `codes` and
/// `scales` the `P` panels', one panel's `k` rows (its `blocks · 2` rows) after the other.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Tile<'a, const R: usize, const P: usize> {
    pub(crate) simd: pulp::x86::V3,
    pub(crate) codes: &'a [[i8; PANEL]],
    pub(crate) scales: &'a [[f32; PANEL]],
    pub(crate) k: usize,
    pub(crate) x: &'a [f32],
    pub(crate) out: &'a mut [f32],
    pub(crate) stride: usize,
}

#[cfg(target_arch = "x86_64")]
impl<const R: usize, const P: usize> pulp::WithSimd for Tile<'_, R, P> {
    type Output = ();

    /// The products, through `pulp::Simd::vectorize(self.simd, …)` (where AVX2 and FMA are
    /// enabled: a closure there is not inlined, and its intrinsics would be calls).
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        use pulp::cast;
        let Tile {
            simd,
            codes,
            scales,
            k,
            x,
            out,
            stride,
        } = self;
        let (avx, fma) = (simd.avx, simd.fma);
        let blocks = k.div_ceil(BLOCK);
        let codes: [&[[i8; PANEL]]; P] = std::array::from_fn(|p| &codes[p * k..(p + 1) * k]);
        let scales: [&[[f32; PANEL]]; P] =
            std::array::from_fn(|p| &scales[p * 2 * blocks..(p + 1) * 2 * blocks]);
        let xs: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
        let mut acc = [[[avx._mm256_setzero_ps(); 2]; P]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (p, acc) in acc.iter_mut().enumerate() {
                let at = r * stride + p * PANEL;
                *acc = halves(out[at..at + PANEL].try_into().expect("a panel's outputs"));
            }
        }
        let mut d = [[avx._mm256_setzero_ps(); 2]; P];
        let mut m = d;
        let mut w = d;
        for b in 0..blocks {
            for p in 0..P {
                d[p] = halves(&scales[p][2 * b]);
                m[p] = halves(&scales[p][2 * b + 1]);
            }
            for i in b * BLOCK..((b + 1) * BLOCK).min(k) {
                for p in 0..P {
                    w[p] = rebuild(simd, codes[p][i], d[p], m[p]);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xi = avx._mm256_set1_ps(xs[r][i]);
                    for p in 0..P {
                        acc[p][0] = fma._mm256_fmadd_ps(xi, w[p][0], acc[p][0]);
                        acc[p][1] = fma._mm256_fmadd_ps(xi, w[p][1], acc[p][1]);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, acc) in acc.iter().enumerate() {
                let at = r * stride + p * PANEL;
                let (lo, hi): ([f32; 8], [f32; 8]) = (cast(acc[0]), cast(acc[1]));
                out[at..at + 8].copy_from_slice(&lo);
                out[at + 8..at + PANEL].copy_from_slice(&hi);
            }
        }
    }
}

/// One coded panel's floats (`out`: `[k, PANEL]`), each `q · d + m` with the two roundings of
/// [`decode`].
#[cfg(target_arch = "x86_64")]
pub(crate) struct Decode<'a> {
    pub(crate) simd: pulp::x86::V3,
    pub(crate) codes: &'a [[i8; PANEL]],
    pub(crate) scales: &'a [[f32; PANEL]],
    pub(crate) out: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::WithSimd for Decode<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        use pulp::cast;
        let Decode {
            simd,
            codes,
            scales,
            out,
        } = self;
        let (rows, _) = out.as_chunks_mut::<PANEL>();
        for (b, (codes, rows)) in codes.chunks(BLOCK).zip(rows.chunks_mut(BLOCK)).enumerate() {
            let (d, m) = (halves(&scales[2 * b]), halves(&scales[2 * b + 1]));
            for (q, row) in codes.iter().zip(rows) {
                let [lo, hi] = rebuild(simd, *q, d, m);
                let floats: [[f32; 8]; 2] = [cast(lo), cast(hi)];
                *row = cast(floats);
            }
        }
    }
}

/// A tied embedding (`[n, k]`, a row per token) as codes, row by row: `codes` is `[n][k]`,
/// `scales` `[n][blocks]` (each row's `(d, m)` per block of [`BLOCK`] of its `k` values).
pub(crate) struct CodedRows {
    #[cfg(target_arch = "x86_64")]
    pub(crate) simd: pulp::x86::V3,
    pub(crate) k: usize,
    pub(crate) codes: Vec<i8>,
    pub(crate) scales: Vec<[f32; 2]>,
}

impl CodedRows {
    pub(crate) fn bytes(&self) -> usize {
        self.codes.len() + 8 * self.scales.len()
    }
}

/// Vectors of the transposed kernel ([`super::matmul::rows_times_transposed`]) that
/// [`RowsTile`] repeats: AVX2's 8 floats (pulp picks x86-64's level 3 here).
const LANES: usize = 8;

/// The codes of `e` (`[n, k]`) row by row, where the CPU runs [`RowsTile`] and pulp's
/// transposed kernel sums in vectors of [`LANES`], `k` is a multiple of them, and every block
/// of every row has a form [`code_block`] finds.
pub(crate) fn code_rows(e: &[f32], n: usize) -> Option<CodedRows> {
    #[cfg(not(target_arch = "x86_64"))]
    return None;
    #[cfg(target_arch = "x86_64")]
    let simd = pulp::x86::V3::try_new()?;
    let k = e.len().checked_div(n)?;
    if k == 0 || !k.is_multiple_of(LANES) || transposed_lanes() != LANES {
        return None;
    }
    let blocks = k.div_ceil(BLOCK);
    let mut codes = vec![0i8; n * k];
    let mut scales = vec![[0.0f32; 2]; n * blocks];
    codes
        .par_chunks_mut(k)
        .zip(scales.par_chunks_mut(blocks))
        .zip(e.par_chunks(k))
        .try_for_each(|((codes, scales), row)| {
            for ((codes, scale), values) in codes
                .chunks_mut(BLOCK)
                .zip(scales.iter_mut())
                .zip(row.chunks(BLOCK))
            {
                let (d, m) = code_block(values, codes)?;
                *scale = [d, m];
            }
            Some(())
        })?;
    Some(CodedRows {
        #[cfg(target_arch = "x86_64")]
        simd,
        k,
        codes,
        scales,
    })
}

/// The floats per vector of the kernels pulp dispatches to on this CPU.
fn transposed_lanes() -> usize {
    struct Lanes;
    impl pulp::WithSimd for Lanes {
        type Output = usize;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
            std::mem::size_of::<S::f32s>() / 4
        }
    }
    pulp::Arch::new().dispatch(Lanes)
}

/// Dot products of one input row with `V` coded embedding rows, as the transposed kernel
/// computes them: per output, vectors of [`LANES`] products over `k`, fused, reduced once by
/// pulp's V3 at the end (no tail: `k` is a multiple of [`LANES`]).
#[cfg(target_arch = "x86_64")]
pub(crate) struct RowsTile<'a, const V: usize> {
    pub(crate) e: &'a CodedRows,
    /// The first embedding row (output column).
    pub(crate) col: usize,
    /// The input row (`k` values).
    pub(crate) x: &'a [f32],
    /// Where output `v` goes: `out[v]`.
    pub(crate) out: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl<const V: usize> RowsTile<'_, V> {
    /// The products, inside a function where AVX2 and FMA are enabled.
    #[inline(always)]
    pub(crate) fn run(self) {
        use pulp::{cast, Simd};
        use std::arch::x86_64::__m256;
        let RowsTile { e, col, x, out } = self;
        let (simd, k) = (e.simd, e.k);
        let (avx, avx2, fma, sse2) = (simd.avx, simd.avx2, simd.fma, simd.sse2);
        let blocks = k.div_ceil(BLOCK);
        let xs = x[..k].as_chunks::<LANES>().0;
        let codes: [&[[i8; LANES]]; V] = std::array::from_fn(|v| {
            let row = &e.codes[(col + v) * k..(col + v + 1) * k];
            row.as_chunks::<LANES>().0
        });
        let scales: [&[[f32; 2]]; V] =
            std::array::from_fn(|v| &e.scales[(col + v) * blocks..(col + v + 1) * blocks]);
        let mut acc = [avx._mm256_setzero_ps(); V];
        for (i, x) in xs.iter().enumerate() {
            let b = i * LANES / BLOCK;
            let x: __m256 = cast(*x);
            for v in 0..V {
                let [d, m] = scales[v][b];
                let q = i64::from_le_bytes(cast::<[i8; LANES], [u8; 8]>(codes[v][i]));
                let q = sse2._mm_set_epi64x(0, q);
                let q = avx._mm256_cvtepi32_ps(avx2._mm256_cvtepi8_epi32(q));
                let w = avx._mm256_add_ps(
                    avx._mm256_mul_ps(q, avx._mm256_set1_ps(d)),
                    avx._mm256_set1_ps(m),
                );
                acc[v] = fma._mm256_fmadd_ps(x, w, acc[v]);
            }
        }
        // The float kernel adds its (here empty) scalar tail's sum to the reduction.
        let tail = std::iter::empty::<f32>().sum::<f32>();
        for (out, acc) in out.iter_mut().zip(acc) {
            *out = simd.reduce_sum_f32s(cast(acc)) + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks as llama.cpp's quantisers leave them, decoded as Ember's GGUF reader does
    /// (`d · q + m`, `d` and `m` of f16 precision), are found again, code for code.
    #[test]
    fn quantised_blocks_are_found_again() {
        let half = |v: f32| f32::from_bits(v.to_bits() & 0xffff_e000); // 10 mantissa bits
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        for case in 0..300 {
            let d = half(0.001 + (next() % 1000) as f32 * 1e-4);
            let (d, m, codes): (f32, f32, Vec<i8>) = match case % 3 {
                // Q4_1: codes 0..=15 with 0 and 15 present, m the least value.
                0 => {
                    let mut q: Vec<i8> = (0..BLOCK).map(|_| (next() % 16) as i8).collect();
                    (q[3], q[9]) = (0, 15);
                    (d, half(-((next() % 100) as f32) * 1e-3), q)
                }
                // Q4_0: m = −8 d, `d` of either sign, the code 0 present.
                1 => {
                    let d = if next() % 2 == 0 { d } else { -d };
                    let mut q: Vec<i8> = (0..BLOCK).map(|_| (next() % 16) as i8).collect();
                    q[3] = 0;
                    (d, -8.0 * d, q)
                }
                // Q8_0: m = 0, ±127 present.
                _ => {
                    let mut q: Vec<i8> = (0..BLOCK)
                        .map(|_| ((next() % 255) as i32 - 127) as i8)
                        .collect();
                    q[5] = if case % 2 == 0 { 127 } else { -127 };
                    (d, 0.0, q)
                }
            };
            let values: Vec<f32> = codes.iter().map(|&q| decode(q, d, m)).collect();
            let mut found = [0i8; BLOCK];
            let (fd, fm) = code_block(&values, &mut found)
                .unwrap_or_else(|| panic!("case {case}: d {d}, m {m}: no form found"));
            for (i, (v, q)) in values.iter().zip(found).enumerate() {
                assert_eq!(
                    decode(q, fd, fm).to_bits(),
                    v.to_bits(),
                    "case {case} at {i}"
                );
            }
        }
    }

    /// Values that no small-integer form gives back are refused, never approximated.
    #[test]
    fn other_values_are_refused() {
        let d = 0.013_f32;
        let mut values: Vec<f32> = (0..BLOCK)
            .map(|i| decode((i % 16) as i8, d, -0.1))
            .collect();
        let mut q = [0i8; BLOCK];
        assert!(code_block(&values, &mut q).is_some());
        values[7] = f32::from_bits(values[7].to_bits() + 1);
        assert!(code_block(&values, &mut q).is_none(), "one ulp off");
        let spread: Vec<f32> = (0..BLOCK).map(|i| (i as f32 * 0.37).sin()).collect();
        assert!(
            code_block(&spread, &mut q).is_none(),
            "trained-looking values"
        );
        assert!(code_block(&[f32::NAN; 4], &mut q[..4]).is_none());
        assert!(
            code_block(&[-0.0; 4], &mut q[..4]).is_none(),
            "-0 is not q · d + m"
        );
        let (d, m) = code_block(&[0.25; 4], &mut q[..4]).expect("a constant block");
        assert!(q[..4].iter().all(|&q| decode(q, d, m) == 0.25));
    }
}
