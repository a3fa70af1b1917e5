//! The crate's error type.

use std::path::PathBuf;

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings that cannot work.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// The model folder could not be loaded.
    #[error(transparent)]
    Model(#[from] ember_pipeline::Error),
    /// The address could not be listened on.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// What was asked for.
        address: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else the operating system refused (a thread, the async runtime).
    #[error("{path}: {source}")]
    Io {
        /// What was being made.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
