//! The KL penalty to the reference: how it is estimated per token, and how its coefficient β
//! is set (fixed, or adapted toward a target KL as in Ziegler et al. 2019).

use serde::{Deserialize, Serialize};

/// How the KL divergence between the policy π and the reference π_ref is estimated at a
/// sampled token, from the two log-probabilities of that token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// log π − log π_ref: unbiased, can be negative on one token (InstructGPT's).
    #[default]
    K1,
    /// (r − 1) − log r with r = π_ref/π: unbiased, never negative, lower variance (Schulman's
    /// k3).
    K3,
}

impl KlEstimator {
    /// The estimate at one token.
    pub fn estimate(self, logp: f64, ref_logp: f64) -> f64 {
        match self {
            Self::K1 => logp - ref_logp,
            Self::K3 => {
                let log_ratio = ref_logp - logp;
                log_ratio.exp() - 1.0 - log_ratio
            }
        }
    }
}

/// How β, the KL coefficient, is set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KlControl {
    /// A constant β.
    Fixed {
        /// β.
        beta: f64,
    },
    /// Ziegler et al.'s proportional controller: after each rollout batch of n answers,
    /// β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon).
    Adaptive {
        /// β at the start.
        initial: f64,
        /// The KL (per answer, summed over its tokens) to hold.
        target: f64,
        /// Answers over which β may change by a factor of about e^0.2.
        horizon: f64,
    },
}

impl Default for KlControl {
    fn default() -> Self {
        Self::Fixed { beta: 0.1 }
    }
}

impl KlControl {
    /// β before any update.
    pub fn initial(&self) -> f64 {
        match *self {
            Self::Fixed { beta } => beta,
            Self::Adaptive { initial, .. } => initial,
        }
    }

    /// β after a rollout batch of `n` answers whose mean KL was `kl`.
    pub fn update(&self, beta: f64, kl: f64, n: usize) -> f64 {
        match *self {
            Self::Fixed { beta } => beta,
            Self::Adaptive {
                target, horizon, ..
            } => {
                let error = (kl / target - 1.0).clamp(-0.2, 0.2);
                beta * (1.0 + error * n as f64 / horizon)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_when_the_policy_is_the_reference() {
        for estimator in [KlEstimator::K1, KlEstimator::K3] {
            assert_eq!(estimator.estimate(-1.7, -1.7), 0.0);
        }
        // k3 is never negative; k1 is where the policy gives the token less mass.
        assert!(KlEstimator::K3.estimate(-2.0, -1.0) > 0.0);
        assert!(KlEstimator::K1.estimate(-2.0, -1.0) < 0.0);
        // k3 at log r = 0.5: e^0.5 − 1 − 0.5.
        let k3 = KlEstimator::K3.estimate(-1.5, -1.0);
        assert!((k3 - (0.5f64.exp() - 1.5)).abs() < 1e-12);
    }

    #[test]
    fn the_adaptive_controller_moves_beta_towards_the_target() {
        let control = KlControl::Adaptive {
            initial: 0.1,
            target: 6.0,
            horizon: 1000.0,
        };
        // KL twice the target: error clipped to +0.2, β grows by 0.2·64/1000.
        let up = control.update(0.1, 12.0, 64);
        assert!((up - 0.1 * (1.0 + 0.2 * 0.064)).abs() < 1e-12);
        let down = control.update(0.1, 3.0, 64);
        assert!(down < 0.1);
        assert_eq!(
            KlControl::Fixed { beta: 0.05 }.update(0.05, 100.0, 64),
            0.05
        );
    }
}
