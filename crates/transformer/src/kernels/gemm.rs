//! Matrix products written into the caller's buffers: the `gemm` crate (flex's own matmul
//! engine) called directly, behind a checked, safe interface.
//!
//! flex's `matmul` returns a new tensor: it zeroes a byte buffer for the output and then
//! copies it into an aligned allocation (a `memset` and a `memcpy` of every product), and its
//! caller must then copy the product to where it belongs. Ember's attention writes each
//! block's product straight into its rows of the output or gradient, and accumulates key and
//! value gradients in place (`gemm`'s `dst = dst + lhs·rhs`). This module holds the crate's
//! only `unsafe` block: the call into `gemm`, after checking that every element the three
//! strided matrices name lies inside their slices.

/// A read-only strided matrix: element `(i, j)` is `data[offset + i·row_stride +
/// j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// # Panics
    /// If an element lies outside `data`.
    pub(crate) fn new(
        data: &'a [f32],
        offset: usize,
        [rows, cols]: [usize; 2],
        [row_stride, col_stride]: [usize; 2],
    ) -> Self {
        assert!(
            fits(data.len(), offset, [rows, cols], [row_stride, col_stride]),
            "a {rows}×{cols} matrix at {offset} with strides ({row_stride}, {col_stride}) \
             overruns {} values",
            data.len()
        );
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The same values seen as the transpose (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A row-major output matrix with rows `row_stride` apart (`row_stride ≥ cols`, so no two
/// elements share a place).
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// # Panics
    /// If `row_stride < cols` or an element lies outside `data`.
    pub(crate) fn new(data: &'a mut [f32], [rows, cols]: [usize; 2], row_stride: usize) -> Self {
        assert!(
            row_stride >= cols,
            "rows of {cols} values {row_stride} apart overlap"
        );
        assert!(
            fits(data.len(), 0, [rows, cols], [row_stride, 1]),
            "a {rows}×{cols} matrix with row stride {row_stride} overruns {} values",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

/// Whether every element of the matrix lies in `len` values.
fn fits(len: usize, offset: usize, [rows, cols]: [usize; 2], [rs, cs]: [usize; 2]) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)))
        .and_then(|i| i.checked_add(offset));
    last.is_some_and(|last| last < len)
}

/// `out = lhs · rhs`, or `out += lhs · rhs` when `accumulate`, on the calling thread.
///
/// # Panics
/// If the shapes do not match.
pub(crate) fn matmul_into(out: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) {
    assert!(
        lhs.rows == out.rows && rhs.cols == out.cols && lhs.cols == rhs.rows,
        "[{}×{}]·[{}×{}] into [{}×{}]",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols,
        out.rows,
        out.cols
    );
    if out.rows == 0 || out.cols == 0 {
        return;
    }
    if lhs.cols == 0 {
        // An empty sum (and no element of `lhs` or `rhs` to point at).
        if !accumulate {
            for row in out.data.chunks_mut(out.row_stride).take(out.rows) {
                row[..out.cols].fill(0.0);
            }
        }
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("a stride within a slice fits isize");
    #[allow(unsafe_code)]
    // Safety: `Mat::new` and `MatMut::new` checked that every element the strides and shapes
    // name lies inside its slice, and the shapes agree (asserted above), so `gemm` reads and
    // writes only inside the three slices. `out` is borrowed mutably, so no other reference
    // reads or writes its elements during the call (and `lhs`/`rhs`, shared borrows, cannot
    // overlap it); its row stride is at least its width, so no two output elements alias.
    unsafe {
        gemm::gemm(
            out.rows,
            out.cols,
            lhs.cols,
            out.data.as_mut_ptr(),
            1,
            stride(out.row_stride),
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr().add(rhs.offset),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_a_reference_and_accumulate() {
        // lhs: a 3×5 block of a 4×7 buffer, read transposed (5×3); rhs: 3×2 with gaps.
        let buffer = (0..28).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>();
        let lhs = Mat::new(&buffer, 8, [3, 5], [7, 1]).t();
        let rhs_values = (0..12).map(|i| (i as f32 * 0.91).cos()).collect::<Vec<_>>();
        let rhs = Mat::new(&rhs_values, 1, [3, 2], [4, 2]);
        let want = |i: usize, j: usize| {
            (0..3)
                .map(|p| buffer[8 + p * 7 + i] * rhs_values[1 + p * 4 + j * 2])
                .sum::<f32>()
        };
        // A 5×2 output with a row stride of 3: the third column is left alone.
        let mut out = vec![100.0f32; 15];
        matmul_into(MatMut::new(&mut out, [5, 2], 3), lhs, rhs, false);
        for i in 0..5 {
            for j in 0..2 {
                assert!((out[i * 3 + j] - want(i, j)).abs() < 1e-6, "({i}, {j})");
            }
            assert_eq!(out[i * 3 + 2], 100.0);
        }
        matmul_into(MatMut::new(&mut out, [5, 2], 3), lhs, rhs, true);
        for i in 0..5 {
            for j in 0..2 {
                assert!(
                    (out[i * 3 + j] - 2.0 * want(i, j)).abs() < 1e-5,
                    "({i}, {j})"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn a_matrix_past_its_slice_is_refused() {
        let values = [0.0f32; 10];
        Mat::new(&values, 2, [3, 3], [3, 1]);
    }
}
