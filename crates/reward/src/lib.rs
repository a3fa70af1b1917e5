#![doc = include_str!("../README.md")]

mod collect;
mod data;
mod error;
mod loss;
pub mod metric;
mod model;
mod train;

pub use collect::{collect_rankings, CollectConfig, CollectPrompt, Collected};
pub use data::{read_rankings, write_rankings, Ranking, Rankings};
pub use error::{Error, Result};
pub use loss::ranking_loss;
pub use model::{
    default_head_std, load_reward_model, save_reward_model, Normalization, Padding, RewardFile,
    RewardModel, ScoreBatch,
};
pub use train::{
    answer_row, encode_rankings, evaluate, score_rankings, score_rows, spearman, EncodedRanking,
    Evaluation, PairStats, RankingConfig, RankingObjective,
};
