//! Next-token cross-entropy with a per-token mask.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

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

/// The summed masked cross-entropy of `logits` against `targets` (`[rows, 1]` each, `mask`
/// `[rows, 1]`) and its gradient with respect to the logits times `scale`:
/// `(softmax − one-hot) × mask × scale`. With the `flex` feature on flex, one kernel
/// (`kernels::softmax_cross_entropy`) computes both. Elsewhere, one pass of the backend's
/// softmax and no `exp` or `log` over the whole tensor: the log-sum-exp is `max − log p_max`,
/// since the largest logit's probability is `exp(0) / Σ exp(x − max)`, and `p_max ≥ 1/vocab`
/// cannot underflow.
fn loss_and_grad<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
    scale: f64,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    #[cfg(feature = "flex")]
    if let Some(result) = crate::kernels::flex::loss_and_grad(&logits, &targets, &mask, scale) {
        return result;
    }
    let rows = logits.dims()[0];
    let max = logits.clone().max_dim(1);
    let picked = logits.clone().gather(1, targets.clone());
    let probabilities = softmax(logits, 1);
    let log_sum_exp = max - probabilities.clone().max_dim(1).log();
    let loss = ((log_sum_exp - picked) * mask.clone()).sum();
    let minus_one = Tensor::full([rows, 1], -1.0, &mask.device());
    let grad = probabilities.scatter(1, targets, minus_one, IndexingUpdateOp::Add) * (mask * scale);
    (loss, grad)
}

/// Mean cross-entropy of `logits` against `targets` over the rows whose `mask` is 1
/// (`n_targets` of them), for training: the value and the gradient come from one softmax in
/// the forward pass ([`fused_linear_cross_entropy`]'s trick without the head), and the
/// backward pass keeps one `[rows, vocab]` tensor, the gradient, instead of the chain of
/// log-softmax intermediates. Same value and gradient as [`masked_cross_entropy`].
///
/// # Shapes
/// - `logits`: `[rows, vocab]`, `targets`, `mask`: `[rows]` → `[1]`
///
/// # Errors
/// [`Error::AllMasked`] if `n_targets` is 0.
pub fn fused_cross_entropy<B: AutodiffBackend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    mask: Tensor<B, 1>,
    n_targets: usize,
) -> Result<Tensor<B, 1>> {
    if n_targets == 0 {
        return Err(Error::AllMasked);
    }
    let scale = 1.0 / n_targets as f64;
    let (loss, grad) = loss_and_grad(
        logits.clone().inner(),
        targets.inner().unsqueeze_dim::<2>(1),
        mask.inner().unsqueeze_dim::<2>(1),
        scale,
    );
    Ok(with_gradients(loss * scale, [logits], [grad]))
}

/// `value` as a tensor whose gradients with respect to `inputs` are the precomputed
/// `gradients`: `value + s − detach(s)` for `s = Σᵢ Σ inputᵢ ⊙ gradientᵢ` (its value is
/// `value`, its gradient `gradientᵢ`). On autodiff over flex, with the `flex` feature, one
/// graph node that hands the gradients back as they are, without the products.
fn with_gradients<B: AutodiffBackend, const N: usize>(
    value: Tensor<B::InnerBackend, 1>,
    inputs: [Tensor<B, 2>; N],
    gradients: [Tensor<B::InnerBackend, 2>; N],
) -> Tensor<B, 1> {
    #[cfg(feature = "flex")]
    if let Some(result) = crate::kernels::flex::with_gradients::<B, N>(
        &value,
        inputs.each_ref(),
        gradients.each_ref(),
    ) {
        return result;
    }
    let surrogate = inputs
        .into_iter()
        .zip(gradients)
        .map(|(input, gradient)| (input * Tensor::from_inner(gradient)).sum())
        .reduce(|a, b| a + b)
        .expect("at least one input");
    Tensor::from_inner(value) + surrogate.clone() - surrogate.detach()
}

