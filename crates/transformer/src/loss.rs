//! Next-token cross-entropy with a per-token mask.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::{Error, Result};

/// Inputs, shifted targets and a loss mask for a batch of rows of equal length.
#[derive(Debug, Clone)]
pub struct TokenBatch<B: Backend> {
    /// `[batch, seq]`: each row without its last token.
    pub inputs: Tensor<B, 2, Int>,
    /// `[batch, seq]`: each row without its first token.
    pub targets: Tensor<B, 2, Int>,
    /// `[batch, seq]`: weight of each target, 1 to learn from it, 0 to ignore it.
    pub mask: Tensor<B, 2>,
    /// Number of targets with weight 1 (known on the host, so no device sync is needed).
    pub n_targets: usize,
}

impl<B: Backend> TokenBatch<B> {
    /// A batch from rows of `seq + 1` tokens, every target counted.
    ///
    /// # Errors
    /// Rows of different lengths, or shorter than 2 tokens.
    pub fn from_rows(rows: &[Vec<u32>], device: &B::Device) -> Result<Self> {
        let masks = rows
            .iter()
            .map(|r| vec![true; r.len().saturating_sub(1)])
            .collect::<Vec<_>>();
        Self::from_rows_masked(rows, &masks, device)
    }

    /// A batch from rows of `seq + 1` tokens and, per row, `seq` flags saying which targets
    /// count (`masks[b][t]` is the flag of the target `rows[b][t + 1]`).
    ///
    /// # Errors
    /// Rows or masks of mismatched lengths, or rows shorter than 2 tokens.
    pub fn from_rows_masked(
        rows: &[Vec<u32>],
        masks: &[Vec<bool>],
        device: &B::Device,
    ) -> Result<Self> {
        let Some(first) = rows.first() else {
            return Err(Error::Input("a batch needs at least one row".into()));
        };
        let len = first.len();
        if len < 2 {
            return Err(Error::Input(format!(
                "rows need at least 2 tokens, got {len}"
            )));
        }
        if masks.len() != rows.len() {
            return Err(Error::Input(format!(
                "{} rows but {} masks",
                rows.len(),
                masks.len()
            )));
        }
        let seq = len - 1;
        let (mut inputs, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for (row, mask) in rows.iter().zip(masks) {
            if row.len() != len || mask.len() != seq {
                return Err(Error::Input(format!(
                    "every row needs {len} tokens and {seq} mask flags, got {} and {}",
                    row.len(),
                    mask.len()
                )));
            }
            inputs.extend(row[..seq].iter().map(|&t| t as i64));
            targets.extend(row[1..].iter().map(|&t| t as i64));
            weights.extend(mask.iter().map(|&m| if m { 1.0f32 } else { 0.0 }));
        }
        let n_targets = masks.iter().flatten().filter(|&&m| m).count();
        let batch = rows.len();
        Ok(Self {
            inputs: Tensor::from_data(TensorData::new(inputs, [batch, seq]), device),
            targets: Tensor::from_data(TensorData::new(targets, [batch, seq]), device),
            mask: Tensor::from_data(TensorData::new(weights, [batch, seq]), device),
            n_targets,
        })
    }
}

/// Mean cross-entropy of `logits` against the batch's targets, over unmasked targets only.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]` → `[1]`
///
/// # Errors
/// [`Error::AllMasked`] if no target counts.
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    batch: &TokenBatch<B>,
) -> Result<Tensor<B, 1>> {
    if batch.n_targets == 0 {
        return Err(Error::AllMasked);
    }
    let [size, seq, _] = logits.dims();
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs
        .gather(2, batch.targets.clone().unsqueeze_dim::<3>(2))
        .reshape([size, seq]);
    let total = (picked * batch.mask.clone()).sum().neg();
    Ok(total / batch.n_targets as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn matches_a_hand_computed_value() {
        let device = Default::default();
        // Two targets; logits [0, ln 3] and [ln 2, 0]: p(target) = 3/4 and 1/3; the second
        // target is masked out, so the loss is -ln(3/4).
        let logits = Tensor::<B, 3>::from_floats([[[0.0, 3f32.ln()], [2f32.ln(), 0.0]]], &device);
        let batch =
            TokenBatch::<B>::from_rows_masked(&[vec![0, 1, 1]], &[vec![true, false]], &device)
                .unwrap();
        let loss = masked_cross_entropy(logits.clone(), &batch)
            .unwrap()
            .into_scalar();
        assert!((loss - (-(0.75f32).ln())).abs() < 1e-6, "{loss}");
        let both = TokenBatch::<B>::from_rows(&[vec![0, 1, 1]], &device).unwrap();
        let loss = masked_cross_entropy(logits, &both).unwrap().into_scalar();
        let expected = (-(0.75f32).ln() - (1.0f32 / 3.0).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    #[test]
    fn all_masked_is_an_error_not_nan() {
        let device = Default::default();
        let logits = Tensor::<B, 3>::zeros([1, 2, 4], &device);
        let batch =
            TokenBatch::<B>::from_rows_masked(&[vec![0, 1, 2]], &[vec![false, false]], &device)
                .unwrap();
        assert!(matches!(
            masked_cross_entropy(logits, &batch),
            Err(Error::AllMasked)
        ));
    }

    #[test]
    fn ragged_rows_are_rejected() {
        let device = Default::default();
        let err = TokenBatch::<B>::from_rows(&[vec![0, 1, 2], vec![0, 1]], &device).unwrap_err();
        assert!(matches!(err, Error::Input(_)));
    }
}
