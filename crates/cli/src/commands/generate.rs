//! `ember generate`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use burn::tensor::backend::Backend;
use ember_tokenizer::{Special, Tokenizer};
use ember_train::load_model;
use ember_transformer::{generate_streaming, GenerateConfig, Sampling};

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
    /// New tokens per prompt, at most.
    #[arg(long, default_value_t = 100)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only.
    #[arg(long, conflicts_with = "top_p")]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities reach p (nucleus sampling).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the draws: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

impl Args {
    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        match (self.top_k, self.top_p) {
            _ if temperature == 0.0 => Sampling::Greedy,
            (Some(k), _) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (None, None) => Sampling::Temperature { temperature },
        }
    }
}

/// Runs `ember generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    with_backend!(args.device, |B, AD, device| generate_on::<B>(&args, &device))
}

fn generate_on<B: Backend>(args: &Args, device: &B::Device) -> anyhow::Result<()> {
    let tokenizer_path = args.model.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
    let model = load_model::<B>(&args.model, device)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let prompts = if args.prompt.is_empty() { vec![String::new()] } else { args.prompt.clone() };
    let bos = tokenizer.special(Special::Bos)?;
    let encoded = prompts
        .iter()
        .map(|p| {
            let ids = tokenizer.encode(p)?;
            Ok(if ids.is_empty() { vec![bos] } else { ids })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: args.sampling(),
        stop_tokens: vec![tokenizer.special(Special::Eos)?],
        pad_token: tokenizer.special(Special::Pad)?,
        seed: args.seed,
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
