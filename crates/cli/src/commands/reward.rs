//! `ember reward`: collect rankings from the SFT model, train a reward model on them,
//! evaluate it and score answers with it (stage 3).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ember_instruct::{ChatTemplate, Conversation, Message, OnError};
use ember_reward::{
    answer_row, collect_rankings, default_head_std, encode_rankings, load_reward_model,
    read_rankings, save_reward_model, score_rankings, score_rows, write_rankings, CollectConfig,
    CollectPrompt, EncodedRanking, Evaluation, Normalization, Ranking, RankingConfig,
    RankingObjective, RewardModel,
};
use ember_tasks::{Split, TaskSet};
use ember_tokenizer::{Special, Tokenizer};
use ember_train::{fit, load_model, RunDir, TrainConfig};
use ember_transformer::Sampling;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::device::{with_backend, DeviceKind};

/// `ember reward`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sample K answers per built-in task prompt from the SFT model, rank them with the tasks'
    /// judge (optionally noisy) and write K-way rankings as JSONL.
    Collect(CollectArgs),
    /// Train a reward model from an SFT model on rankings (K-way or pairwise JSONL).
    Train(TrainArgs),
    /// Pairwise accuracy and margin of a reward model on rankings, by K, and its rank
    /// correlation with the labeler's scores.
    Eval(EvalArgs),
    /// Score answers with a reward model (normalised, and raw).
    Score(ScoreArgs),
}

/// Runs `ember reward`.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Collect(args) => collect(args),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Score(args) => score(args),
    }
}

/// Which prompts to collect on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// Prompts training may see (for the reward model's training data).
    Train,
    /// The held-out prompts (for evaluation).
    Heldout,
}

/// Arguments of `ember reward collect`.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// The SFT model folder that answers.
    #[arg(long)]
    pub model: PathBuf,
    /// The JSONL file to write.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Which prompts.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Prompts per task family.
    #[arg(long, default_value_t = 40)]
    pub per_family: usize,
    /// Answers per prompt (K).
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Sampling temperature of the answers.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// New tokens per answer, at most.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Standard deviation of Gaussian noise on the judge's scores before ranking (labelers
    /// who disagree); 0 ranks exactly by the judge.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// Weight of the tie-break by closeness to the reference answer (1 − edit distance over
    /// length), added to the judge's score: wrong answers are ranked by how near they come
    /// instead of tied. Below 0.1 it never reverses the judge's order; 0 (the default) turns it
    /// off (see docs/reward-model.md for what it did to a small reward model).
    #[arg(long, default_value_t = 0.0)]
    pub closeness: f64,
    /// Rank the task's expert answer (the SFT demonstration) among the K sampled answers,
    /// as Stiennon et al. (2020) rank human-written reference summaries among the policies'
    /// samples: every prompt then has a right answer to compare the policy's against.
    #[arg(long)]
    pub demonstrations: bool,
    /// Seed of the prompts, the answers and the noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Which backend generates.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

fn collect(args: CollectArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, AD, device| collect_on::<B>(&args, &device))
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what}  [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("valid template"),
    );
    bar
}

fn collect_on<B: Backend>(args: &CollectArgs, device: &B::Device) -> anyhow::Result<()> {
    if !(0.0..0.1).contains(&args.closeness) {
        bail!(
            "--closeness {} would reorder the judge's levels: use a weight in [0, 0.1)",
            args.closeness
        );
    }
    let template = ChatTemplate::new(Tokenizer::from_file(args.model.join("tokenizer.json"))?)?;
    let policy = load_model::<B>(&args.model, device)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    let tasks = TaskSet::builtin();
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Heldout => Split::HeldOut,
    };
    let examples = tasks.examples(split, args.per_family, args.seed);
    let prompts = examples
        .iter()
        .map(|e| CollectPrompt {
            prompt: Conversation::new(vec![Message::user(&e.prompt)]),
            family: Some(e.family.clone()),
            demonstration: args.demonstrations.then(|| e.answer.clone()),
        })
        .collect::<Vec<_>>();
    let sampling = if args.temperature == 0.0 {
        bail!("collecting needs different answers per prompt: use a temperature above 0");
    } else {
        Sampling::Temperature {
            temperature: args.temperature,
        }
    };
    let config = CollectConfig {
        k: args.k,
        max_new_tokens: args.max_new_tokens,
        sampling,
        seed: args.seed,
        noise: args.noise,
        ..Default::default()
    };
    let progress = bar((prompts.len() * args.k) as u64, "answers");
    let collected = collect_rankings(
        &policy,
        &template,
        &prompts,
        &config,
        |i, answer| {
            let e = &examples[i];
            tasks
                .label(&e.family, &e.prompt, answer, args.closeness)
                .unwrap_or(0.0)
        },
        |n| progress.inc(n as u64),
    )?;
    progress.finish_and_clear();
    write_rankings(&args.output, &collected.rankings)?;
    println!(
        "{} prompts × {} answers{}: wrote {} rankings to {} ({} left out with every answer tied, {} empty answers dropped)",
        prompts.len(),
        args.k,
        if collected.demonstrations > 0 {
            format!(" and {} demonstrations", collected.demonstrations)
        } else {
            String::new()
        },
        collected.rankings.len(),
        args.output.display(),
        collected.all_tied,
        collected.empty_answers
    );
    Ok(())
}

