//! The training loop's configuration: optimizer, schedule, batching, evaluation, checkpoints.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW with decoupled weight decay, set explicitly: burn's defaults (eps 1e-5, decay 1e-4)
/// differ from PyTorch's, and nothing here should depend on either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Peak learning rate, reached after warm-up. 1e-3 suits models of a few million
    /// parameters; GPT-2 small wants 6e-4.
    pub lr: f64,
    /// The cosine decay ends at `lr * min_lr_ratio` (0.1, as in Chinchilla and nanoGPT).
    pub min_lr_ratio: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Adam's β₁ (0.9).
    pub beta1: f32,
    /// Adam's β₂: 0.95 as in GPT-3 and nanoGPT, steadier than 0.999 for small batches.
    pub beta2: f32,
    /// Adam's ε, added to √v̂: PyTorch's 1e-8.
    pub eps: f32,
    /// Decoupled weight decay for matrices (0.1 as in GPT-3); norms, biases and embeddings
    /// are never decayed.
    pub weight_decay: f32,
    /// Clip the global L2 norm of all gradients to this (1.0 as in GPT-3); `None` to not clip.
    pub grad_clip: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 20,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: Some(1.0),
        }
    }
}

impl OptimizerConfig {
    /// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up, then a
    /// cosine from `lr` down to `lr * min_lr_ratio` at the last step.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let min_lr = self.lr * self.min_lr_ratio;
        min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Configuration of [`crate::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps in all.
    pub steps: usize,
    /// Micro-batches whose gradients are summed before each optimizer step: the effective
    /// batch is `grad_accumulation` times the objective's micro-batch.
    pub grad_accumulation: usize,
    /// AdamW and its schedule.
    pub optimizer: OptimizerConfig,
    /// Validate every this many steps (and always after the last).
    pub eval_every: Option<NonZeroUsize>,
    /// Write a checkpoint every this many steps (and always after the last).
    pub checkpoint_every: Option<NonZeroUsize>,
    /// Checkpoints kept on disk; older ones are removed.
    pub keep_checkpoints: usize,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            grad_accumulation: 1,
            optimizer: OptimizerConfig::default(),
            eval_every: NonZeroUsize::new(50),
            checkpoint_every: NonZeroUsize::new(100),
            keep_checkpoints: 2,
            progress: true,
        }
    }
}

impl TrainConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.steps == 0 {
            Some("steps must be at least 1".to_string())
        } else if self.grad_accumulation == 0 {
            Some("grad_accumulation must be at least 1".into())
        } else if self.keep_checkpoints == 0 {
            Some("keep_checkpoints must be at least 1 (resuming needs one)".into())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::Config(p)))?;
        self.optimizer.validate()
    }
}

impl OptimizerConfig {
    /// Checks the values; each check is written so that NaN fails it.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        let o = self;
        let problem = if !(o.lr > 0.0 && o.lr.is_finite()) {
            Some(format!("lr must be positive, got {}", o.lr))
        } else if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            Some(format!(
                "min_lr_ratio must be in [0, 1], got {}",
                o.min_lr_ratio
            ))
        } else if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            Some(format!(
                "betas must be in [0, 1), got {} and {}",
                o.beta1, o.beta2
            ))
        } else if !(o.eps > 0.0 && o.eps.is_finite()) {
            Some(format!("eps must be positive and finite, got {}", o.eps))
        } else if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            Some(format!(
                "weight_decay must be non-negative and finite, got {}",
                o.weight_decay
            ))
        } else if o.grad_clip.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            Some(format!(
                "grad_clip must be positive and finite, got {}",
                o.grad_clip.unwrap_or_default()
            ))
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::Config(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let o = OptimizerConfig {
            lr: 1.0,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            ..Default::default()
        };
        assert!((o.lr_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((o.lr_at(9, 110) - 1.0).abs() < 1e-12);
        assert!((o.lr_at(10, 110) - 1.0).abs() < 1e-12);
        // Half-way through the decay: the mean of peak and floor.
        assert!((o.lr_at(60, 110) - 0.55).abs() < 1e-12);
        assert!((o.lr_at(110, 110) - 0.1).abs() < 1e-12);
        for step in 10..110 {
            assert!(o.lr_at(step + 1, 110) <= o.lr_at(step, 110));
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        let mut c = TrainConfig::default();
        c.optimizer.lr = -1.0;
        assert!(c.validate().is_err());
        let c = TrainConfig {
            grad_accumulation: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        assert!(TrainConfig::default().validate().is_ok());
        // NaN fails every comparison, so each check must be written to fail on it.
        let nan = f64::NAN;
        let bad: [fn(&mut OptimizerConfig, f64); 6] = [
            |o, v| o.lr = v,
            |o, v| o.min_lr_ratio = v,
            |o, v| o.beta1 = v as f32,
            |o, v| o.eps = v as f32,
            |o, v| o.weight_decay = v as f32,
            |o, v| o.grad_clip = Some(v),
        ];
        for (i, set) in bad.iter().enumerate() {
            for value in [nan, f64::INFINITY] {
                let mut c = TrainConfig::default();
                set(&mut c.optimizer, value);
                let error = c.validate().map(|_| ()).unwrap_err().to_string();
                assert!(error.contains("invalid configuration"), "{i}: {error}");
            }
        }
    }
}
