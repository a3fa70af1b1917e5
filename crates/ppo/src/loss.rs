//! PPO's losses on tensors: the clipped surrogate for the policy and the clipped value loss,
//! both averaged over the answer tokens a mask selects.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};
use ember_transformer::Decoder;

/// The mean of `x` over the entries where `mask` is 1.
///
/// # Shapes
/// - `x`, `mask`: `[batch, seq]` → `[1]`
pub fn masked_mean<B: Backend>(x: Tensor<B, 2>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
    let count = mask.clone().sum().clamp_min(1.0);
    (x * mask).sum() / count
}

/// The log-probability of each next token, from logits divided by `temperature` (the
/// distribution the tokens were sampled from), and the full log-distribution for the entropy.
///
/// # Shapes
/// - `tokens`: `[batch, seq]` → `[batch, seq − 1]`: entry t is log π(tokens[t+1] | tokens[≤t])
pub fn token_logprobs<B: Backend>(
    model: &Decoder<B>,
    tokens: Tensor<B, 2, Int>,
    temperature: f64,
) -> (Tensor<B, 2>, Tensor<B, 3>) {
    let [batch, seq] = tokens.dims();
    let logits = model.forward(tokens.clone()).narrow(1, 0, seq - 1);
    let logp = log_softmax(logits.div_scalar(temperature), 2);
    let targets = tokens.narrow(1, 1, seq - 1).reshape([batch, seq - 1, 1]);
    let picked = logp.clone().gather(2, targets).reshape([batch, seq - 1]);
    (picked, logp)
}

/// The entropy of each position's distribution, from its log-probabilities.
///
/// # Shapes
/// - `logp`: `[batch, seq, vocab]` → `[batch, seq]`
pub fn entropy<B: Backend>(logp: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, seq, _] = logp.dims();
    (logp.clone().exp() * logp)
        .sum_dim(2)
        .neg()
        .reshape([batch, seq])
}

/// The policy loss of a minibatch and what to watch.
#[derive(Debug, Clone)]
pub struct PolicyLoss<B: Backend> {
    /// mean over answer tokens of max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = π/π_old.
    pub loss: Tensor<B, 1>,
    /// Share of answer tokens where the clipped term was the larger (the update was cut).
    pub clip_fraction: f64,
    /// mean of (ρ − 1) − log ρ: how far the policy moved from the one that sampled.
    pub approx_kl: f64,
}

/// PPO's clipped surrogate.
///
/// # Shapes
/// all `[batch, seq]`
pub fn policy_loss<B: Backend>(
    logp: Tensor<B, 2>,
    old_logp: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    clip: f64,
) -> PolicyLoss<B> {
    let log_ratio = logp - old_logp;
    let ratio = log_ratio.clone().exp();
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clone().clamp(1.0 - clip, 1.0 + clip);
    let was_clipped = clipped.clone().greater(unclipped.clone()).float();
    let loss = masked_mean(unclipped.max_pair(clipped), mask.clone());
    let scalar = |t: Tensor<B, 1>| f64::from(t.into_scalar().elem::<f32>());
    let clip_fraction = scalar(masked_mean(was_clipped, mask.clone()));
    let approx_kl = scalar(masked_mean(
        (ratio.detach() - 1.0) - log_ratio.detach(),
        mask,
    ));
    PolicyLoss {
        loss,
        clip_fraction,
        approx_kl,
    }
}