/// How the trained model's scores are normalised on the SFT policy's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Raw scores.
    None,
    /// A bias: mean 0.
    Mean,
    /// A bias and a gain: mean 0, std 1.
    MeanStd,
}

/// `ember reward train`'s configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardTrainFile {
    /// Share of `--data` held out when no `--val` file is given.
    pub val_fraction: f64,
    /// Standard deviation of the head's initial weights; `1/√(d_model + 1)` when left out.
    pub head_std: Option<f64>,
    /// The normalisation fitted on the training answers (the SFT policy's samples).
    pub normalize: Normalize,
    /// Add a learned multiple of the answer's mean log-likelihood under the trunk's own
    /// language-model head to the score (see docs/reward-model.md).
    pub likelihood: bool,
    /// The initial weight of that term.
    pub likelihood_weight: f64,
    /// Prompts per batch, margin, seed.
    pub batch: RankingConfig,
    /// The loop.
    pub train: TrainConfig,
}

impl Default for RewardTrainFile {
    fn default() -> Self {
        let mut train = TrainConfig {
            steps: 150,
            eval_every: std::num::NonZeroUsize::new(50),
            checkpoint_every: std::num::NonZeroUsize::new(50),
            ..Default::default()
        };
        train.optimizer.lr = 3e-4;
        train.optimizer.warmup_steps = 10;
        Self {
            val_fraction: 0.1,
            head_std: None,
            normalize: Normalize::MeanStd,
            likelihood: false,
            likelihood_weight: 1.0,
            batch: RankingConfig::default(),
            train,
        }
    }
}

/// Arguments of `ember reward train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The SFT model folder the reward model starts from.
    #[arg(long)]
    pub model: PathBuf,
    /// Rankings to learn from (K-way or pairwise JSONL, see `ember reward collect`).
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out rankings; without it, `val_fraction` of `--data` is held out.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// The run folder: checkpoints, metrics and the reward model (in RUN/model).
    #[arg(long, default_value = "runs/reward")]
    pub run: PathBuf,
    /// A TOML file with `val_fraction`, `head_std`, `normalize` (none | mean | mean_std),
    /// `likelihood` (add the answer's mean log-likelihood term), `likelihood_weight`,
    /// `[batch]` and `[train]` tables.
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

fn load_rankings(path: &Path, strict: bool) -> anyhow::Result<Vec<Ranking>> {
    let read = read_rankings(path, if strict { OnError::Stop } else { OnError::Skip })?;
    if !read.skipped.is_empty() {
        println!(
            "skipped {} malformed record(s) in {}; the first: {}",
            read.skipped.len(),
            path.display(),
            read.skipped[0]
        );
    }
    if read.rankings.is_empty() {
        bail!("{}: no ranking to use", path.display());
    }
    Ok(read.rankings)
}

