//! `ember serve`: an Ember model folder behind OpenAI's chat-completions API, with streaming
//! (server-sent events), continuous batching and a web chat page.
//!
//! ```no_run
//! use ember_serve::{ServeConfig, Server};
//!
//! # fn main() -> ember_serve::Result<()> {
//! let server = Server::start::<burn::backend::Flex>(
//!     "runs/pipeline/ppo/model".as_ref(),
//!     Default::default(),
//!     ServeConfig::default(),
//! )?;
//! println!("listening on http://{}", server.address());
//! server.wait_for_signal() // SIGTERM or Ctrl-C: finish what is in flight, then return
//! # }
//! ```
//!
//! The pieces are public too: [`EngineHandle`] (continuous batching over any burn backend,
//! no HTTP) and [`api`] (the request checks and OpenAI's error object).

pub mod api;
mod engine;
mod error;
mod http;
mod stops;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::backend::Backend;
use ember_pipeline::ModelFolder;

pub use engine::{EngineConfig, EngineHandle, Event, Sequence, Stats, SubmitError};
pub use error::{Error, Result};
pub use stops::{Scanned, StopScanner};

/// How [`Server::start`] serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The address to listen on; loopback unless told otherwise.
    pub host: String,
    /// The port; 0 takes any free one (see [`Server::address`]).
    pub port: u16,
    /// When set, every `/v1` request must send `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The model's name in the API; the folder's name when unset.
    pub model_name: Option<String>,
    /// Batch and queue sizes.
    pub engine: EngineConfig,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: usize,
    /// New tokens per answer when a request does not say (never past the context).
    pub default_max_tokens: usize,
    /// Answers per request (`n`), at most.
    pub max_n: usize,
    /// On shutdown, how long answers in flight may take to finish before they are aborted.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            model_name: None,
            engine: EngineConfig::default(),
            max_body_bytes: 1 << 20,
            default_max_tokens: 512,
            max_n: 8,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The folder's name, or its parent's for a stage's `model` folder (`RUN/ppo/model` → `ppo`).
fn default_name(model: &Path) -> String {
    let path = model.canonicalize().unwrap_or_else(|_| model.to_path_buf());
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(&path) {
        Some(n) if n == "model" => path.parent().and_then(name).unwrap_or(n),
        Some(n) => n,
        None => "ember".into(),
    }
}

/// A running server: the engine thread and the HTTP listener.
pub struct Server {
    address: SocketAddr,
    model: String,
    engine: EngineHandle,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    grace: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads the model folder on `device` and starts listening; returns once requests can
    /// be served.
    ///
    /// # Errors
    /// A folder that does not load, settings that cannot work, an address that cannot be
    /// listened on.
    pub fn start<B: Backend>(model: &Path, device: B::Device, config: ServeConfig) -> Result<Self> {
        if config.max_n == 0 || config.max_n > config.engine.queue.max(1) {
            return Err(Error::Config(format!(
                "max_n must be between 1 and the queue's size ({}), got {}",
                config.engine.queue, config.max_n
            )));
        }
        if config.default_max_tokens == 0 {
            return Err(Error::Config(
                "default_max_tokens must be at least 1".into(),
            ));
        }
        let folder = ModelFolder::new(model);
        let template = folder.template()?;
        let name = config
            .model_name
            .clone()
            .unwrap_or_else(|| default_name(model));
        let stop_tokens = vec![template.stop_token(), template.eos_token()];
        let loader = folder.clone();
        let engine = EngineHandle::start::<B, _>(
            move || loader.load::<B>(&device).map_err(Error::from),
            template.tokenizer().clone(),
            stop_tokens,
            config.engine,
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ember-http")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: "the HTTP runtime".into(),
                source,
            })?;
        let address = format!("{}:{}", config.host, config.port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&address))
            .map_err(|source| Error::Bind {
                address: address.clone(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| Error::Bind {
            address: address.clone(),
            source,
        })?;
        let state = Arc::new(http::AppState {
            engine: engine.clone(),
            template,
            model: name.clone(),
            created: http::unix_time(),
            api_key: config.api_key.clone(),
            max_body_bytes: config.max_body_bytes,
            default_max_tokens: config.default_max_tokens,
            max_n: config.max_n,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(state);
        let served = runtime.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            address: bound,
            model: name,
            engine,
            runtime,
            stop: Some(stop),
            served: Some(served),
            grace: config.shutdown_grace,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The model's name in the API.
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// The engine: its counters, or submissions without HTTP.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Serves until SIGTERM or SIGINT (Ctrl-C), then shuts down as [`Server::shutdown`].
    ///
    /// # Errors
    /// As [`Server::shutdown`], or signals that cannot be listened for.
    pub fn wait_for_signal(self) -> Result<()> {
        let waited = self.runtime.block_on(async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                let mut terminate = signal(SignalKind::terminate())?;
                let mut interrupt = signal(SignalKind::interrupt())?;
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                Ok(())
            }
            #[cfg(not(unix))]
            {
                tokio::signal::ctrl_c().await
            }
        });
        waited.map_err(|source| Error::Io {
            path: "signals".into(),
            source,
        })?;
        self.shutdown()
    }

    /// Stops taking connections and requests (new ones get 503), lets the answers in flight
    /// finish for up to the configured grace period, aborts the rest, and returns when every
    /// connection is closed.
    ///
    /// # Errors
    /// The listener failed while serving.
    pub fn shutdown(mut self) -> Result<()> {
        self.engine.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The engine finishes (or aborts) what is in flight while the runtime's workers keep
        // streaming it; the streams then end, and the graceful shutdown sees their
        // connections close.
        self.engine.shutdown(self.grace);
        let served = self.served.take();
        let result = self.runtime.block_on(async {
            match served {
                Some(served) => tokio::time::timeout(Duration::from_secs(5), served).await,
                None => Ok(Ok(Ok(()))),
            }
        });
        match result {
            Ok(Ok(Err(source))) => Err(Error::Io {
                path: "the HTTP listener".into(),
                source,
            }),
            // A join error (a panicked task) or connections that outlived the grace period:
            // they are closed with the runtime.
            _ => Ok(()),
        }
    }
}
