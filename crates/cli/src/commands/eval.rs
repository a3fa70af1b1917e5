//! `ember eval`: the built-in tasks' held-out prompts through a model, scored by each family's
//! judge.

use std::path::PathBuf;

use anyhow::Context as _;

use ember_pipeline::{score_answers, Answering, JudgeScores, ModelFolder};
use ember_tasks::{Split, TaskSet};

use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model folder (`model.json`, `model.mpk`, `tokenizer.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// Held-out prompts per task family.
    #[arg(long, default_value_t = 20)]
    pub per_family: usize,
    /// Seed of the prompt draw and of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// New tokens per answer, at most.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Sample the answers at this temperature instead of answering greedily (0, the
    /// default). PPO optimises the judge's expected score at its sampling temperature: this
    /// measures it.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Answers per prompt, with `--temperature`; the scores are averaged over all of them.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Write every prompt, answer and score to this JSONL file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Replace `--output` if it exists.
    #[arg(long)]
    pub force: bool,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// Runs `ember eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(output) = &args.output {
        super::refuse_to_replace(output, args.force)?;
    }
    let answering = Answering {
        temperature: args.temperature,
        samples: args.samples,
        seed: args.seed,
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size,
    };
    answering.validate().with_context(|| {
        format!(
            "--samples {} with --temperature {}",
            args.samples, args.temperature
        )
    })?;
    let folder = ModelFolder::new(&args.model);
    let template = folder.template()?;
    let tasks = TaskSet::builtin();
    let examples = tasks.examples(Split::HeldOut, args.per_family, args.seed);
    let scored = with_backend!(args.device, |B, AD, device| {
        let model = folder.load::<B>(&device)?;
        anyhow::Ok(score_answers(
            &model, &template, &tasks, &examples, &answering,
        )?)
    })?;
    let scores = JudgeScores::of(&scored);
    println!(
        "{:<16} {:>5} {:>12} {:>10}",
        "family", "n", "mean score", "accuracy"
    );
    for (family, s) in &scores.families {
        println!(
            "{family:<16} {:>5} {:>12.3} {:>9.1}%",
            s.n,
            s.mean,
            100.0 * s.accuracy
        );
    }
    println!("{:<16} {:>5} {:>12.3}", "all", scores.n, scores.mean);
    if let Some(path) = &args.output {
        let lines = scored
            .iter()
            .map(|s| serde_json::to_string(s).map(|l| l + "\n"))
            .collect::<Result<String, _>>()?;
        ember_tokenizer::write_atomically(path, lines.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
