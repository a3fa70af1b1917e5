//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong reading rankings or training, evaluating and storing a reward model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A ranking record that does not fit its format (a duplicate or out-of-range rank, an
    /// empty answer, …).
    #[error("{path}:{line}: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 1-based line where the record starts.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A ranking that is not valid, built in code rather than read from a file.
    #[error("invalid ranking: {0}")]
    Ranking(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file that does not parse.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// From the model.
    #[error(transparent)]
    Model(#[from] ember_transformer::Error),
    /// From the training loop or the model files.
    #[error(transparent)]
    Train(#[from] ember_train::Error),
    /// From the chat template or the instruction data.
    #[error(transparent)]
    Instruct(#[from] ember_instruct::Error),
    /// From the tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] ember_tokenizer::Error),
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
}
