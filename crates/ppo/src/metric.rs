//! The names of the metrics PPO writes in `metrics.jsonl` (beside the training loop's own,
//! `ember_train::metric`), shared by the writer and the readers.

/// The rollout's (or greedy evaluation's) mean normalised reward-model score.
pub const SCORE: &str = "score";
/// The mean score PPO optimises (after the length penalty and clipping).
pub const SHAPED_SCORE: &str = "shaped_score";
/// The mean KL to the reference, per answer (summed over its tokens).
pub const KL: &str = "kl";
/// The policy's mean entropy per answer token.
pub const ENTROPY: &str = "entropy";
/// The mean answer length in tokens.
pub const ANSWER_TOKENS: &str = "answer_tokens";
/// The share of answers cut off at the length limit.
pub const CUT_OFF: &str = "cut_off";
/// The critic's explained variance of the returns.
pub const EXPLAINED_VARIANCE: &str = "explained_variance";
/// The judge's mean score of the answers (with a judge).
pub const JUDGE: &str = "judge";
/// The share of a rollout's prompts whose answers all got the same judge score: no signal.
pub const JUDGE_TIED: &str = "judge_tied";
/// Over the pairs of answers to one prompt that the judge orders, the share the reward
/// model orders the same way: its accuracy on the policy's own samples, where
/// over-optimisation shows first (1 when the judge is the reward).
pub const REWARD_ACCURACY: &str = "reward_accuracy";
/// The KL coefficient β the rollout was scored with.
pub const KL_COEF: &str = "kl_coef";
/// Seconds the rollout took.
pub const ROLLOUT_SECONDS: &str = "rollout_seconds";
/// Seconds the previous rollout's updates took.
pub const UPDATE_SECONDS: &str = "update_seconds";
/// The clipped policy loss of the minibatch.
pub const POLICY_LOSS: &str = "policy_loss";
/// The clipped value loss of the minibatch.
pub const VALUE_LOSS: &str = "value_loss";
/// The share of answer tokens whose ratio was clipped.
pub const CLIP_FRACTION: &str = "clip_fraction";
/// The share of values clipped.
pub const VALUE_CLIP_FRACTION: &str = "value_clip_fraction";
/// The approximate KL between the sampling and the current policy.
pub const APPROX_KL: &str = "approx_kl";
/// The pretraining loss of PPO-ptx.
pub const PTX_LOSS: &str = "ptx_loss";
