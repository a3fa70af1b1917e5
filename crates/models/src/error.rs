//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a model in another format.
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
    /// A file is not what its format says it should be: a bad magic number, a header that
    /// runs past the end, a tensor that reaches outside the data, an unknown value type.
    #[error("{path}: {message} (at byte {offset})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A tensor is stored in a type this crate cannot decode (a K-quant, for example).
    #[error("{path}: tensor {tensor} is stored as {kind}, which Ember cannot read ({supported})")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its type, as the format names it.
        kind: String,
        /// What can be read.
        supported: &'static str,
    },
    /// The model is of a kind Ember cannot build.
    #[error("{path}: {message}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        message: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: no tensor {tensor}")]
    MissingTensor {
        /// The file or folder.
        path: PathBuf,
        /// The tensor's name in that format.
        tensor: String,
    },
    /// A tensor has another shape than the model's config says.
    #[error("{path}: tensor {tensor} is {found:?}, but the config makes it {expected:?}")]
    Shape {
        /// The file or folder.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shape the config gives.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A metadata key or config field the model needs is missing or of the wrong type.
    #[error("{path}: {key}: {message}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The library's error.
        message: String,
    },
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] ember_tokenizer::Error),
    /// The chat template could not be built.
    #[error(transparent)]
    Instruct(#[from] ember_instruct::Error),
    /// The decoder could not be built.
    #[error(transparent)]
    Transformer(#[from] ember_transformer::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
