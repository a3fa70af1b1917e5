//! Matrix products with few rows: a decoding step multiplies one row per sequence by every
//! weight matrix. A general gemm packs both operands into blocks before multiplying, which for
//! a few rows costs as much as the product (the weights are copied once per call to multiply
//! them once). These kernels use the CPU's widest vectors and fused multiply-adds (chosen at
//! run time through `pulp`: AVX2 and FMA where the CPU has them, SSE or scalar code
//! elsewhere), and split the columns over rayon's threads when there is enough work:
//!
//! - [`rows_times`] reads a weight matrix where it lies, once per group of four rows;
//! - [`rows_times_packed`] reads one packed once ([`Packed`]: column panels, made once per
//!   matrix), once per call for all rows, with every output summed in registers;
//! - [`rows_times_transposed`] multiplies by a tied embedding, in blocks of it kept in L2;
//! - a matrix whose values are a quantised model's is packed as its codes instead
//!   ([`super::coded`]), and a tied embedding's codes are multiplied by
//!   [`rows_times_coded_rows`]: the same values again, from a quarter of the bytes.
//!
//! Whatever the kernel, the group or the thread, each output is summed in one order (from its
//! bias or 0, over `k`, fused), so a row's values do not depend on the rows beside it, and
//! the first two give the same values bit for bit.

use std::ops::Range;

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use super::coded::{self, Coded, CodedRows};

/// Multiply-adds below which one thread does all the work.
const PARALLEL_MIN: usize = 1 << 20;

/// `x · w (+ bias)`: `x` is `[rows, k]`, `w` is `[k, n]`, both row-major; the result is
/// `[rows, n]`.
pub(crate) fn rows_times(
    x: &[f32],
    rows: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let k = w.len().checked_div(n).unwrap_or(0);
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(w.len(), k * n);
    by_columns(rows, n, rows * k * n, |cols, out| {
        Arch::new().dispatch(RowsTimes {
            x,
            rows,
            k,
            w,
            n,
            bias,
            cols,
            out,
        });
    })
}

/// `x · eᵀ`: `x` is `[rows, k]`, `e` is `[n, k]` (a tied embedding), both row-major; the
/// result is `[rows, n]`.
pub(crate) fn rows_times_transposed(x: &[f32], rows: usize, e: &[f32], n: usize) -> Vec<f32> {
    let k = e.len().checked_div(n).unwrap_or(0);
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(e.len(), n * k);
    by_columns(rows, n, rows * k * n, |cols, out| {
        Arch::new().dispatch(RowsTimesTransposed {
            x,
            rows,
            k,
            e,
            cols,
            out,
        });
    })
}

/// `x · eᵀ` for a coded tied embedding ([`CodedRows`], `[n, k]`): the same values as
/// [`rows_times_transposed`] on its floats, bit for bit.
pub(crate) fn rows_times_coded_rows(x: &[f32], rows: usize, e: &CodedRows, n: usize) -> Vec<f32> {
    let k = e.k;
    debug_assert_eq!(x.len(), rows * k);
    by_columns(rows, n, rows * k * n, |cols, out| {
        #[cfg(target_arch = "x86_64")]
        pulp::Simd::vectorize(
            e.simd,
            CodedRowsRange {
                x,
                rows,
                e,
                cols,
                out,
            },
        );
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, e, cols, out);
            unreachable!("coded rows are made only where their kernel runs");
        }
    })
}

/// [`rows_times_coded_rows`] on the columns `cols` (`out` is `[rows, cols.len()]`): eight
/// embedding rows at a time, every input row on them while they are in cache.
#[cfg(target_arch = "x86_64")]
struct CodedRowsRange<'a> {
    x: &'a [f32],
    rows: usize,
    e: &'a CodedRows,
    cols: Range<usize>,
    out: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl WithSimd for CodedRowsRange<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let CodedRowsRange {
            x,
            rows,
            e,
            cols,
            out,
        } = self;
        let (k, width) = (e.k, cols.len());
        let mut col = 0;
        while col < width {
            let eight = col + 8 <= width;
            for r in 0..rows {
                let (x, out) = (&x[r * k..], &mut out[r * width + col..]);
                let at = cols.start + col;
                if eight {
                    coded::RowsTile::<8> { e, col: at, x, out }.run();
                } else {
                    coded::RowsTile::<1> { e, col: at, x, out }.run();
                }
            }
            col += if eight { 8 } else { 1 };
        }
    }
}

