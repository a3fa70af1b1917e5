#![doc = include_str!("../README.md")]

mod collect;
mod compare;
mod data;
mod error;
mod eval;
mod folder;
mod interop;
mod pipeline;
mod plot;
mod ppo;
mod pretrain;
mod report;
mod reward;
mod seeds;
pub mod settings;
mod sft;
pub mod stages;
pub mod stats;
mod summary;

pub use collect::{collect, CollectJob, CollectReport, CollectSettings};
pub use compare::{compare, gap_closed, Comparison, Gain, Gains, Paired, PromptScore};
pub use data::{
    export_tasks, read_examples, DemonstrationCounts, Exported, TaskData, TasksSettings,
};
pub use error::{Error, Result};
pub use eval::{score_answers, Answering, FamilyScore, JudgeScores, Scored, WinTieLoss};
pub use folder::{ModelFolder, TEMPLATE_FILE, TOKENIZER_FILE};
pub use interop::{export_model, import_model, ExportFormat, ImportSummary};
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
pub use seeds::{runs_markdown, summarise_runs, write_runs_report, RunResult, Runs};
pub use settings::{ModelSettings, Preset};
pub use sft::{sft, SftSettings, TuneInputs, Tuned};
pub use stages::StageRecord;
pub use summary::{
    evaluate_pipeline, read_answers, read_prompt_scores, EvalInputs, EvalSettings, Policy,
    PolicyEval, RewardAccuracy, SampledAnswers, Summary,
};
