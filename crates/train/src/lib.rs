#![doc = include_str!("../README.md")]

mod alloc;
mod checkpoint;
mod config;
mod error;
pub mod integrity;
mod metrics;
mod model_io;
mod order;
mod params;
mod pretrain;
mod sft;
mod trainer;

pub use alloc::keep_freed_memory;
pub use checkpoint::{latest_checkpoint, load_record, save_record, TrainState};
pub use config::{OptimizerConfig, TrainConfig};
pub use error::{Error, Result};
pub use metrics::{metric, MetricLine, MetricsLog};
pub use model_io::{load_model, load_model_config, save_model};
pub use order::EpochOrder;
pub use params::{clip_global_norm, global_grad_norm, split_grads, DecayGroups};
pub use pretrain::{PretrainConfig, Pretraining};
pub use sft::{RowBatch, Sft, SftConfig};
pub use trainer::{fit, FitSummary, Loss, MicroBatch, Objective, RunDir};