/// Runs `f(columns, out)` over column ranges (each `out` is `[rows, columns.len()]`) and
/// assembles the `[rows, n]` result: one range when `work` multiply-adds are few, else one per
/// thread.
fn by_columns(
    rows: usize,
    n: usize,
    work: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync,
) -> Vec<f32> {
    let threads = rayon::current_num_threads();
    if work < PARALLEL_MIN || threads < 2 || n < 64 {
        let mut out = vec![0.0; rows * n];
        f(0..n, &mut out);
        return out;
    }
    // Ranges in multiples of 32 columns, so that every thread's tiles are whole vectors.
    let step = n.div_ceil(threads).next_multiple_of(32);
    let parts = (0..n)
        .step_by(step)
        .map(|start| start..(start + step).min(n))
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|cols| {
            let mut out = vec![0.0; rows * cols.len()];
            f(cols.clone(), &mut out);
            (cols, out)
        })
        .collect::<Vec<_>>();
    let mut out = vec![0.0; rows * n];
    for (cols, part) in parts {
        let width = cols.len();
        for (row, values) in part.chunks_exact(width).enumerate() {
            out[row * n + cols.start..row * n + cols.end].copy_from_slice(values);
        }
    }
    out
}

/// Starts each `[width]` row of `out` from the bias on `cols`, or from 0.
fn start_from_bias(out: &mut [f32], width: usize, bias: Option<&[f32]>, cols: &Range<usize>) {
    for row in out.chunks_exact_mut(width.max(1)) {
        match bias {
            Some(bias) => row.copy_from_slice(&bias[cols.clone()]),
            None => row.fill(0.0),
        }
    }
}

struct RowsTimes<'a> {
    x: &'a [f32],
    rows: usize,
    k: usize,
    w: &'a [f32],
    n: usize,
    bias: Option<&'a [f32]>,
    cols: Range<usize>,
    out: &'a mut [f32],
}

impl WithSimd for RowsTimes<'_> {
    type Output = ();

    /// Row-streaming: the output rows stay in cache while the weight rows stream past once
    /// per group of rows, read in order (a column-tile walk down the weights jumps a whole
    /// row each step, which the prefetchers follow poorly once the weights are out of
    /// cache). Four rows take two weight rows per pass, a single row four: enough
    /// multiply-adds per load and store of the output.
    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) {
        start_from_bias(self.out, self.cols.len(), self.bias, &self.cols);
        let mut row = 0;
        while row + 4 <= self.rows {
            self.row_group::<S, 4, 2>(simd, row);
            row += 4;
        }
        while row < self.rows {
            self.row_group::<S, 1, 4>(simd, row);
            row += 1;
        }
    }
}

impl RowsTimes<'_> {
    /// Adds `x[first..first + R] · w` to the output rows, `U` weight rows per pass.
    #[inline(always)]
    fn row_group<S: Simd, const R: usize, const U: usize>(&mut self, simd: S, first: usize) {
        let mut i = 0;
        while i + U <= self.k {
            self.pass::<S, R, U>(simd, first, i);
            i += U;
        }
        while i < self.k {
            self.pass::<S, R, 1>(simd, first, i);
            i += 1;
        }
    }

    /// `out[r] += Σ_u x[r, i + u] · w[i + u]` for the `R` rows from `first`.
    #[inline(always)]
    fn pass<S: Simd, const R: usize, const U: usize>(&mut self, simd: S, first: usize, i: usize) {
        let (k, n, width) = (self.k, self.n, self.cols.len());
        let cols = &self.cols;
        let w: [(&[S::f32s], &[f32]); U] = std::array::from_fn(|u| {
            let start = (i + u) * n;
            S::as_simd_f32s(&self.w[start + cols.start..start + cols.end])
        });
        let xs: [[f32; U]; R] =
            std::array::from_fn(|r| std::array::from_fn(|u| self.x[(first + r) * k + i + u]));
        let xv: [[S::f32s; U]; R] = xs.map(|row| row.map(|x| simd.splat_f32s(x)));
        let mut rows = self.out[first * width..(first + R) * width].chunks_exact_mut(width);
        let mut out: [(&mut [S::f32s], &mut [f32]); R] = std::array::from_fn(|_| {
            S::as_mut_simd_f32s(rows.next().expect("R rows of the output"))
        });
        for j in 0..w[0].0.len() {
            let wj: [S::f32s; U] = std::array::from_fn(|u| w[u].0[j]);
            for (r, (vectors, _)) in out.iter_mut().enumerate() {
                let mut acc = vectors[j];
                for u in 0..U {
                    acc = simd.mul_add_f32s(xv[r][u], wj[u], acc);
                }
                vectors[j] = acc;
            }
        }
        for (r, (_, tail)) in out.iter_mut().enumerate() {
            for (c, y) in tail.iter_mut().enumerate() {
                for u in 0..U {
                    *y += xs[r][u] * w[u].1[c];
                }
            }
        }
    }
}

