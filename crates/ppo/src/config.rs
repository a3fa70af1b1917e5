//! PPO's settings.

use serde::{Deserialize, Serialize};

use crate::{Error, KlControl, KlEstimator, Result};

/// PPO's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Answers per rollout batch: `rollout_prompts / samples_per_prompt` prompts, each
    /// answered `samples_per_prompt` times.
    pub rollout_prompts: usize,
    /// Answers sampled per prompt in a rollout batch.
    pub samples_per_prompt: usize,
    /// Subtract from each answer's score the mean score of the other answers to the same
    /// prompt (a leave-one-out baseline, as in RLOO) before the rewards go to GAE: the
    /// critic then only has to learn what is left, and the policy gradient is not swamped by
    /// how easy each prompt is. Needs `samples_per_prompt` ≥ 2.
    pub prompt_baseline: bool,
    /// Passes over each rollout batch.
    pub epochs: usize,
    /// Minibatches per pass (each one optimizer step).
    pub minibatches: usize,
    /// New tokens per answer, at most.
    pub max_new_tokens: usize,
    /// Sampling temperature of the rollouts; log-probabilities use the same.
    pub temperature: f64,
    /// Discount γ.
    pub gamma: f64,
    /// GAE's λ.
    pub lambda: f64,
    /// The policy's clip range ε.
    pub clip_range: f64,
    /// The value's clip range.
    pub value_clip_range: f64,
    /// Weight of the value loss.
    pub value_coef: f64,
    /// The KL estimate at each token.
    pub kl_estimator: KlEstimator,
    /// β, fixed or adaptive.
    pub kl_control: KlControl,
    /// The score of an answer cut off at `max_new_tokens` before its end marker (replacing the
    /// reward model's); none to keep the reward model's.
    pub truncation_penalty: Option<f64>,
    /// Clip the score to [−c, c].
    pub score_clip: Option<f64>,
    /// Whiten the per-token rewards (scale only) before GAE.
    pub whiten_rewards: bool,
    /// Weight of the pretraining loss mixed in (InstructGPT's PPO-ptx); 0 for none.
    pub ptx_coef: f64,
    /// Optimise the judge's score instead of the reward model's: PPO with a perfect reward
    /// model, an upper bound to compare a run with (needs a judge).
    pub judge_as_reward: bool,
    /// Seed of the prompt order and the sampling.
    pub seed: u64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            rollout_prompts: 64,
            samples_per_prompt: 4,
            prompt_baseline: true,
            epochs: 2,
            minibatches: 4,
            max_new_tokens: 32,
            temperature: 1.0,
            gamma: 1.0,
            lambda: 0.95,
            clip_range: 0.2,
            value_clip_range: 0.2,
            value_coef: 0.1,
            kl_estimator: KlEstimator::K1,
            kl_control: KlControl::default(),
            truncation_penalty: Some(-3.0),
            score_clip: Some(5.0),
            whiten_rewards: false,
            ptx_coef: 0.0,
            judge_as_reward: false,
            seed: 0,
        }
    }
}

impl PpoConfig {
    /// Optimizer steps per rollout batch: `epochs × minibatches`.
    pub fn updates_per_rollout(&self) -> usize {
        self.epochs * self.minibatches
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.rollout_prompts == 0 || self.epochs == 0 || self.minibatches == 0 {
            Some("rollout_prompts, epochs and minibatches must be at least 1".to_string())
        } else if self.samples_per_prompt == 0
            || !self.rollout_prompts.is_multiple_of(self.samples_per_prompt)
        {
            Some(format!(
                "rollout_prompts ({}) must be a multiple of samples_per_prompt ({})",
                self.rollout_prompts, self.samples_per_prompt
            ))
        } else if self.prompt_baseline && self.samples_per_prompt < 2 {
            Some("prompt_baseline needs samples_per_prompt ≥ 2".into())
        } else if self.minibatches > self.rollout_prompts {
            Some(format!(
                "{} minibatches cannot split {} prompts",
                self.minibatches, self.rollout_prompts
            ))
        } else if self.max_new_tokens == 0 {
            Some("max_new_tokens must be at least 1".into())
        } else if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            Some(format!(
                "temperature must be above 0, got {}",
                self.temperature
            ))
        } else if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lambda) {
            Some("gamma and lambda must be in [0, 1]".into())
        } else if !(self.clip_range > 0.0
            && self.value_clip_range > 0.0
            && self.clip_range.is_finite()
            && self.value_clip_range.is_finite())
        {
            Some("the clip ranges must be above 0 and finite".into())
        } else if !(self.kl_control.initial() >= 0.0 && self.kl_control.initial().is_finite()) {
            Some(format!(
                "the KL coefficient must be finite and not negative, got {}",
                self.kl_control.initial()
            ))
        } else if !(self.ptx_coef >= 0.0 && self.ptx_coef.is_finite()) {
            Some(format!(
                "ptx_coef must be finite and not negative, got {}",
                self.ptx_coef
            ))
        } else if self.score_clip.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            Some("score_clip must be above 0 and finite".into())
        } else if self.truncation_penalty.is_some_and(|p| !p.is_finite()) {
            Some("truncation_penalty must be finite".into())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::Config(p)))
    }
}
