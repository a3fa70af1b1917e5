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

/// How [`score_answers`] answers: greedily, or `samples` answers per prompt at `temperature`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answering {
    /// 0 for greedy answers, else the sampling temperature.
    pub temperature: f32,
    /// Answers per prompt (1 when greedy).
    pub samples: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

impl Answering {
    /// One greedy answer per prompt.
    pub const GREEDY: Answering = Answering {
        temperature: 0.0,
        samples: 1,
        seed: 0,
    };

    /// Checks the settings: a temperature ≥ 0, at least one answer, one answer when greedy.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "the temperature must be 0 (greedy) or above, got {}",
            self.temperature
        );
        anyhow::ensure!(self.samples >= 1, "--samples must be at least 1");
        anyhow::ensure!(
            self.temperature > 0.0 || self.samples == 1,
            "greedy answers are all the same: --samples {} needs a --temperature above 0",
            self.samples
        );
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        if self.temperature > 0.0 {
            Sampling::Temperature {
                temperature: self.temperature,
            }
        } else {
            Sampling::Greedy
        }
    }
}

/// Answers `examples` through the chat template as `answering` says and scores each answer
/// with its judge: `answering.samples` rows per example, in the examples' order.
pub fn score_answers<B: Backend>(
    model: &Gpt<B>,
    template: &ChatTemplate,
    tasks: &TaskSet,
    examples: &[Example],
    max_new_tokens: usize,
    batch_size: usize,
    answering: Answering,
) -> anyhow::Result<Vec<Scored>> {
    answering.validate()?;
    let tokenizer = template.tokenizer();
    let stops = vec![template.stop_token(), tokenizer.special(Special::Eos)?];
    let mut config = GenerateConfig {
        max_new_tokens,
        sampling: answering.sampling(),
        stop_tokens: stops.clone(),
        pad_token: tokenizer.special(Special::Pad)?,
        seed: answering.seed,
    };
    let repeated = examples
        .iter()
        .flat_map(|e| std::iter::repeat_n(e, answering.samples))
        .collect::<Vec<_>>();
    let mut scored = Vec::with_capacity(repeated.len());
    for (batch, chunk) in repeated.chunks(batch_size.max(1)).enumerate() {
        config.seed = answering.seed.wrapping_add(batch as u64);
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
                example: (*example).clone(),
                output,
                score,
            });
        }
    }
    Ok(scored)
}

/// The judge's scores of one task family's answers.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct FamilyScore {
    /// The mean score.
    pub mean: f64,
    /// The share of answers scored 1 (right).
    pub accuracy: f64,
    /// Answers scored.
    pub n: usize,
}

/// Per task family, the judge's scores of `scored`; and the mean score over all of them.
pub fn by_family(scored: &[Scored]) -> (BTreeMap<String, FamilyScore>, f64) {
    let mut families: BTreeMap<String, FamilyScore> = BTreeMap::new();
    for s in scored {
        let entry = families.entry(s.example.family.clone()).or_default();
        entry.mean += s.score;
        entry.accuracy += f64::from(u8::from(s.score >= 1.0));
        entry.n += 1;
    }
    for entry in families.values_mut() {
        entry.mean /= entry.n as f64;
        entry.accuracy /= entry.n as f64;
    }
    let mean = scored.iter().map(|s| s.score).sum::<f64>() / scored.len().max(1) as f64;
    (families, mean)
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
        Answering {
            temperature: args.temperature,
            samples: args.samples,
            seed: args.seed,
        },
    )?;
    let (families, mean) = by_family(&scored);
    println!(
        "{:<16} {:>5} {:>12} {:>10}",
        "family", "n", "mean score", "accuracy"
    );
    for (family, s) in &families {
        println!(
            "{family:<16} {:>5} {:>12.3} {:>9.1}%",
            s.n,
            s.mean,
            100.0 * s.accuracy
        );
    }
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
