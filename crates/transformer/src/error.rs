//! The crate's error type.

/// Errors that depend on the caller's data rather than on a programming mistake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every target of a batch is masked out, so its mean loss is undefined.
    #[error("every target token of the batch is masked out; the loss would be 0/0")]
    AllMasked,
    /// A sequence does not fit the model's context.
    #[error("a sequence of {len} tokens does not fit the model's context of {max}")]
    TooLong {
        /// Tokens asked for.
        len: usize,
        /// The model's `max_seq_len`.
        max: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// Rows, masks or prompts that do not fit together.
    #[error("invalid input: {0}")]
    Input(String),
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
