#![doc = include_str!("../README.md")]

mod collect;
mod data;
mod error;
mod eval;
mod folder;
mod pipeline;
mod plot;
mod ppo;
mod pretrain;
mod report;
mod reward;
pub mod settings;
mod sft;
mod summary;

pub use collect::{collect, CollectJob, CollectReport, CollectSettings};
pub use data::{export_tasks, read_examples, Exported, TaskData, TasksSettings};
pub use error::{Error, Result};
pub use eval::{score_answers, Answering, FamilyScore, JudgeScores, Scored, WinTieLoss};
pub use folder::{ModelFolder, TOKENIZER_FILE};
pub use pipeline::{Decision, Pipeline, PipelineSettings, RunFolder, Stage, Timings};
pub use plot::{write_svg, Chart, Series};
pub use ppo::{
    file_prompts, ppo, task_judge, task_prompts, CriticInit, PpoInputs, PpoSettings, PpoTrained,
    PromptSource,
};
pub use pretrain::{describe, pretrain, PretrainInputs, PretrainSettings, Pretrained};
pub use report::{markdown, write_report, Metrics, ReportInputs, RolloutStats};
pub use reward::{
    evaluate_reward_model, evaluation_table, load_rankings, score_answers_with, train_reward_model,
    NormalizationKind, RewardEvaluation, RewardSettings, RewardTrained,
};
pub use settings::{ModelSettings, Preset};
pub use sft::{sft, SftSettings, TuneInputs, Tuned};
pub use summary::{
    evaluate_pipeline, read_answers, EvalInputs, EvalSettings, Policy, PolicyEval, RewardAccuracy,
    SampledAnswers, Summary,
};
