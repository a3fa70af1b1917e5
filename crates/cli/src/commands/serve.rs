//! `ember serve`: a model folder behind OpenAI's chat-completions API and a chat page.

use std::path::PathBuf;
use std::time::Duration;

use ember_serve::{EngineConfig, ServeConfig, Server};

use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model folder: any stage's (for example RUN/ppo/model) or one `ember import` wrote.
    #[arg(long)]
    pub model: PathBuf,
    /// The address to listen on. The default answers this machine only; 0.0.0.0 opens it to
    /// the network (then set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every /v1 request. Also read from the
    /// EMBER_API_KEY environment variable.
    #[arg(long)]
    pub api_key: Option<String>,
    /// The model's name in the API (`model` of requests, GET /v1/models) [default: the
    /// folder's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Sequences decoded together in one step, at most. Every answer is bit for bit the one it
    /// would be alone (on cpu).
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Sequences waiting for a place in the batch, at most; beyond, requests get 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// System prompts whose keys and values are kept, so that the conversations that begin
    /// with one skip computing it (0: none kept). Answers are the same either way.
    #[arg(long, default_value_t = 8)]
    pub preambles: usize,
    /// New tokens per answer when a request gives no max_tokens (never past the context).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Request bodies larger than this many bytes get 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// On SIGTERM, seconds the answers in flight get to finish before they are aborted.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// Runs `ember serve` until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("EMBER_API_KEY").ok())
        .filter(|key| !key.is_empty());
    let config = ServeConfig {
        host: args.host.clone(),
        port: args.port,
        api_key,
        model_name: args.name.clone(),
        engine: EngineConfig {
            max_batch: args.max_batch,
            queue: args.queue,
            preambles: args.preambles,
        },
        max_body_bytes: args.max_body_bytes,
        default_max_tokens: args.max_tokens,
        max_n: 8.min(args.queue.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let keyed = config.api_key.is_some();
    with_backend!(args.device, |B, AD, device| {
        eprintln!("loading {} …", args.model.display());
        let server = Server::start::<B>(&args.model, device, config)?;
        let address = server.address();
        eprintln!(
            "serving `{}` on http://{address}  (chat page: http://{address}/ · OpenAI API: \
             http://{address}/v1{}) — Ctrl-C or SIGTERM to stop",
            server.model_name(),
            if keyed { ", key required" } else { "" }
        );
        server.wait_for_signal()?;
        eprintln!("stopped");
        Ok(())
    })
}
