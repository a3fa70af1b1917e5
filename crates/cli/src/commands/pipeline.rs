//! `ember pipeline`: every stage in order on the built-in tasks — data, tokenizer and
//! pretraining, SFT, rankings, reward model, PPO, evaluation — into one run folder, with a
//! report. A finished stage is not redone; an interrupted one resumes from its checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use ember_pipeline::settings::for_run;
use ember_pipeline::{Pipeline, PipelineSettings};

use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember pipeline`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run folder: every stage's folder, the report (`report.md`) and the plots.
    /// Running again with the same folder goes on where it stopped.
    #[arg(long, default_value = "runs/pipeline")]
    pub run: PathBuf,
    /// A TOML file with a table per stage: `[tasks]`, `[pretrain]`, `[sft]`, `[collect]`,
    /// `[reward]`, `[ppo]`, `[eval]` (each as that stage's own `--config`); without one, the
    /// run folder's own `config.toml` (when resuming) or the defaults (about 10 minutes on a
    /// 2-core CPU).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The run's seed: every random choice of every stage derives from it (the data, the
    /// flawed demonstrations, initial weights, batches, sampled answers). Default: the
    /// config's (0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also run PPO with the judge itself as the reward (a perfect reward model): the upper
    /// bound the report quotes beside PPO (about 100 s more on a 2-core CPU). On a run folder
    /// finished without it, add --redo-changed: the upper bound and the evaluation are redone,
    /// the stages before them stay done.
    #[arg(long)]
    pub upper_bound: bool,
    /// Redo the stages whose settings differ from those they ran with (and every stage after
    /// them), deleting their output first. Without it, such a run folder is refused with the
    /// list of changed settings.
    #[arg(long)]
    pub redo_changed: bool,
    /// Which backend runs every stage.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// Runs `ember pipeline`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut settings: PipelineSettings = for_run(&args.run, args.config.as_deref())?;
    if let Some(seed) = args.seed {
        settings.seed = seed;
    }
    settings.upper_bound |= args.upper_bound;
    let pipeline = Pipeline::new(&args.run, settings).redo_changed(args.redo_changed);
    with_backend!(args.device, |B, AD, device| pipeline
        .run::<AD>(&device, &mut |line| println!("{line}")))?;
    println!(
        "\nthe pipeline took {:.1} min this time; the report is {}",
        started.elapsed().as_secs_f64() / 60.0,
        pipeline.folder().report().display()
    );
    Ok(())
}
