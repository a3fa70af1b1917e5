//! Rewards per token, KL estimates, GAE and whitening: the arithmetic of PPO, on plain numbers.

/// The reward of each answer token: −β·KL at every token, and the answer's score added at its
/// last token (the one that ends it, or the last one generated).
pub fn token_rewards(kl: &[f64], score: f64, beta: f64) -> Vec<f64> {
    let mut rewards = kl.iter().map(|k| -beta * k).collect::<Vec<_>>();
    if let Some(last) = rewards.last_mut() {
        *last += score;
    }
    rewards
}

/// The score PPO optimises for one answer: the reward model's (normalised) score, replaced by
/// `penalty` when the answer was cut off before its end marker, then clipped to
/// [−clip, clip].
pub fn shaped_score(score: f64, finished: bool, penalty: Option<f64>, clip: Option<f64>) -> f64 {
    let score = match (finished, penalty) {
        (false, Some(p)) => p,
        _ => score,
    };
    match clip {
        Some(c) => score.clamp(-c, c),
        None => score,
    }
}

/// Generalised advantage estimation over one answer's tokens:
/// δ_t = r_t + γ·V_{t+1} − V_t (V after the last token is 0), A_t = δ_t + γλ·A_{t+1}; the
/// returns are A_t + V_t.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut running = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        running = delta + gamma * lambda * running;
        advantages[t] = running;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Scales `values` to unit variance, and shifts them to mean 0 if `shift_mean` (advantages are
/// shifted; rewards, when whitened, are not).
pub fn whiten(values: &[f64], shift_mean: bool) -> Vec<f64> {
    if values.is_empty() {
        return Vec::new();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let scale = 1.0 / (var + 1e-8).sqrt();
    values
        .iter()
        .map(|v| {
            let centred = (v - mean) * scale;
            if shift_mean {
                centred
            } else {
                centred + mean
            }
        })
        .collect()
}

/// 1 − Var(returns − values) / Var(returns): how much of the returns the critic explains
/// (1 is perfect, 0 no better than a constant, negative worse).
pub fn explained_variance(values: &[f64], returns: &[f64]) -> f64 {
    let var = |x: &[f64]| {
        let n = x.len().max(1) as f64;
        let mean = x.iter().sum::<f64>() / n;
        x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n
    };
    let residual = returns
        .iter()
        .zip(values)
        .map(|(r, v)| r - v)
        .collect::<Vec<_>>();
    let total = var(returns);
    if total == 0.0 {
        0.0
    } else {
        1.0 - var(&residual) / total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_by_hand_on_four_steps() {
        // γ = 0.9, λ = 0.8; rewards 0, 0, 0, 1 (the score on the last token, no KL);
        // values 0.1, 0.2, 0.3, 0.4.
        // δ_3 = 1 − 0.4 = 0.6
        // δ_2 = 0 + 0.9·0.4 − 0.3 = 0.06
        // δ_1 = 0 + 0.9·0.3 − 0.2 = 0.07
        // δ_0 = 0 + 0.9·0.2 − 0.1 = 0.08
        // A_3 = 0.6; A_2 = 0.06 + 0.72·0.6 = 0.492; A_1 = 0.07 + 0.72·0.492 = 0.42424;
        // A_0 = 0.08 + 0.72·0.42424 = 0.3854528.
        let (a, r) = gae(&[0.0, 0.0, 0.0, 1.0], &[0.1, 0.2, 0.3, 0.4], 0.9, 0.8);
        let expected = [0.385_452_8, 0.424_24, 0.492, 0.6];
        for (got, want) in a.iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{a:?}");
        }
        let returns = [0.485_452_8, 0.624_24, 0.792, 1.0];
        for (got, want) in r.iter().zip(returns) {
            assert!((got - want).abs() < 1e-9, "{r:?}");
        }
        // λ = 1, γ = 1: the advantage is the return-to-go minus the value.
        let (a, _) = gae(&[0.5, 0.0, 0.0, 1.0], &[0.1, 0.2, 0.3, 0.4], 1.0, 1.0);
        assert!((a[0] - (1.5 - 0.1)).abs() < 1e-12);
    }

    #[test]
    fn whitening_with_and_without_the_mean() {
        let x = [1.0, 2.0, 3.0, 6.0];
        let shifted = whiten(&x, true);
        let mean = shifted.iter().sum::<f64>() / 4.0;
        let var = shifted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-6);
        // mean 3, variance 3.5: (x − 3)/√3.5 + 3.
        let kept = whiten(&x, false);
        let expected = x.map(|v| (v - 3.0) / 3.5f64.sqrt() + 3.0);
        for (a, b) in kept.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn the_score_lands_on_the_last_token() {
        let rewards = token_rewards(&[0.1, -0.2, 0.3], 2.0, 0.5);
        assert_eq!(rewards, vec![-0.05, 0.1, -0.15 + 2.0]);
    }

    #[test]
    fn the_length_penalty_applies_only_to_cut_off_answers() {
        assert_eq!(shaped_score(0.7, true, Some(-1.0), None), 0.7);
        assert_eq!(shaped_score(0.7, false, Some(-1.0), None), -1.0);
        assert_eq!(shaped_score(0.7, false, None, None), 0.7);
        assert_eq!(shaped_score(9.0, true, Some(-1.0), Some(5.0)), 5.0);
    }

    #[test]
    fn explained_variance_of_perfect_and_constant_critics() {
        let returns = [1.0, 2.0, 3.0];
        assert_eq!(explained_variance(&returns, &returns), 1.0);
        assert!(explained_variance(&[2.0, 2.0, 2.0], &returns).abs() < 1e-12);
    }
}