/// Mean cross-entropy of the logits `hidden · weightᵀ` against `targets`, over the rows whose
/// `mask` is 1 (`n_targets` of them), without ever holding the `[rows, vocab]` logits whole:
/// `chunk_rows` rows at a time, the forward pass also computes the gradients with respect to
/// `hidden` and `weight` (softmax − one-hot, times the mask over `n_targets`), and only those
/// (the size of `hidden` and of `weight`) are kept for the backward pass. The value is exact
/// and so are the first-order gradients; peak memory is `chunk_rows × vocab` floats of logits
/// instead of `rows × vocab` (and the backward pass stores no logits at all).
///
/// The trick: with `Gh` and `Gw` the gradients computed in the forward pass (constants), the
/// result is `L + s − detach(s)` for `s = Σ hidden ⊙ Gh + Σ weight ⊙ Gw`: its value is `L`
/// and its gradient is `(Gh, Gw)`.
///
/// # Shapes
/// - `hidden`: `[rows, d]`, `weight`: `[vocab, d]`, `targets`, `mask`: `[rows]` → `[1]`
///
/// # Errors
/// [`Error::AllMasked`] if `n_targets` is 0; [`Error::Input`] if `chunk_rows` is 0.
pub fn fused_linear_cross_entropy<B: AutodiffBackend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    mask: Tensor<B, 1>,
    n_targets: usize,
    chunk_rows: usize,
) -> Result<Tensor<B, 1>> {
    if n_targets == 0 {
        return Err(Error::AllMasked);
    }
    if chunk_rows == 0 {
        return Err(Error::Input("chunk_rows must be at least 1".into()));
    }
    let [rows, _] = hidden.dims();
    let (h, w) = (hidden.clone().inner(), weight.clone().inner());
    let (targets, mask) = (targets.inner(), mask.inner());
    let scale = 1.0 / n_targets as f64;
    let mut loss = Tensor::zeros([1], &h.device());
    let mut grad_w = w.zeros_like();
    let mut grad_h = Vec::with_capacity(rows.div_ceil(chunk_rows));
    for start in (0..rows).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(rows);
        let h_chunk = h.clone().narrow(0, start, end - start);
        let t_chunk = targets
            .clone()
            .narrow(0, start, end - start)
            .unsqueeze_dim::<2>(1);
        let m_chunk = mask
            .clone()
            .narrow(0, start, end - start)
            .unsqueeze_dim::<2>(1);
        let logits = h_chunk.clone().matmul(w.clone().transpose());
        let (chunk_loss, grad_logits) = loss_and_grad(logits, t_chunk, m_chunk, scale);
        loss = loss + chunk_loss;
        grad_h.push(grad_logits.clone().matmul(w.clone()));
        grad_w = grad_w + grad_logits.transpose().matmul(h_chunk);
    }
    let grad_h = Tensor::cat(grad_h, 0);
    Ok(with_gradients(
        loss * scale,
        [hidden, weight],
        [grad_h, grad_w],
    ))
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
    fn fused_linear_cross_entropy_equals_the_naive_loss_and_its_gradients() {
        use burn::backend::Autodiff;
        use burn::tensor::Distribution;
        type A = Autodiff<Flex>;
        let device = Default::default();
        let (rows, d, vocab) = (10, 8, 13);
        let hidden_data =
            Tensor::<B, 2>::random([rows, d], Distribution::Normal(0.0, 1.0), &device);
        let weight_data =
            Tensor::<B, 2>::random([vocab, d], Distribution::Normal(0.0, 1.0), &device);
        let targets = [3i64, 0, 12, 7, 7, 1, 5, 9, 2, 11];
        let flags = [1.0f32, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let targets =
            Tensor::<A, 1, Int>::from_data(TensorData::new(targets.to_vec(), [rows]), &device);
        let mask = Tensor::<A, 1>::from_data(TensorData::new(flags.to_vec(), [rows]), &device);
        let leaves = || {
            (
                Tensor::<A, 2>::from_inner(hidden_data.clone()).require_grad(),
                Tensor::<A, 2>::from_inner(weight_data.clone()).require_grad(),
            )
        };
        let grad = |leaf: Tensor<A, 2>, grads: &<A as AutodiffBackend>::Gradients| {
            leaf.grad(grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        // Naive: the whole logits tensor, log-softmax, masked mean.
        let (hidden, weight) = leaves();
        let logits = hidden.clone().matmul(weight.clone().transpose());
        let picked = log_softmax(logits, 1).gather(1, targets.clone().unsqueeze_dim::<2>(1));
        let naive = (picked.reshape([rows]) * mask.clone()).sum().neg() / 8.0;
        let grads = naive.backward();
        let naive_value = naive.into_scalar();
        let naive_h = grad(hidden, &grads);
        let naive_w = grad(weight, &grads);
        for chunk in [1, 3, 10, 64] {
            let (hidden, weight) = leaves();
            let fused = fused_linear_cross_entropy(
                hidden.clone(),
                weight.clone(),
                targets.clone(),
                mask.clone(),
                8,
                chunk,
            )
            .unwrap();
            let grads = fused.backward();
            let value = fused.into_scalar();
            assert!(
                (value - naive_value).abs() < 1e-5,
                "{value} vs {naive_value}"
            );
            let fused_h = grad(hidden, &grads);
            let fused_w = grad(weight, &grads);
            for (a, b) in fused_h
                .iter()
                .zip(&naive_h)
                .chain(fused_w.iter().zip(&naive_w))
            {
                assert!((a - b).abs() < 1e-5, "chunk {chunk}: gradient {a} vs {b}");
            }
        }
        // The masked-out rows get no gradient.
        assert!(naive_h[2 * d..3 * d].iter().all(|g| *g == 0.0));

        // The same without the head, against the logits' gradient.
        let logits_data = hidden_data.matmul(weight_data.transpose());
        let leaf = || Tensor::<A, 2>::from_inner(logits_data.clone()).require_grad();
        let (plain_logits, fused_logits) = (leaf(), leaf());
        let picked =
            log_softmax(plain_logits.clone(), 1).gather(1, targets.clone().unsqueeze_dim::<2>(1));
        let plain = (picked.reshape([rows]) * mask.clone()).sum().neg() / 8.0;
        let fused =
            fused_cross_entropy(fused_logits.clone(), targets.clone(), mask.clone(), 8).unwrap();
        let (plain_grads, fused_grads) = (plain.backward(), fused.backward());
        assert!((plain.into_scalar() - fused.into_scalar()).abs() < 1e-5);
        let a = plain_logits
            .grad(&plain_grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let b = fused_logits
            .grad(&fused_grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-6, "logit gradient {a} vs {b}");
        }
    }

    #[test]
    fn fused_cross_entropy_is_exact_far_past_exp_underflow() {
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        // p(target) = e^-200 / (1 + e^-200): exp underflows in f32, the loss must not.
        let logits =
            Tensor::<A, 2>::from_floats([[200.0, 0.0], [0.0, 0.0]], &device).require_grad();
        let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &device);
        let mask = Tensor::<A, 1>::ones([2], &device);
        let loss = fused_cross_entropy(logits.clone(), targets, mask, 2).unwrap();
        let value = loss.clone().into_scalar();
        let expected = (200.0 + 2f32.ln()) / 2.0;
        assert!((value - expected).abs() < 1e-4, "{value} vs {expected}");
        let grad = logits
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // (softmax − one-hot) / 2: [[1, −1], [−½, ½]] / 2.
        for (g, e) in grad.iter().zip([0.5f32, -0.5, -0.25, 0.25]) {
            assert!((g - e).abs() < 1e-6, "{grad:?}");
        }
    }

    /// The precomputed gradients (one graph node on flex, products elsewhere) follow the
    /// upstream gradient when the loss is scaled and combined with other terms.
    #[test]
    fn fused_gradients_follow_a_scaled_loss() {
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        let logits = [[1.0f32, -0.5, 2.0], [0.3, 0.1, -1.2]];
        let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &device);
        let mask = Tensor::<A, 1>::ones([2], &device);
        let mut results = Vec::new();
        for kernels in [true, false] {
            #[cfg(feature = "flex")]
            crate::set_flex_kernels(kernels);
            // Without the feature there is one path: both runs take the products.
            #[cfg(not(feature = "flex"))]
            let _ = kernels;
            let leaf = Tensor::<A, 2>::from_floats(logits, &device).require_grad();
            let loss = fused_cross_entropy(leaf.clone(), targets.clone(), mask.clone(), 2).unwrap();
            // d/dlogits of 2.5·L + Σ logits² is 2.5·(softmax − one-hot)/2 + 2·logits.
            let total = loss * 2.5 + leaf.clone().powi_scalar(2).sum();
            let grad = leaf.grad(&total.backward()).unwrap();
            results.push(grad.into_data().to_vec::<f32>().unwrap());
        }
        #[cfg(feature = "flex")]
        crate::set_flex_kernels(true);
        for (r, row) in logits.iter().enumerate() {
            let z = row.iter().map(|x| x.exp()).sum::<f32>();
            let target = [2, 0][r];
            for (j, &x) in row.iter().enumerate() {
                let one_hot = if j == target { 1.0 } else { 0.0 };
                let expected = 2.5 * (x.exp() / z - one_hot) / 2.0 + 2.0 * x;
                for grad in &results {
                    assert!((grad[r * 3 + j] - expected).abs() < 1e-5, "{results:?}");
                }
            }
        }
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
