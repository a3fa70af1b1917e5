//! The crate's error type.

use std::path::PathBuf;

/// Everything that can stop a training run.
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
    /// A checkpoint or model file could not be read or written by burn's recorder.
    #[error("{path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// burn's message.
        reason: String,
    },
    /// A JSON file (state, config, metrics) could not be parsed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A file of a model folder or a checkpoint is not what was written: missing, truncated,
    /// corrupted or edited (see `manifest.json`).
    #[error("{path}: damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A model's config describes tensors of other shapes than its weights hold.
    #[error(
        "{config} does not describe the saved weights: tensor `{tensor}` is {expected} in the \
         model it describes but {saved} in the weights"
    )]
    ShapeMismatch {
        /// The config file (`model.json`).
        config: PathBuf,
        /// The tensor's path in the model.
        tensor: String,
        /// Its shape in the model the config builds.
        expected: String,
        /// Its shape in the saved weights.
        saved: String,
    },
    /// Saved weights hold a NaN or an infinity.
    #[error("{path}: tensor `{tensor}` holds NaN or infinite values; the model is not loaded")]
    NonFinite {
        /// The weights' file.
        path: PathBuf,
        /// The tensor's path in the model.
        tensor: String,
    },
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The device could not finish its queued work.
    #[error("device sync failed: {0}")]
    Device(String),
    /// An objective's own error (the reward model's, PPO's), its source kept: downcast it to
    /// the objective crate's `Error` to tell what happened.
    #[error(transparent)]
    Objective(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The loss, or the gradients' norm, became NaN or infinite.
    #[error(
        "the loss or its gradients diverged to {loss} at step {step}; lower the learning rate"
    )]
    Diverged {
        /// The optimizer step.
        step: usize,
        /// The loss.
        loss: f64,
    },
    /// From the model.
    #[error(transparent)]
    Model(#[from] ember_transformer::Error),
    /// From the tokenizer or the token shards.
    #[error(transparent)]
    Tokenizer(#[from] ember_tokenizer::Error),
    /// From the instruction data.
    #[error(transparent)]
    Instruct(#[from] ember_instruct::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an objective's own error.
    pub fn objective(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Objective(Box::new(error))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
