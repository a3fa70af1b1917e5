//! The crate's error type.

/// What can go wrong in PPO.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// From the model or generation.
    #[error(transparent)]
    Model(#[from] ember_transformer::Error),
    /// From the reward model.
    #[error(transparent)]
    Reward(#[from] ember_reward::Error),
    /// A saved state (in a checkpoint) that is not PPO's.
    #[error("the checkpoint's PPO state does not fit: {0}")]
    State(#[source] serde_json::Error),
    /// From the tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] ember_tokenizer::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for ember_train::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Model(e) => Self::Model(e),
            Error::Tokenizer(e) => Self::Tokenizer(e),
            other => Self::objective(other),
        }
    }
}
