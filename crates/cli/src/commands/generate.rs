//! `ember generate`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use burn::tensor::backend::Backend;
use ember_tokenizer::{Special, Tokenizer};
use ember_train::load_model;
use ember_transformer::{generate_streaming, GenerateConfig, Sampling};

use crate::config;
use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model folder (`model.json`, `model.mpk`, `tokenizer.json`), as `ember pretrain`
    /// writes into `RUN/model`.
    #[arg(long)]
    pub model: PathBuf,
    /// A prompt; repeat for a batch. Without one, generation starts from the begin-of-text
    /// token.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A TOML file with `max_new_tokens`, `seed` and a `[sampling]` table (`kind = "greedy" |
    /// "temperature" | "top_k" | "top_p"` and its parameters); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// New tokens per prompt, at most [default: 100].
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
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// `ember generate`'s configuration file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateFile {
    /// New tokens per prompt, at most.
    pub max_new_tokens: usize,
    /// How tokens are drawn.
    pub sampling: Sampling,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for GenerateFile {
    fn default() -> Self {
        Self {
            max_new_tokens: 100,
            sampling: Sampling::Temperature { temperature: 0.8 },
            seed: 0,
        }
    }
}

impl Args {
    /// The file's settings with the flags applied on top.
    fn settings(&self) -> anyhow::Result<GenerateFile> {
        let mut settings: GenerateFile = config::load(self.config.as_deref())?;
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

/// Runs `ember generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.settings()?; // Report a bad config before loading anything.
    with_backend!(args.device, |B, AD, device| generate_on::<B>(
        &args, &device
    ))
}

fn generate_on<B: Backend>(args: &Args, device: &B::Device) -> anyhow::Result<()> {
    let tokenizer_path = args.model.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
    let model = load_model::<B>(&args.model, device)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let prompts = if args.prompt.is_empty() {
        vec![String::new()]
    } else {
        args.prompt.clone()
    };
    let bos = tokenizer.special(Special::Bos)?;
    let encoded = prompts
        .iter()
        .map(|p| {
            let ids = tokenizer.encode(p)?;
            Ok(if ids.is_empty() { vec![bos] } else { ids })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = args.settings()?;
    let config = GenerateConfig {
        max_new_tokens: settings.max_new_tokens,
        sampling: settings.sampling,
        stop_tokens: vec![tokenizer.special(Special::Eos)?],
        pad_token: tokenizer.special(Special::Pad)?,
        seed: settings.seed,
    };

    if encoded.len() == 1 {
        // One prompt: stream the text as it is generated.
        let mut stdout = std::io::stdout();
        write!(stdout, "{}", prompts[0])?;
        let mut ids = Vec::new();
        let mut shown = 0;
        generate_streaming(&model, &encoded, &config, |_, token| {
            ids.push(token);
            if let Ok(text) = tokenizer.decode(&ids) {
                // Wait for a whole character before printing (a byte-level token may split one).
                if !text.ends_with('\u{fffd}') && text.len() > shown {
                    let _ = write!(stdout, "{}", &text[shown..]);
                    let _ = stdout.flush();
                    shown = text.len();
                }
            }
        })?;
        writeln!(stdout)?;
        return Ok(());
    }
    let outputs = generate_streaming(&model, &encoded, &config, |_, _| {})?;
    for (prompt, output) in prompts.iter().zip(outputs) {
        println!("--- {prompt}");
        println!("{prompt}{}", tokenizer.decode(&output.tokens)?);
    }
    Ok(())
}