struct RowsTimesTransposed<'a> {
    x: &'a [f32],
    rows: usize,
    k: usize,
    e: &'a [f32],
    cols: Range<usize>,
    out: &'a mut [f32],
}

impl WithSimd for RowsTimesTransposed<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) {
        let (width, rows) = (self.cols.len(), self.rows);
        // Blocks of embedding rows that fit in the core's L2 cache, so that every pair of
        // rows after the first reads them from there: the embedding comes from memory once
        // per call, not once per pair (SmolLM2's tied head is 113 MB; its decoding steps at
        // batch 8 and 16 take a fifth less time). Each output is computed as without blocks.
        let block = (BLOCK_BYTES / (4 * self.k.max(1)) / 8).max(1) * 8;
        let mut start = 0;
        while start < width {
            let end = (start + block).min(width);
            let mut row = 0;
            while row + 2 <= rows {
                self.row_group::<S, 2, 4>(simd, row, start..end, width);
                row += 2;
            }
            if row < rows {
                self.row_group::<S, 1, 8>(simd, row, start..end, width);
            }
            start = end;
        }
    }
}

/// Bytes of embedding rows a cache block of [`RowsTimesTransposed`] spans: a quarter of a
/// current server core's L2 (2 MiB here), leaving room for the rest of the working set.
/// ([`RowsTimes`] gains nothing from blocks: they turn its stream down the weights into short
/// strided runs, and batch 8 measured a fifth slower.)
const BLOCK_BYTES: usize = 512 << 10;

