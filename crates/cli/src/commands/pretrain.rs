//! `ember pretrain`: tokenizer, token shards, training and a sample, in one run folder that
//! an interrupted run resumes from.

use std::path::PathBuf;

use ember_pipeline::settings::for_run;
use ember_pipeline::{pretrain, Error, Preset, PretrainInputs, PretrainSettings};

use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember pretrain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Text files or folders to train on. Not needed to resume a run whose shards exist.
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// An existing `tokenizer.json` to use instead of training one on the data.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The run folder: tokenizer, shards, checkpoints, metrics and the final model go here.
    /// Running again with the same folder resumes from its last checkpoint.
    #[arg(long, default_value = "runs/pretrain")]
    pub run: PathBuf,
    /// A TOML file with `[model]`, `[tokenizer]`, `[shards]`, `[batch]` and `[train]` tables;
    /// without one, the run folder's own `config.toml` (when resuming) or the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which backend trains.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the model preset.
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,
}

/// A model preset on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PresetArg {
    /// 4 layers × 128 wide, ~1M parameters besides the embedding: minutes on a CPU.
    Tiny,
    /// 6 layers × 256 wide.
    Small,
    /// GPT-2 small, 124M parameters: a GPU's job.
    #[value(name = "gpt2-small")]
    Gpt2Small,
}

impl From<PresetArg> for Preset {
    fn from(preset: PresetArg) -> Self {
        match preset {
            PresetArg::Tiny => Preset::Tiny,
            PresetArg::Small => Preset::Small,
            PresetArg::Gpt2Small => Preset::Gpt2Small,
        }
    }
}

/// Runs `ember pretrain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut settings: PretrainSettings = for_run(&args.run, args.config.as_deref())?;
    if let Some(steps) = args.steps {
        settings.train.steps = steps;
    }
    if let Some(preset) = args.preset {
        settings.model.preset = preset.into();
    }
    let no_data = args.data.is_empty();
    let inputs = PretrainInputs {
        data: args.data,
        tokenizer: args.tokenizer,
        run: args.run,
    };
    let done = with_backend!(args.device, |B, AD, device| pretrain::<AD>(
        &inputs,
        &settings,
        &device,
        &mut |line| println!("{line}")
    ))
    .map_err(|error| match error {
        Error::Missing { .. } if no_data => anyhow::anyhow!("--data is required: {error}"),
        other => other.into(),
    })?;
    println!("{done}");
    Ok(())
}