/// The clipped value loss: 0.5 · mean over answer tokens of max((V − R)², (V_clip − R)²) with
/// V_clip = V_old + clip(V − V_old, −ε, ε); and the share of tokens where the clip was the
/// larger.
///
/// # Shapes
/// all `[batch, seq]`
pub fn value_loss<B: Backend>(
    values: Tensor<B, 2>,
    old_values: Tensor<B, 2>,
    returns: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    clip: f64,
) -> (Tensor<B, 1>, f64) {
    let clipped = old_values.clone() + (values.clone() - old_values).clamp(-clip, clip);
    let plain = (values - returns.clone()).square();
    let cut = (clipped - returns).square();
    let was_clipped = cut.clone().greater(plain.clone()).float();
    let loss = masked_mean(plain.max_pair(cut), mask.clone()).mul_scalar(0.5);
    let fraction = f64::from(masked_mean(was_clipped, mask).into_scalar().elem::<f32>());
    (loss, fraction)
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    use super::*;

    type B = Autodiff<Flex>;

    fn tensor(values: &[f32]) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [1, values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn at_ratio_one_the_clipped_loss_is_the_policy_gradient_loss() {
        let old = [-1.0, -2.0, -0.5, -3.0];
        let advantages = [0.5, -1.0, 2.0, 7.0];
        let mask = [1.0, 1.0, 1.0, 0.0];
        let logp = tensor(&old).require_grad();
        let out = policy_loss(
            logp.clone(),
            tensor(&old),
            tensor(&advantages),
            tensor(&mask),
            0.2,
        );
        // −mean(A) over the three masked-in tokens.
        let value = f64::from(out.loss.clone().into_scalar());
        assert!((value - -(0.5 - 1.0 + 2.0) / 3.0).abs() < 1e-6);
        assert_eq!(out.clip_fraction, 0.0);
        assert!(out.approx_kl.abs() < 1e-7);
        // Its gradient is the policy gradient's, −A/n, and 0 where masked out.
        let grads = out.loss.backward();
        let grad = logp
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let expected = [-0.5 / 3.0, 1.0 / 3.0, -2.0 / 3.0, 0.0];
        for (g, e) in grad.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{grad:?}");
        }
    }

    #[test]
    fn past_the_clip_range_on_the_advantages_side_the_loss_is_flat() {
        let old = [-1.0f32, -1.0];
        // Token 0: A > 0 and ρ = e^0.4 ≈ 1.49 > 1.2; token 1: A < 0 and ρ = e^−0.4 ≈ 0.67 < 0.8.
        let new = [-0.6f32, -1.4];
        let advantages = [1.0, -1.0];
        let logp = tensor(&new).require_grad();
        let out = policy_loss(
            logp.clone(),
            tensor(&old),
            tensor(&advantages),
            tensor(&[1.0, 1.0]),
            0.2,
        );
        assert_eq!(out.clip_fraction, 1.0);
        // Both terms are clipped: −1.2 and +0.8·1 → mean −0.2.
        assert!((f64::from(out.loss.clone().into_scalar()) - -0.2).abs() < 1e-6);
        let grads = out.loss.backward();
        let grad = logp
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(grad, vec![0.0, 0.0], "no gradient past the clip range");
        // On the other side (A > 0 with ρ < 1 − ε) the loss is not flat: it still pushes up.
        let logp = tensor(&[-1.4]).require_grad();
        let out = policy_loss(
            logp.clone(),
            tensor(&[-1.0]),
            tensor(&[1.0]),
            tensor(&[1.0]),
            0.2,
        );
        let grads = out.loss.backward();
        let grad = logp
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(grad[0] < -0.5, "{grad:?}");
    }

    #[test]
    fn the_value_loss_is_clipped_around_the_old_values() {
        // V_old = 0, R = 1, V = 0.5, ε = 0.2: V_clip = 0.2; max(0.25, 0.64) / 2 = 0.32.
        let (loss, fraction) = value_loss(
            tensor(&[0.5]),
            tensor(&[0.0]),
            tensor(&[1.0]),
            tensor(&[1.0]),
            0.2,
        );
        assert!((f64::from(loss.into_scalar()) - 0.32).abs() < 1e-6);
        assert_eq!(fraction, 1.0);
        // Within the range both agree: V = 0.1 → 0.5 · 0.81.
        let (loss, fraction) = value_loss(
            tensor(&[0.1]),
            tensor(&[0.0]),
            tensor(&[1.0]),
            tensor(&[1.0]),
            0.2,
        );
        assert!((f64::from(loss.into_scalar()) - 0.405).abs() < 1e-6);
        assert_eq!(fraction, 0.0);
    }
}