impl RowsTimesTransposed<'_> {
    /// Rows `first..first + R` of the output on the columns `block` (relative to `cols`),
    /// `V` embedding rows (output columns) at a time.
    #[inline(always)]
    fn row_group<S: Simd, const R: usize, const V: usize>(
        &mut self,
        simd: S,
        first: usize,
        block: Range<usize>,
        width: usize,
    ) {
        let mut col = block.start;
        while col + V <= block.end {
            self.tile::<S, R, V>(simd, first, col, width);
            col += V;
        }
        while col < block.end {
            self.tile::<S, R, 1>(simd, first, col, width);
            col += 1;
        }
    }

    /// Dot products of `R` input rows with `V` embedding rows, as vectors over `k` with a
    /// scalar tail, each reduced once at the end.
    #[inline(always)]
    fn tile<S: Simd, const R: usize, const V: usize>(
        &mut self,
        simd: S,
        first: usize,
        col: usize,
        width: usize,
    ) {
        let k = self.k;
        let xs: [(&[S::f32s], &[f32]); R] =
            std::array::from_fn(|r| S::as_simd_f32s(&self.x[(first + r) * k..(first + r + 1) * k]));
        let es: [(&[S::f32s], &[f32]); V] = std::array::from_fn(|v| {
            let e = self.cols.start + col + v;
            S::as_simd_f32s(&self.e[e * k..(e + 1) * k])
        });
        let mut acc = [[simd.splat_f32s(0.0); V]; R];
        for i in 0..xs[0].0.len() {
            let e: [S::f32s; V] = std::array::from_fn(|v| es[v].0[i]);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = xs[r].0[i];
                for v in 0..V {
                    acc[v] = simd.mul_add_f32s(x, e[v], acc[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for v in 0..V {
                let tail = xs[r].1.iter().zip(es[v].1).map(|(a, b)| a * b).sum::<f32>();
                self.out[(first + r) * width + col + v] = simd.reduce_sum_f32s(acc[v]) + tail;
            }
        }
    }
}

/// Floats per column panel of a [`Packed`] matrix: two vectors of AVX2, one of AVX-512.
pub(crate) const PANEL: usize = 16;

/// A `[k, n]` weight matrix laid out for [`rows_times_packed`]: its columns in panels of
/// [`PANEL`], each panel's `k` rows of `PANEL` values one after another, so that a panel is one
/// contiguous run that the kernel reads once for every row of the input.
///
/// Where the CPU has the kernel for them and the values are exactly a quantised model's
/// (`d · q + m` with small integers `q`, [`coded`]), the panels keep the integers instead of
/// the floats: a quarter of the bytes, the same values bit for bit.
pub(crate) struct Packed {
    k: usize,
    n: usize,
    /// Columns `0..whole` (`n` rounded down to [`PANEL`]), panel after panel, each `[k, PANEL]`.
    panels: Panels,
    /// Columns `whole..n` as `[k, n - whole]`, row-major.
    rest: Vec<f32>,
}

enum Panels {
    Floats(Vec<f32>),
    Coded(Coded),
}

impl Packed {
    /// Packs `w` (`[k, n]`, row-major): as codes if `codes`, the CPU has their kernel and the
    /// values allow it, else as floats.
    pub(crate) fn new(w: &[f32], n: usize, codes: bool) -> Self {
        let k = w.len().checked_div(n).unwrap_or(0);
        let whole = n / PANEL * PANEL;
        let mut rest = Vec::with_capacity(k * (n - whole));
        for i in 0..k {
            rest.extend_from_slice(&w[i * n + whole..(i + 1) * n]);
        }
        if codes && k > 0 && coded::available() {
            if let Some(coded) = coded::code(w, k, n, whole / PANEL) {
                let panels = Panels::Coded(coded);
                return Packed { k, n, panels, rest };
            }
        }
        let mut panels = vec![0.0; k * whole];
        panels
            .par_chunks_mut((k * PANEL).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                    row.copy_from_slice(&w[i * n + p * PANEL..i * n + (p + 1) * PANEL]);
                }
            });
        let panels = Panels::Floats(panels);
        Packed { k, n, panels, rest }
    }

    pub(crate) fn bytes(&self) -> usize {
        let panels = match &self.panels {
            Panels::Floats(values) => 4 * values.len(),
            Panels::Coded(coded) => coded.bytes(),
        };
        panels + 4 * self.rest.len()
    }

    /// Whether the panels hold codes.
    pub(crate) fn is_coded(&self) -> bool {
        matches!(self.panels, Panels::Coded(_))
    }
}

/// `x · w (+ bias)` for a packed `w`: the same values as [`rows_times`], bit for bit (each
/// output starts from its bias or 0 and adds its products in order of `k`, fused, as there).
pub(crate) fn rows_times_packed(
    x: &[f32],
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * w.k);
    by_columns(rows, w.n, rows * w.k * w.n, |cols, out| {
        Arch::new().dispatch(PackedTimes {
            x,
            rows,
            w,
            bias,
            cols,
            out,
        });
    })
}

struct PackedTimes<'a> {
    x: &'a [f32],
    rows: usize,
    w: &'a Packed,
    bias: Option<&'a [f32]>,
    cols: Range<usize>,
    out: &'a mut [f32],
}

impl WithSimd for PackedTimes<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        match S::as_simd_f32s(&[0.0f32; PANEL]) {
            (v, []) if v.len() == 1 => self.run::<S, 1>(simd),
            (v, []) if v.len() == 2 => self.run::<S, 2>(simd),
            (v, []) if v.len() == 4 => self.run::<S, 4>(simd),
            // Vectors that do not tile a panel (no target has them today): plain floats.
            _ => self.run::<pulp::Scalar, PANEL>(pulp::Scalar::new()),
        }
    }
}

