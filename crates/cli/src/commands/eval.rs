//! `ember eval`: the built-in tasks' held-out prompts through a model, scored by each family's
//! judge.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use burn::tensor::backend::Backend;
use ember_instruct::{ChatTemplate, Conversation, Message};
use ember_tasks::{Example, Split, TaskSet};
use ember_tokenizer::{Special, Tokenizer};
use ember_train::load_model;
use ember_transformer::{generate, GenerateConfig, Gpt, Sampling};

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
    /// Seed of the prompt draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// New tokens per answer, at most.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Write every prompt, answer and score to this JSONL file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// One scored answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    /// The example.
    #[serde(flatten)]
    pub example: Example,
    /// What the model answered.
    pub output: String,
    /// The judge's score.
    pub score: f64,
}

/// Answers `examples` greedily through the chat template and scores each with its judge.
pub fn score_answers<B: Backend>(
    model: &Gpt<B>,
    template: &ChatTemplate,
    tasks: &TaskSet,
    examples: &[Example],
    max_new_tokens: usize,
    batch_size: usize,
) -> anyhow::Result<Vec<Scored>> {
    let tokenizer = template.tokenizer();
    let stops = vec![template.stop_token(), tokenizer.special(Special::Eos)?];
    let config = GenerateConfig {
        max_new_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: stops.clone(),
        pad_token: tokenizer.special(Special::Pad)?,
        seed: 0,
    };
    let mut scored = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|e| template.render_prompt(&Conversation::new(vec![Message::user(&e.prompt)])))
            .collect::<Result<Vec<_>, _>>()?;
        for (example, output) in chunk.iter().zip(generate(model, &prompts, &config)?) {
            let output = tokenizer.decode(output.content())?;
            let score = tasks
                .score(&example.family, &example.prompt, &output)
                .unwrap_or(0.0);
            scored.push(Scored {
                example: example.clone(),
                output,
                score,
            });
        }
    }
    Ok(scored)
}

/// Runs `ember eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    with_backend!(args.device, |B, AD, device| eval_on::<B>(&args, &device))
}

fn eval_on<B: Backend>(args: &Args, device: &B::Device) -> anyhow::Result<()> {
    let template = ChatTemplate::new(Tokenizer::from_file(args.model.join("tokenizer.json"))?)?;
    let model = load_model::<B>(&args.model, device)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let tasks = TaskSet::builtin();
    let examples = tasks.examples(Split::HeldOut, args.per_family, args.seed);
    let scored = score_answers(
        &model,
        &template,
        &tasks,
        &examples,
        args.max_new_tokens,
        args.batch_size,
    )?;
    let mut by_family: BTreeMap<&str, (usize, f64, usize)> = BTreeMap::new();
    for s in &scored {
        let entry = by_family.entry(s.example.family.as_str()).or_default();
        entry.0 += 1;
        entry.1 += s.score;
        entry.2 += usize::from(s.score >= 1.0);
    }
    println!(
        "{:<16} {:>5} {:>12} {:>10}",
        "family", "n", "mean score", "accuracy"
    );
    for (family, (n, total, correct)) in &by_family {
        println!(
            "{family:<16} {n:>5} {:>12.3} {:>9.1}%",
            total / *n as f64,
            100.0 * *correct as f64 / *n as f64
        );
    }
    let mean = scored.iter().map(|s| s.score).sum::<f64>() / scored.len().max(1) as f64;
    println!("{:<16} {:>5} {mean:>12.3}", "all", scored.len());
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
