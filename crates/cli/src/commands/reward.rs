//! `ember reward`: collect rankings from the SFT model, train a reward model on them,
//! evaluate it and score answers with it (stage 3).

use std::path::PathBuf;

use anyhow::bail;
use ember_instruct::{read_prompts, Conversation, Message};
use ember_pipeline::settings::for_run;
use ember_pipeline::{
    collect, evaluate_reward_model, evaluation_table, load_rankings, score_answers_with,
    train_reward_model, CollectJob, ModelFolder, RewardSettings, TuneInputs,
};
use ember_tasks::Split;

use super::sft::on_error;
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
        Command::Collect(args) => collect_rankings(args),
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
    /// Replace `--output` if it exists.
    #[arg(long)]
    pub force: bool,
    /// Which backend generates.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

fn collect_rankings(args: CollectArgs) -> anyhow::Result<()> {
    super::refuse_to_replace(&args.output, args.force)?;
    let job = CollectJob {
        model: ModelFolder::new(args.model),
        output: args.output,
        split: match args.split {
            SplitArg::Train => Split::Train,
            SplitArg::Heldout => Split::HeldOut,
        },
        per_family: args.per_family,
        k: args.k,
        temperature: args.temperature,
        max_new_tokens: args.max_new_tokens,
        noise: args.noise,
        closeness: args.closeness,
        demonstrations: args.demonstrations,
        seed: args.seed,
    };
    let done = with_backend!(args.device, |B, AD, device| collect::<B>(&job, &device))?;
    println!("{done}");
    Ok(())
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

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let mut settings: RewardSettings = for_run(&args.run, args.config.as_deref())?;
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
    let done = with_backend!(args.device, |B, AD, device| train_reward_model::<AD>(
        &inputs,
        &settings,
        &device,
        &mut |line| println!("{line}")
    ))?;
    println!("{done}");
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
    /// Replace `--output` if it exists (never `--data` itself).
    #[arg(long)]
    pub force: bool,
    /// Stop at the first malformed record instead of skipping and counting them.
    #[arg(long)]
    pub strict: bool,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if let Some(output) = &args.output {
        if output.canonicalize().ok() == args.data.canonicalize().ok() && output.exists() {
            anyhow::bail!(
                "--output {} is the --data file; write the scored rankings elsewhere",
                output.display()
            );
        }
        super::refuse_to_replace(output, args.force)?;
    }
    let folder = ModelFolder::new(&args.model);
    let template = folder.template()?;
    let rankings = load_rankings(&args.data, on_error(args.strict), &mut |l| println!("{l}"))?;
    let (evaluation, normalization) = with_backend!(args.device, |B, AD, device| {
        let (model, normalization) = folder.load_reward::<B>(&device)?;
        anyhow::Ok((
            evaluate_reward_model(&model, &template, rankings)?,
            normalization,
        ))
    })?;
    print!("{}", evaluation_table(&evaluation.overall));
    if !evaluation.by_family.is_empty() {
        println!(
            "\n{:<16} {:>7} {:>10} {:>16}",
            "family", "pairs", "accuracy", "spearman within"
        );
        for (family, e) in &evaluation.by_family {
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
        for (ranking, scores) in evaluation.rankings.iter().zip(&evaluation.scores) {
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
    let folder = ModelFolder::new(&args.model);
    let template = folder.template()?;
    let pairs: Vec<(Conversation, String)> = match (&args.prompt, &args.data) {
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
        (None, Some(path)) => read_prompts(path, true, ember_instruct::OnError::Stop)?
            .prompts
            .into_iter()
            .map(|p| (p.prompt, p.answer.unwrap_or_default()))
            .collect(),
        (None, None) => bail!("give --prompt with --answer, or --data"),
    };
    let scores = with_backend!(args.device, |B, AD, device| {
        let (model, normalization) = folder.load_reward::<B>(&device)?;
        anyhow::Ok(score_answers_with(
            &model,
            normalization,
            &template,
            &pairs,
        )?)
    })?;
    for ((prompt, answer), (reward, raw)) in pairs.iter().zip(scores) {
        let user = prompt.messages.last().map_or("", |m| m.content.as_str());
        println!(
            "{}",
            serde_json::json!({ "prompt": user, "answer": answer, "reward": reward, "raw": raw })
        );
    }
    Ok(())
}
