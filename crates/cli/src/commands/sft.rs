//! `ember sft`: supervised instruction tuning of a pretrained model.

use std::path::PathBuf;

use ember_instruct::OnError;
use ember_pipeline::settings::for_run;
use ember_pipeline::{sft, ModelFolder, SftSettings, TuneInputs};

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

/// [`OnError`] from `--strict`.
pub fn on_error(strict: bool) -> OnError {
    if strict {
        OnError::Stop
    } else {
        OnError::Skip
    }
}

/// Runs `ember sft`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut settings: SftSettings = for_run(&args.run, args.config.as_deref())?;
    if let Some(steps) = args.steps {
        settings.train.steps = steps;
    }
    let inputs = TuneInputs {
        model: ModelFolder::new(args.model),
        data: args.data,
        val: args.val,
        run: args.run,
        on_error: on_error(args.strict),
    };
    let done = with_backend!(args.device, |B, AD, device| sft::<AD>(
        &inputs,
        &settings,
        &device,
        &mut |line| println!("{line}")
    ))?;
    println!("{done}");
    Ok(())
}
