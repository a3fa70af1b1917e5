//! `ember sft`: supervised instruction tuning of a pretrained model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_instruct::{read, ChatTemplate, Conversation, OnError, Rendered};
use ember_tokenizer::{Special, Tokenizer};
use ember_train::{fit, load_model, save_model, RunDir, Sft, SftConfig, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember sft`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pretrained model folder (`model.json`, `model.mpk`, `tokenizer.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// Conversations to learn from: messages JSONL, prompt–completion JSONL, Alpaca or ShareGPT.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out conversations; without it, `val_fraction` of `--data` is held out.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// The run folder: checkpoints, metrics and the tuned model (in RUN/model).
    #[arg(long, default_value = "runs/sft")]
    pub run: PathBuf,
    /// A TOML file with `val_fraction`, `[batch]` (SftConfig) and `[train]` tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which backend trains.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Stop at the first malformed record instead of skipping and counting them.
    #[arg(long)]
    pub strict: bool,
}

/// `ember sft`'s configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftFile {
    /// Share of `--data` held out when no `--val` file is given.
    pub val_fraction: f64,
    /// Rows and packing.
    pub batch: SftConfig,
    /// The loop; a lower peak rate than pretraining, as fine-tuning starts from trained weights.
    pub train: TrainConfig,
}

impl Default for SftFile {
    fn default() -> Self {
        let mut train = TrainConfig {
            steps: 200,
            ..Default::default()
        };
        train.optimizer.lr = 3e-4;
        train.optimizer.warmup_steps = 10;
        Self {
            val_fraction: 0.1,
            batch: SftConfig::default(),
            train,
        }
    }
}

fn load(path: &Path, strict: bool) -> anyhow::Result<Vec<Conversation>> {
    let data = read(
        path,
        None,
        if strict { OnError::Stop } else { OnError::Skip },
    )?;
    if !data.skipped.is_empty() {
        println!(
            "skipped {} malformed record(s) in {}; the first: {}",
            data.skipped.len(),
            path.display(),
            data.skipped[0]
        );
    }
    Ok(data.conversations)
}

/// Runs `ember sft`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = config::for_run(
        &args.run,
        args.config.as_deref(),
        |settings: &mut SftFile| {
            if let Some(steps) = args.steps {
                settings.train.steps = steps;
            }
        },
    )?;
    if !(0.0..1.0).contains(&settings.val_fraction) {
        bail!(
            "val_fraction must be in [0, 1), got {}",
            settings.val_fraction
        );
    }

    let tokenizer = Tokenizer::from_file(args.model.join("tokenizer.json"))?;
    let template = ChatTemplate::new(tokenizer.clone())?;
    let mut train = load(&args.data, args.strict)?;
    let val = match &args.val {
        Some(path) => load(path, args.strict)?,
        None => {
            let (kept, held) = config::hold_out(train, settings.val_fraction);
            train = kept;
            held
        }
    };
    let render = |conversations: &[Conversation]| -> anyhow::Result<Vec<Rendered>> {
        conversations
            .iter()
            .map(|c| Ok(template.render(c)?))
            .collect()
    };
    let (train, val) = (render(&train)?, render(&val)?);
    println!(
        "{} training and {} validation conversations",
        train.len(),
        val.len()
    );
    let pad = tokenizer.special(Special::Pad)?;
    with_backend!(args.device, |B, AD, device| {
        tune::<AD>(&args, &settings, &tokenizer, &train, &val, pad, &device)
    })
}

fn tune<B: AutodiffBackend>(
    args: &Args,
    settings: &SftFile,
    tokenizer: &Tokenizer,
    train: &[Rendered],
    val: &[Rendered],
    pad: u32,
    device: &B::Device,
) -> anyhow::Result<()> {
    let model = load_model::<B>(&args.model, device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut objective = Sft::<B>::new(train, val, pad, settings.batch.clone(), device)?;
    let before = objective.evaluate(&model.valid())?;
    println!("validation answer loss before tuning: {before:.4}");
    let (model, summary) = fit(
        model,
        &mut objective,
        &settings.train,
        &RunDir::new(&args.run),
    )?;
    let shown = summary
        .validation
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>();
    println!(
        "validation: {}   ({:.0} answer tokens/s)",
        shown.join("  "),
        summary.tokens_per_second
    );
    let out = args.run.join("model");
    save_model(&model.valid(), &out)?;
    tokenizer.save(out.join("tokenizer.json"))?;
    println!("wrote the tuned model to {}", out.display());
    Ok(())
}
