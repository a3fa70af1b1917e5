//! What `generate` and `chat` share: the sampling flags with their TOML file, and printing
//! tokens as they stream.

use std::io::Write as _;
use std::path::PathBuf;

use ember_tokenizer::{TextStream, Tokenizer};
use ember_transformer::Sampling;

use ember_pipeline::settings;

/// Sampling flags; they override the `--config` file.
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// A TOML file with `max_new_tokens`, `seed` and a `[sampling]` table (`kind = "greedy" |
    /// "temperature" | "top_k" | "top_p"` and its parameters); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// New tokens per answer, at most [default: 100].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 means greedy [default: 0.8].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample among the k most likely tokens only.
    #[arg(long, conflicts_with = "top_p")]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities reach p (nucleus sampling).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the draws: the same seed gives the same text [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The sampling configuration file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingFile {
    /// New tokens per answer, at most.
    pub max_new_tokens: usize,
    /// How tokens are drawn.
    pub sampling: Sampling,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for SamplingFile {
    fn default() -> Self {
        Self {
            max_new_tokens: 100,
            sampling: Sampling::Temperature { temperature: 0.8 },
            seed: 0,
        }
    }
}

impl SamplingArgs {
    /// The file's settings with the flags applied on top.
    pub fn settings(&self) -> anyhow::Result<SamplingFile> {
        let mut settings: SamplingFile = settings::load(self.config.as_deref())?;
        if let Some(n) = self.max_new_tokens {
            settings.max_new_tokens = n;
        }
        if let Some(seed) = self.seed {
            settings.seed = seed;
        }
        if self.temperature.is_some() || self.top_k.is_some() || self.top_p.is_some() {
            let temperature = self.temperature.unwrap_or(settings.sampling.temperature());
            settings.sampling = match (self.top_k, self.top_p) {
                _ if temperature == 0.0 => Sampling::Greedy,
                (Some(k), _) => Sampling::TopK { k, temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature },
                (None, None) => Sampling::Temperature { temperature },
            };
        }
        settings.sampling.validate()?;
        Ok(settings)
    }
}

/// Prints generated text as it streams, a whole character at a time (a byte-level token may
/// hold part of one).
pub struct StreamPrinter<'a> {
    stream: TextStream<'a>,
}

impl<'a> StreamPrinter<'a> {
    /// A printer for one answer.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            stream: tokenizer.decode_stream(true),
        }
    }

    /// Adds a token and prints whatever whole text it completes.
    pub fn push(&mut self, token: u32) {
        if let Ok(Some(text)) = self.stream.step(token) {
            let mut stdout = std::io::stdout();
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
        }
    }
}
