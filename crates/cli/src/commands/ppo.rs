//! `ember ppo`: RLHF — the SFT policy improved with PPO against a reward model, with a KL
//! penalty to the SFT model (stage 4).

use std::path::PathBuf;

use ember_pipeline::settings::for_run;
use ember_pipeline::{ppo, ModelFolder, PpoInputs, PpoSettings, PromptSource};

use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember ppo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SFT model folder: the policy starts here and stays the KL reference.
    #[arg(long)]
    pub policy: PathBuf,
    /// The reward model folder (RUN/model of `ember reward train`).
    #[arg(long)]
    pub reward: PathBuf,
    /// The run folder: checkpoints, metrics, the tuned policy (RUN/model) and its final
    /// answers (RUN/samples.jsonl).
    #[arg(long, default_value = "runs/ppo")]
    pub run: PathBuf,
    /// Prompts to sample from, JSONL of `{"prompt": "…"}` (or a list of messages); without
    /// it, the built-in tasks' training prompts, judged as they go.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Token shards of the pretraining data (RUN/shards of `ember pretrain`) for PPO-ptx.
    #[arg(long)]
    pub ptx_shards: Option<PathBuf>,
    /// A TOML file: `iterations`, `prompts_per_family`, `eval_per_family`, `eval_every`,
    /// `checkpoint_every`, `critic` (reward | zero), `train_top_blocks`, `[ppo]`,
    /// `[optimizer]`, `[ptx_batch]`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the number of rollout batches.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Which backend trains.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// Runs `ember ppo`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut settings: PpoSettings = for_run(&args.run, args.config.as_deref())?;
    if let Some(n) = args.iterations {
        settings.iterations = n;
    }
    let inputs = PpoInputs {
        policy: ModelFolder::new(args.policy),
        reward: ModelFolder::new(args.reward),
        prompts: args.prompts.map_or(PromptSource::Tasks, PromptSource::File),
        ptx_shards: args.ptx_shards,
        run: args.run,
    };
    let done = with_backend!(args.device, |B, AD, device| ppo::<AD>(
        &inputs,
        &settings,
        &device,
        &mut |line| println!("{line}")
    ))?;
    println!("{done}");
    Ok(())
}
