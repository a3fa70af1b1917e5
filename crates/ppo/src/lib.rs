#![doc = include_str!("../README.md")]

mod advantage;
mod error;
mod loss;
pub mod metric;
mod objective;

pub use advantage::{
    explained_variance, gae, shaped_score, token_rewards, whiten, KlControl, KlEstimator,
};
pub use error::{Error, Result};
pub use loss::{entropy, masked_mean, policy_loss, token_logprobs, value_loss, PolicyLoss};
pub use objective::{
    answer_mask, leave_one_out, rollout, rollout_metrics, spread, ActorCritic, Decode, Evaluated,
    Frozen, Judge, Ppo, PpoConfig, Prompt, Sample,
};
