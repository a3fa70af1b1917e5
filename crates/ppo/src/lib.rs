#![doc = include_str!("../README.md")]

mod actor_critic;
mod advantage;
mod config;
mod error;
mod kl;
mod loss;
pub mod metric;
mod objective;
mod rollout;
mod sample;

pub use actor_critic::ActorCritic;
pub use advantage::{explained_variance, gae, shaped_score, token_rewards, whiten};
pub use config::PpoConfig;
pub use error::{Error, Result};
pub use kl::{KlControl, KlEstimator};
pub use loss::{entropy, masked_mean, policy_loss, token_logprobs, value_loss, PolicyLoss};
pub use objective::{Evaluated, Ppo, PpoData};
pub use rollout::{leave_one_out, rollout, rollout_metrics, Environment, RolloutInputs};
pub use sample::{answer_mask, spread, Decode, Judge, Prompt, Sample};