fn encode(
    template: &ChatTemplate,
    rankings: &[Ranking],
    max_len: usize,
    path: &Path,
) -> anyhow::Result<Vec<EncodedRanking>> {
    let (encoded, too_long) = encode_rankings(template, rankings, max_len)?;
    if too_long > 0 {
        println!(
            "left out {too_long} ranking(s) of {} with an answer longer than the model's context ({max_len} tokens)",
            path.display()
        );
    }
    Ok(encoded)
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let settings = config::for_run(
        &args.run,
        args.config.as_deref(),
        |settings: &mut RewardTrainFile| {
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
    with_backend!(args.device, |B, AD, device| train_on::<AD>(
        &args, &settings, &device
    ))
}

fn print_evaluation(eval: &Evaluation) {
    println!(
        "{:<10} {:>9} {:>7} {:>10} {:>12}",
        "K", "rankings", "pairs", "accuracy", "mean margin"
    );
    for (k, s) in &eval.by_k {
        println!(
            "{k:<10} {:>9} {:>7} {:>9.1}% {:>12.3}",
            s.rankings,
            s.pairs,
            100.0 * s.accuracy,
            s.mean_margin
        );
    }
    let s = eval.overall;
    println!(
        "{:<10} {:>9} {:>7} {:>9.1}% {:>12.3}",
        "all",
        s.rankings,
        s.pairs,
        100.0 * s.accuracy,
        s.mean_margin
    );
    if let (Some(pooled), Some(within)) = (eval.spearman, eval.spearman_within) {
        println!(
            "rank correlation (Spearman) with the labeler's scores: {within:.3} within prompts, {pooled:.3} pooled over prompts"
        );
    }
}

fn train_on<B: AutodiffBackend>(
    args: &TrainArgs,
    settings: &RewardTrainFile,
    device: &B::Device,
) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(args.model.join("tokenizer.json"))?;
    let template = ChatTemplate::new(tokenizer.clone())?;
    let pad = tokenizer.special(Special::Pad)?;
    let trunk = load_model::<B>(&args.model, device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let max_len = trunk.config().max_seq_len;
    let mut train = load_rankings(&args.data, args.strict)?;
    let val = match &args.val {
        Some(path) => load_rankings(path, args.strict)?,
        None => {
            let (kept, held) = config::hold_out(train, settings.val_fraction);
            train = kept;
            held
        }
    };
    let train = encode(&template, &train, max_len, &args.data)?;
    let val = encode(
        &template,
        &val,
        max_len,
        args.val.as_ref().unwrap_or(&args.data),
    )?;
    println!(
        "{} training and {} validation rankings",
        train.len(),
        val.len()
    );
    let head_std = settings
        .head_std
        .unwrap_or_else(|| default_head_std(trunk.config().d_model));
    let mut model = RewardModel::new(trunk, head_std);
    if settings.likelihood {
        model = model.with_likelihood(template.answer_start_token(), settings.likelihood_weight);
    }
    let mut objective =
        RankingObjective::<B>::new(train, val, pad, settings.batch.clone(), device)?;
    let (model, summary) = fit(
        model,
        &mut objective,
        &settings.train,
        &RunDir::new(&args.run),
    )?;
    let model = model.valid();
    let raw = score_rankings(
        &model,
        objective.train(),
        pad,
        settings.batch.eval_batch_size,
    )?
    .concat();
    let normalization = match settings.normalize {
        Normalize::None => Normalization::default(),
        Normalize::Mean => Normalization::fit(&raw, false)?,
        Normalize::MeanStd => Normalization::fit(&raw, true)?,
    };
    println!(
        "normalisation on the {} training answers: score = {:.4} × raw + {:.4}",
        raw.len(),
        normalization.gain,
        normalization.bias
    );
    if let Some((weight, _)) = model.likelihood() {
        println!(
            "likelihood term: raw score = head + {weight:.4} × mean log-probability of the answer"
        );
    }
    if !objective.val().is_empty() {
        let scores = score_rankings(&model, objective.val(), pad, settings.batch.eval_batch_size)?;
        println!("held-out rankings (raw scores):");
        print_evaluation(&Evaluation::new(objective.val(), &scores));
    }
    let out = args.run.join("model");
    save_reward_model(&model, normalization, &out)?;
    tokenizer.save(out.join("tokenizer.json"))?;
    println!(
        "wrote the reward model to {} ({:.0} pairs/s)",
        out.display(),
        summary.tokens_per_second
    );
    Ok(())
}

/// Arguments of `ember reward eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The reward model folder (RUN/model of `ember reward train`).
    #[arg(long)]
    pub model: PathBuf,
    /// Rankings to evaluate on (K-way or pairwise JSONL).
    #[arg(long)]
    pub data: PathBuf,
    /// Write the rankings with the model's normalised scores (`reward`) to this JSONL file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Stop at the first malformed record instead of skipping and counting them.
    #[arg(long)]
    pub strict: bool,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, AD, device| eval_on::<B>(&args, &device))
}

