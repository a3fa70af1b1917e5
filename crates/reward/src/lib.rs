#![doc = include_str!("../README.md")]

mod collect;
mod data;
mod encode;
mod error;
mod evaluate;
mod loss;
pub mod metric;
mod model;
mod objective;

pub use collect::{collect_rankings, CollectConfig, CollectPrompt, Collected};
pub use data::{parse_rankings, read_rankings, write_rankings, Ranking, Rankings};
pub use encode::{answer_row, encode_rankings, EncodedRanking};
pub use error::{Error, Result};
pub use evaluate::{
    by_family, evaluate, score_rankings, score_rows, spearman, Evaluation, PairStats,
};
pub use loss::ranking_loss;
pub use model::{
    default_head_std, load_reward_model, save_reward_model, Normalization, Padding, RewardModel,
    RewardSidecar, ScoreBatch,
};
pub use objective::{RankingConfig, RankingObjective};
