//! The crate's error type.

use std::path::PathBuf;

/// What can stop a stage, the pipeline, the evaluation or the report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A TOML settings file that does not parse, has an unknown key or a wrong type (the
    /// message names the line).
    #[error("{path}: invalid configuration: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parse error, with its line.
        #[source]
        source: toml::de::Error,
    },
    /// A JSON file (summary, timings, metrics) that does not parse.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Settings that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A stage's input that is missing (no data to train a tokenizer on, no ranking left, …).
    #[error("{path}: {reason}")]
    Missing {
        /// The file or folder.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Records longer than the model's context, where every record must fit.
    #[error("{count} record(s) do not fit the model's context of {context} tokens")]
    TooLong {
        /// How many.
        count: usize,
        /// The context length.
        context: usize,
    },
    /// A plot could not be drawn.
    #[error("{path}: drawing the plot failed: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// The drawing backend's message.
        reason: String,
    },
    /// A run folder whose stages ran with other settings than the ones given.
    #[error(
        "{root}: stages done there ran with other settings than these:\n{changes}\n\
         Run in a new folder, run again without --config (the folder's own config.toml), or \
         pass --redo-changed to delete those stages' output and redo them."
    )]
    Changed {
        /// The run folder.
        root: PathBuf,
        /// One line per changed setting, `stage: path: before → now`.
        changes: String,
    },
    /// A pipeline stage failed.
    #[error("stage {stage}: {source}")]
    Stage {
        /// The stage's name.
        stage: &'static str,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// From the tokenizer or the token shards.
    #[error(transparent)]
    Tokenizer(#[from] ember_tokenizer::Error),
    /// From the chat template or the instruction data.
    #[error(transparent)]
    Instruct(#[from] ember_instruct::Error),
    /// From reading or writing another format (GGUF, a Hugging Face folder).
    #[error(transparent)]
    Models(#[from] ember_models::Error),
    /// From the model or generation.
    #[error(transparent)]
    Model(#[from] ember_transformer::Error),
    /// From the training loop or the model files.
    #[error(transparent)]
    Train(#[from] ember_train::Error),
    /// From the reward model.
    #[error(transparent)]
    Reward(#[from] ember_reward::Error),
    /// From PPO.
    #[error(transparent)]
    Ppo(#[from] ember_ppo::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            source,
        }
    }
}
