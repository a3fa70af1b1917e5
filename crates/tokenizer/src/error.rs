//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while training, loading or using a tokenizer, or while
/// turning a corpus into token shards.
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
    /// A text file is not valid UTF-8.
    #[error("{path}: not valid UTF-8 (first bad byte at offset {offset})")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The corpus holds no text at all.
    #[error("the corpus {paths:?} holds no text")]
    EmptyCorpus {
        /// The files and folders that were given.
        paths: Vec<PathBuf>,
    },
    /// A `tokenizer.json` could not be read, parsed or written.
    #[error("tokenizer {path}: {source}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The error from HF `tokenizers`.
        #[source]
        source: tokenizers::Error,
    },
    /// Training, encoding or decoding failed inside HF `tokenizers`.
    #[error("{context}: {source}")]
    Codec {
        /// What was being done.
        context: &'static str,
        /// The error from HF `tokenizers`.
        #[source]
        source: tokenizers::Error,
    },
    /// The tokenizer has no token with this special name.
    #[error("unknown special token {token:?}: the tokenizer's vocabulary does not contain it")]
    UnknownSpecialToken {
        /// The token text, for example `<|pad|>`.
        token: String,
    },
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A token shard is damaged or was written by something else.
    #[error("{path}: not an Ember token shard ({reason})")]
    BadShard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
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