impl PackedTimes<'_> {
    /// `NV` vectors of `S` per panel row.
    #[inline(always)]
    fn run<S: Simd, const NV: usize>(mut self, simd: S) {
        let (k, n, width) = (self.w.k, self.w.n, self.cols.len());
        let whole = n / PANEL * PANEL;
        let panel_end = self.cols.end.min(whole);
        start_from_bias(self.out, width, self.bias, &self.cols);
        // Tiles of six rows by one panel; the rows left over take several panels at once, so
        // that enough sums are under way to hide the multiply-add's latency.
        match self.rows % 6 {
            0 => self.walk::<S, 0, NV, 1>(simd, panel_end),
            1 => self.walk::<S, 1, NV, 4>(simd, panel_end),
            2 => self.walk::<S, 2, NV, 2>(simd, panel_end),
            3 => self.walk::<S, 3, NV, 2>(simd, panel_end),
            4 => self.walk::<S, 4, NV, 1>(simd, panel_end),
            _ => self.walk::<S, 5, NV, 1>(simd, panel_end),
        }
        // The columns past the last whole panel (in the last range of columns): the row-major
        // kernel on their own copy, with vectors from the same column on as it would have.
        if self.cols.end > whole {
            let rest = n - whole;
            let mut out = vec![0.0; self.rows * rest];
            RowsTimes {
                x: self.x,
                rows: self.rows,
                k,
                w: &self.w.rest,
                n: rest,
                bias: self.bias.map(|b| &b[whole..]),
                cols: 0..rest,
                out: &mut out,
            }
            .with_simd(simd);
            let at = whole - self.cols.start;
            for (row, values) in out.chunks_exact(rest).enumerate() {
                self.out[row * width + at..(row + 1) * width].copy_from_slice(values);
            }
        }
    }

    /// The panels up to `end`, `P` at a time (the last group may be shorter): every group of
    /// six rows on each panel, then the last `R` rows on the whole group, while its panels are
    /// in cache.
    #[inline(always)]
    fn walk<S: Simd, const R: usize, const NV: usize, const P: usize>(
        &mut self,
        simd: S,
        end: usize,
    ) {
        let full = self.rows - R;
        if let (Panels::Coded(coded), true) = (&self.w.panels, full > 0) {
            return self.walk_decoded::<S, R, NV>(simd, end, coded);
        }
        let mut col = self.cols.start;
        while col < end {
            let panels = ((end - col) / PANEL).min(P);
            for p in 0..panels {
                for first in (0..full).step_by(6) {
                    self.any_tile::<S, 6, NV, 1>(simd, first, col + p * PANEL);
                }
            }
            if R > 0 && panels == P {
                self.any_tile::<S, R, NV, P>(simd, full, col);
            } else if R > 0 {
                for p in 0..panels {
                    self.any_tile::<S, R, NV, 1>(simd, full, col + p * PANEL);
                }
            }
            col += panels * PANEL;
        }
    }

    /// Coded panels for six rows or more: each panel's floats rebuilt once (into a buffer that
    /// stays in cache) for all the tiles of rows on it, which then run as on float panels —
    /// rather than each tile rebuilding them (more work than its products at six rows).
    #[inline(always)]
    fn walk_decoded<S: Simd, const R: usize, const NV: usize>(
        &mut self,
        simd: S,
        end: usize,
        coded: &Coded,
    ) {
        let k = self.w.k;
        let blocks = k.div_ceil(coded::BLOCK);
        let full = self.rows - R;
        let mut panel = vec![0.0f32; k * PANEL];
        for col in (self.cols.start..end).step_by(PANEL) {
            let p = col / PANEL;
            #[cfg(target_arch = "x86_64")]
            pulp::Simd::vectorize(
                coded.simd,
                coded::Decode {
                    simd: coded.simd,
                    codes: &coded.codes[p * k..(p + 1) * k],
                    scales: &coded.scales[p * 2 * blocks..(p + 1) * 2 * blocks],
                    out: &mut panel,
                },
            );
            for first in (0..full).step_by(6) {
                self.tile::<S, 6, NV, 1>(simd, &panel, col, first, col);
            }
            if R > 0 {
                self.tile::<S, R, NV, 1>(simd, &panel, col, full, col);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (blocks, &mut panel);
            unreachable!("coded panels are made only where their kernel runs");
        }
    }

    /// [`Self::tile`] on float panels, [`coded::tile`] on coded ones.
    #[inline(always)]
    fn any_tile<S: Simd, const R: usize, const NV: usize, const P: usize>(
        &mut self,
        simd: S,
        first: usize,
        col: usize,
    ) {
        let w = self.w;
        match &w.panels {
            Panels::Floats(values) => self.tile::<S, R, NV, P>(simd, values, 0, first, col),
            Panels::Coded(coded) => self.coded_tile::<R, P>(coded, first, col),
        }
    }

    /// Rows `first..first + R` of the output on the `P` coded panels from column `col`.
    #[inline(always)]
    fn coded_tile<const R: usize, const P: usize>(
        &mut self,
        coded: &Coded,
        first: usize,
        col: usize,
    ) {
        let (k, width) = (self.w.k, self.cols.len());
        let blocks = k.div_ceil(coded::BLOCK);
        let panel = col / PANEL;
        let at = col - self.cols.start;
        #[cfg(target_arch = "x86_64")]
        {
            let tile = coded::Tile::<R, P> {
                simd: coded.simd,
                codes: &coded.codes[panel * k..(panel + P) * k],
                scales: &coded.scales[panel * 2 * blocks..(panel + P) * 2 * blocks],
                k,
                x: &self.x[first * k..(first + R) * k],
                out: &mut self.out[first * width + at..],
                stride: width,
            };
            pulp::Simd::vectorize(coded.simd, tile);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (coded, blocks, panel, at, first);
            unreachable!("coded panels are made only where their kernel runs");
        }
    }

    /// Rows `first..first + R` of the output on the `P` panels from column `col`: all `k`
    /// products of each output added in registers.
    #[inline(always)]
    fn tile<S: Simd, const R: usize, const NV: usize, const P: usize>(
        &mut self,
        simd: S,
        values: &[f32],
        base: usize,
        first: usize,
        col: usize,
    ) {
        let (k, width) = (self.w.k, self.cols.len());
        let at = col - self.cols.start;
        let panels: [&[S::f32s]; P] = std::array::from_fn(|p| {
            let c = col + p * PANEL - base;
            S::as_simd_f32s(&values[c * k..(c + PANEL) * k]).0
        });
        let xs: [&[f32]; R] =
            std::array::from_fn(|r| &self.x[(first + r) * k..(first + r + 1) * k]);
        let mut acc: [[[S::f32s; NV]; P]; R] = std::array::from_fn(|r| {
            std::array::from_fn(|p| {
                let start = (first + r) * width + at + p * PANEL;
                let o = S::as_simd_f32s(&self.out[start..start + PANEL]).0;
                std::array::from_fn(|v| o[v])
            })
        });
        for i in 0..k {
            let w: [[S::f32s; NV]; P] =
                std::array::from_fn(|p| std::array::from_fn(|v| panels[p][i * NV + v]));
            for r in 0..R {
                let x = simd.splat_f32s(xs[r][i]);
                for p in 0..P {
                    for v in 0..NV {
                        acc[r][p][v] = simd.mul_add_f32s(x, w[p][v], acc[r][p][v]);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, acc) in acc.iter().enumerate() {
                let start = (first + r) * width + at + p * PANEL;
                let o = S::as_mut_simd_f32s(&mut self.out[start..start + PANEL]).0;
                o[..NV].copy_from_slice(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Sizes that leave remainders everywhere: rows beyond a group of four (or two), columns
    /// beyond two vectors and beyond one, a `k` that is not a multiple of the vector width,
    /// and enough work for the threaded path.
    const SIZES: [(usize, usize, usize); 8] = [
        (1, 8, 16),
        (3, 5, 7),
        (4, 33, 40),
        (7, 64, 100),
        (9, 19, 129),
        (8, 256, 768),
        // One row on the threaded path (a decoding step at batch 1: SmolLM2's MLP).
        (1, 576, 1920),
        // A `k` long enough that a thread's columns take several cache blocks, the last one
        // short (80 embedding rows per block for the transposed kernel).
        (5, 1536, 203),
    ];

    /// A row's products do not depend on the rows beside it, bit for bit: each output is
    /// accumulated in the same order whatever the group, block or thread it falls in (what
    /// makes a sequence's decoding the same alone as in a batch).
    #[test]
    fn a_row_is_the_same_alone_as_among_others() {
        let (rows, k, n) = (32, 1536, 203);
        let (x, w, e, bias) = (
            values(rows * k, 1),
            values(k * n, 2),
            values(n * k, 3),
            values(n, 4),
        );
        let together = rows_times(&x, rows, &w, n, Some(&bias));
        let together_t = rows_times_transposed(&x, rows, &e, n);
        for r in [0, 5, 17, 31] {
            let row = &x[r * k..(r + 1) * k];
            let alone = rows_times(row, 1, &w, n, Some(&bias));
            let alone_t = rows_times_transposed(row, 1, &e, n);
            for j in 0..n {
                assert_eq!(
                    alone[j].to_bits(),
                    together[r * n + j].to_bits(),
                    "row {r} col {j}"
                );
                assert_eq!(
                    alone_t[j].to_bits(),
                    together_t[r * n + j].to_bits(),
                    "row {r} col {j} (transposed)"
                );
            }
        }
    }

    /// The packed kernel gives the row-major one's values bit for bit (so a decoder reads the
    /// same logits whichever it takes), on sizes with partial panels, a lone rest, rows
    /// beyond a group of six, and the threaded path.
    #[test]
    fn packed_weights_give_the_same_values_bit_for_bit() {
        let sizes = SIZES
            .iter()
            .copied()
            .chain([(16, 576, 960), (13, 40, 15), (2, 7, 48)]);
        for (seed, (rows, k, n)) in sizes.enumerate() {
            let (x, w, bias) = (
                values(rows * k, 400 + seed as u64),
                values(k * n, 500 + seed as u64),
                values(n, 600 + seed as u64),
            );
            let packed = Packed::new(&w, n, true);
            assert_eq!(packed.bytes(), 4 * k * n);
            for bias in [None, Some(bias.as_slice())] {
                let want = rows_times(&x, rows, &w, n, bias);
                let got = rows_times_packed(&x, rows, &packed, bias);
                for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "[{rows}×{k}]·[{k}×{n}] at ({}, {}) with bias {}: {a} vs {b}",
                        j / n,
                        j % n,
                        bias.is_some()
                    );
                }
            }
        }
    }

    /// `[k, n]` values as a quantised model's: each column's blocks of 32 inputs `d · q + m`,
    /// in turn Q4_1-like (codes 0..=15, `m` the least), Q8_0-like (codes ±127, `m = 0`) and
    /// Q4_0-like (`m = −8 d`).
    fn quantised(k: usize, n: usize, seed: u64) -> Vec<f32> {
        let noise = values(k * n + 2 * n * k.div_ceil(32), seed);
        let mut w = vec![0.0; k * n];
        for c in 0..n {
            for b in 0..k.div_ceil(32) {
                let at = k * n + 2 * (c * k.div_ceil(32) + b);
                let d = 0.001 + noise[at].abs() * 0.01;
                let (m, range) = match (c + b) % 3 {
                    0 => (-noise[at + 1].abs() * 0.1, 0..16),
                    1 => (0.0, -127..128),
                    _ => (-8.0 * d, 0..16),
                };
                for i in b * 32..((b + 1) * 32).min(k) {
                    // The ends of the range present, as a quantiser leaves them.
                    let u = match i - b * 32 {
                        0 => 0.0,
                        1 => 1.0,
                        _ => (noise[i * n + c] + 1.0) / 2.0,
                    };
                    let q = range.start + (u * (range.len() - 1) as f32).round() as i32;
                    w[i * n + c] = coded::decode(q as i8, d, m);
                }
            }
        }
        w
    }

    /// Weights that are a quantised model's are packed as codes (where the CPU has their
    /// kernel) and give the float kernels' values bit for bit; one value off by an ulp and the
    /// matrix keeps float panels.
    #[test]
    fn coded_weights_give_the_same_values_bit_for_bit() {
        let sizes = [
            (1, 576, 1920),
            (1, 64, 48),
            (3, 40, 40),
            (6, 96, 33),
            (7, 1536, 203),
            (13, 64, 64),
            (16, 576, 960),
        ];
        for (seed, (rows, k, n)) in sizes.into_iter().enumerate() {
            let (x, w, bias) = (
                values(rows * k, 700 + seed as u64),
                quantised(k, n, 800 + seed as u64),
                values(n, 900 + seed as u64),
            );
            let packed = Packed::new(&w, n, true);
            assert_eq!(packed.is_coded(), coded::available() && n >= PANEL);
            if packed.is_coded() {
                assert!(packed.bytes() < 2 * k * n, "{} bytes", packed.bytes());
            }
            let floats = Packed::new(&w, n, false);
            assert!(!floats.is_coded());
            for bias in [None, Some(bias.as_slice())] {
                let want = rows_times(&x, rows, &w, n, bias);
                for (kind, got) in [
                    ("coded", rows_times_packed(&x, rows, &packed, bias)),
                    ("floats", rows_times_packed(&x, rows, &floats, bias)),
                ] {
                    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{kind}: [{rows}×{k}]·[{k}×{n}] at ({}, {}): {a} vs {b}",
                            j / n,
                            j % n,
                        );
                    }
                }
            }
        }
        let mut w = quantised(64, 48, 5);
        w[37 * 48 + 20] = f32::from_bits(w[37 * 48 + 20].to_bits() + 1);
        assert!(
            !Packed::new(&w, 48, true).is_coded(),
            "a value off by an ulp"
        );
    }

    /// A tied embedding whose rows are a quantised model's (blocks of 32 along each row) is
    /// kept as codes (where the CPU has their kernel) and multiplies to the float kernel's
    /// values bit for bit.
    #[test]
    fn coded_embedding_rows_give_the_same_values_bit_for_bit() {
        for (seed, (rows, k, n)) in [(1, 576, 1920), (1, 64, 17), (3, 96, 100), (16, 40, 203)]
            .into_iter()
            .enumerate()
        {
            let w = quantised(k, n, 1000 + seed as u64);
            let e: Vec<f32> = (0..n * k).map(|at| w[(at % k) * n + at / k]).collect();
            let x = values(rows * k, 1100 + seed as u64);
            let Some(coded) = coded::code_rows(&e, n) else {
                assert!(!coded::available(), "[{n}×{k}] not coded");
                continue;
            };
            assert!(coded.bytes() < 2 * n * k);
            let want = rows_times_transposed(&x, rows, &e, n);
            let got = rows_times_coded_rows(&x, rows, &coded, n);
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "[{rows}×{k}]·[{n}×{k}]ᵀ at {j}: {a} vs {b}"
                );
            }
        }
        assert!(
            coded::code_rows(&values(8 * 64, 3), 8).is_none(),
            "trained values"
        );
    }

    #[test]
    fn rows_times_matches_an_f64_reference() {
        for (seed, &(rows, k, n)) in SIZES.iter().enumerate() {
            let (x, w, bias) = (
                values(rows * k, seed as u64),
                values(k * n, 100 + seed as u64),
                values(n, 200 + seed as u64),
            );
            for bias in [None, Some(bias.as_slice())] {
                let got = rows_times(&x, rows, &w, n, bias);
                for r in 0..rows {
                    for j in 0..n {
                        let want = bias.map_or(0.0, |b| f64::from(b[j]))
                            + (0..k)
                                .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + j]))
                                .sum::<f64>();
                        let got = f64::from(got[r * n + j]);
                        assert!(
                            (got - want).abs() < 1e-5 * (1.0 + k as f64),
                            "[{rows}×{k}]·[{k}×{n}] at ({r}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_times_transposed_matches_an_f64_reference() {
        for (seed, &(rows, k, n)) in SIZES.iter().enumerate() {
            let (x, e) = (
                values(rows * k, seed as u64),
                values(n * k, 300 + seed as u64),
            );
            let got = rows_times_transposed(&x, rows, &e, n);
            for r in 0..rows {
                for j in 0..n {
                    let want = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(e[j * k + i]))
                        .sum::<f64>();
                    let got = f64::from(got[r * n + j]);
                    assert!(
                        (got - want).abs() < 1e-5 * (1.0 + k as f64),
                        "[{rows}×{k}]·[{n}×{k}]ᵀ at ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
