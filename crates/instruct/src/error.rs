//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong reading or rendering instruction data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record that does not fit its format.
    #[error("{path}:{line}: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 1-based line where the record starts.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// From the tokenizer (an unknown special token, for example).
    #[error(transparent)]
    Tokenizer(#[from] ember_tokenizer::Error),
    /// A conversation that cannot be rendered for training or generation.
    #[error("invalid conversation: {0}")]
    Conversation(String),
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