fn eval_on<B: Backend>(args: &EvalArgs, device: &B::Device) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(args.model.join("tokenizer.json"))?;
    let template = ChatTemplate::new(tokenizer.clone())?;
    let pad = tokenizer.special(Special::Pad)?;
    let (model, normalization) = load_reward_model::<B>(&args.model, device)
        .with_context(|| format!("loading the reward model in {}", args.model.display()))?;
    let rankings = load_rankings(&args.data, args.strict)?;
    let max_len = model.trunk().config().max_seq_len;
    let (encoded, too_long) = encode_rankings(&template, &rankings, max_len)?;
    if too_long > 0 {
        bail!(
            "{too_long} ranking(s) in {} do not fit the model's context of {max_len} tokens",
            args.data.display()
        );
    }
    let scores = score_rankings(&model, &encoded, pad, 64)?;
    print_evaluation(&Evaluation::new(&encoded, &scores));
    let by_family = by_family(&rankings, &encoded, &scores);
    if !by_family.is_empty() {
        println!(
            "\n{:<16} {:>7} {:>10} {:>16}",
            "family", "pairs", "accuracy", "spearman within"
        );
        for (family, e) in &by_family {
            println!(
                "{family:<16} {:>7} {:>9.1}% {:>16}",
                e.overall.pairs,
                100.0 * e.overall.accuracy,
                e.spearman_within.map_or("-".into(), |r| format!("{r:.3}"))
            );
        }
    }
    if let Some(path) = &args.output {
        let mut lines = String::new();
        for (ranking, scores) in rankings.iter().zip(&scores) {
            let mut record = ranking.to_json();
            let rewards = scores
                .iter()
                .map(|&s| normalization.apply(s))
                .collect::<Vec<_>>();
            record["reward"] = serde_json::json!(rewards);
            lines.push_str(&serde_json::to_string(&record)?);
            lines.push('\n');
        }
        ember_tokenizer::write_atomically(path, lines.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The evaluation of `scores` (the model's scores of `encoded`, the encodings of
/// `rankings`) per task family, for the rankings that name one.
pub fn by_family(
    rankings: &[Ranking],
    encoded: &[EncodedRanking],
    scores: &[Vec<f64>],
) -> BTreeMap<String, Evaluation> {
    let mut groups: BTreeMap<&str, (Vec<EncodedRanking>, Vec<Vec<f64>>)> = BTreeMap::new();
    for ((ranking, encoded), scores) in rankings.iter().zip(encoded).zip(scores) {
        if let Some(family) = &ranking.family {
            let entry = groups.entry(family).or_default();
            entry.0.push(encoded.clone());
            entry.1.push(scores.clone());
        }
    }
    groups
        .into_iter()
        .map(|(family, (encoded, scores))| (family.to_string(), Evaluation::new(&encoded, &scores)))
        .collect()
}

/// Arguments of `ember reward score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// The reward model folder (RUN/model of `ember reward train`).
    #[arg(long)]
    pub model: PathBuf,
    /// The user's prompt (with one or more `--answer`).
    #[arg(long, requires = "answer", conflicts_with = "data")]
    pub prompt: Option<String>,
    /// An answer to score; repeat for several.
    #[arg(long)]
    pub answer: Vec<String>,
    /// A JSONL file of `{"prompt": …, "answer": …}` objects (`prompt` a string or a list of
    /// messages); one JSON line with the scores per object goes to stdout.
    #[arg(long, required_unless_present = "prompt")]
    pub data: Option<PathBuf>,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, AD, device| score_on::<B>(&args, &device))
}

fn read_pairs(path: &Path) -> anyhow::Result<Vec<(Conversation, String)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| anyhow::anyhow!("{}:{}: {reason}", path.display(), i + 1);
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let answer = value
            .get("answer")
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("missing string `answer`".into()))?;
        let prompt = value
            .get("prompt")
            .ok_or_else(|| bad("missing `prompt`".into()))?;
        let prompt = ember_reward::parse_prompt(prompt).map_err(bad)?;
        pairs.push((prompt, answer.to_string()));
    }
    Ok(pairs)
}

fn score_on<B: Backend>(args: &ScoreArgs, device: &B::Device) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(args.model.join("tokenizer.json"))?;
    let template = ChatTemplate::new(tokenizer.clone())?;
    let pad = tokenizer.special(Special::Pad)?;
    let (model, normalization) = load_reward_model::<B>(&args.model, device)
        .with_context(|| format!("loading the reward model in {}", args.model.display()))?;
    let pairs = match (&args.prompt, &args.data) {
        (Some(prompt), _) => args
            .answer
            .iter()
            .map(|a| {
                (
                    Conversation::new(vec![Message::user(prompt.as_str())]),
                    a.clone(),
                )
            })
            .collect(),
        (None, Some(path)) => read_pairs(path)?,
        (None, None) => bail!("give --prompt with --answer, or --data"),
    };
    let rows = pairs
        .iter()
        .map(|(prompt, answer)| answer_row(&template, prompt, answer))
        .collect::<Result<Vec<_>, _>>()?;
    let raw = score_rows(&model, &rows, pad, 64)?;
    for ((prompt, answer), raw) in pairs.iter().zip(raw) {
        let user = prompt.messages.last().map_or("", |m| m.content.as_str());
        println!(
            "{}",
            serde_json::json!({
                "prompt": user,
                "answer": answer,
                "reward": normalization.apply(raw),
                "raw": raw,
            })
        );
    }
    Ok(())
}
