//! `ember pipeline`: every stage in order on the built-in tasks — data, tokenizer and
//! pretraining, SFT, rankings, reward model, PPO, evaluation — into one run folder, with a
//! report. A finished stage is not redone; an interrupted one resumes from its checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use burn::tensor::backend::Backend;
use ember_instruct::{ChatTemplate, Conversation, Message, OnError};
use ember_reward::{
    answer_row, encode_rankings, load_reward_model, read_rankings, score_rankings, score_rows,
    Evaluation,
};
use ember_tasks::{Split, TaskSet};
use ember_tokenizer::{Special, Tokenizer};
use ember_train::load_model;
use serde::{Deserialize, Serialize};

use crate::commands::{eval, ppo, pretrain, report, reward, sft, tasks};
use crate::config::{self, PretrainFile};
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
    /// Which backend runs every stage.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// The built-in tasks' data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSection {
    /// Sentences of pretraining text.
    pub corpus_sentences: usize,
    /// SFT conversations per family.
    pub train_per_family: usize,
    /// Seed of everything drawn.
    pub seed: u64,
}

impl Default for TasksSection {
    fn default() -> Self {
        Self {
            corpus_sentences: 60_000,
            train_per_family: 400,
            seed: 0,
        }
    }
}

/// Collecting rankings from the SFT model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectSection {
    /// Training prompts per family.
    pub per_family: usize,
    /// Held-out prompts per family (for the reward model's evaluation).
    pub heldout_per_family: usize,
    /// Answers per prompt.
    pub k: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Labeler noise (std of the Gaussian added to the judge's score).
    pub noise: f64,
    /// Weight of the labeler's tie-break by closeness to the reference, in [0, 0.1).
    pub closeness: f64,
    /// Rank the expert's answer (the SFT demonstration) among the sampled ones, in the
    /// training rankings; the held-out rankings stay the policy's answers only, which is what
    /// PPO asks the reward model to rank.
    pub demonstrations: bool,
}

impl Default for CollectSection {
    fn default() -> Self {
        Self {
            per_family: 120,
            heldout_per_family: 40,
            k: 6,
            temperature: 1.0,
            noise: 0.0,
            closeness: 0.0,
            demonstrations: false,
        }
    }
}

/// The final evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Held-out prompts per family.
    pub per_family: usize,
    /// New tokens per answer.
    pub max_new_tokens: usize,
    /// Sampled answers per prompt for the judge's expected score (besides the greedy
    /// answers); 0 leaves the sampled evaluation out.
    pub samples: usize,
    /// Their temperature; PPO's sampling temperature is what it optimises.
    pub temperature: f32,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            per_family: 20,
            max_new_tokens: 32,
            samples: 4,
            temperature: 1.0,
        }
    }
}

/// `ember pipeline`'s configuration: one table per stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineFile {
    /// The data.
    pub tasks: TasksSection,
    /// Stage 1.
    pub pretrain: PretrainFile,
    /// Stage 2.
    pub sft: sft::SftFile,
    /// Rankings for stage 3.
    pub collect: CollectSection,
    /// Stage 3.
    pub reward: reward::RewardTrainFile,
    /// Stage 4.
    pub ppo: ppo::PpoFile,
    /// The evaluation.
    pub eval: EvalSection,
}

impl Default for PipelineFile {
    fn default() -> Self {
        let mut pretrain = PretrainFile::default();
        // A small vocabulary keeps words in pieces: spelling, reversing and counting letters
        // are learnable from pieces, not from one opaque token per word (SFT judge 0.468
        // with 512 tokens, 0.209 with 2048; docs/pipeline.md).
        pretrain.tokenizer.vocab_size = 512;
        pretrain.train.steps = 200;
        pretrain.train.eval_every = std::num::NonZeroUsize::new(50);
        let mut sft = sft::SftFile {
            val_fraction: 0.05,
            ..Default::default()
        };
        sft.batch.batch_size = 16;
        sft.batch.row_len = 64;
        sft.train.steps = 300;
        sft.train.eval_every = std::num::NonZeroUsize::new(50);
        sft.train.optimizer.lr = 2e-3;
        sft.train.optimizer.warmup_steps = 20;
        let mut reward = reward::RewardTrainFile {
            likelihood: true,
            ..Default::default()
        };
        reward.train.steps = 100;
        reward.train.eval_every = std::num::NonZeroUsize::new(25);
        let mut ppo = ppo::PpoFile::default();
        ppo.optimizer.lr = 3e-5;
        Self {
            tasks: TasksSection::default(),
            pretrain,
            sft,
            collect: CollectSection::default(),
            reward,
            ppo,
            eval: EvalSection::default(),
        }
    }
}

/// The run folder's layout.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    pub(crate) fn join(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
    fn config(&self, stage: &str) -> PathBuf {
        self.root.join("configs").join(format!("{stage}.toml"))
    }
}

/// Seconds each stage took, kept in `timings.json` so that a resumed run still reports the
/// stages it did not redo.
pub type Timings = BTreeMap<String, f64>;

fn read_timings(path: &Path) -> anyhow::Result<Timings> {
    if !path.exists() {
        return Ok(Timings::new());
    }
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid timings", path.display()))
}

fn write_toml<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    ember_tokenizer::write_atomically(path, toml::to_string_pretty(value)?.as_bytes())?;
    Ok(())
}

/// Runs `ember pipeline`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let settings: PipelineFile = config::for_run(&args.run, args.config.as_deref(), |_| {})?;
    let run = Layout::new(&args.run);
    let timings_path = run.join("timings.json");
    let mut timings = read_timings(&timings_path)?;
    let stages: [&str; 8] = [
        "data", "pretrain", "sft", "collect", "reward", "ppo", "eval", "report",
    ];
    let mut stage = |index: usize,
                     done: bool,
                     body: &mut dyn FnMut() -> anyhow::Result<()>|
     -> anyhow::Result<()> {
        let name = stages[index];
        if done {
            println!("== {}/{} {name}: done already", index + 1, stages.len());
            return Ok(());
        }
        println!("\n== {}/{} {name}", index + 1, stages.len());
        let clock = Instant::now();
        body().with_context(|| format!("stage {name}"))?;
        timings.insert(name.to_string(), clock.elapsed().as_secs_f64());
        let json = serde_json::to_string_pretty(&timings)?;
        ember_tokenizer::write_atomically(&timings_path, json.as_bytes())?;
        Ok(())
    };

    let data = run.join("data");
    stage(0, data.join("heldout.jsonl").exists(), &mut || {
        tasks::export(tasks::ExportArgs {
            out: data.clone(),
            corpus_sentences: settings.tasks.corpus_sentences,
            train_per_family: settings.tasks.train_per_family,
            heldout_per_family: settings.eval.per_family,
            seed: settings.tasks.seed,
        })
    })?;

    let base = run.join("base");
    stage(1, base.join("model/model.mpk").exists(), &mut || {
        write_toml(&run.config("pretrain"), &settings.pretrain)?;
        pretrain::run(pretrain::Args {
            data: vec![data.join("corpus.txt")],
            tokenizer: None,
            run: base.clone(),
            config: Some(run.config("pretrain")),
            device: args.device,
            steps: None,
            preset: None,
        })
    })?;

    let tuned = run.join("sft");
    stage(2, tuned.join("model/model.mpk").exists(), &mut || {
        write_toml(&run.config("sft"), &settings.sft)?;
        sft::run(sft::Args {
            model: base.join("model"),
            data: data.join("sft.jsonl"),
            val: None,
            run: tuned.clone(),
            config: Some(run.config("sft")),
            device: args.device,
            steps: None,
            strict: true,
        })
    })?;

    let rankings = run.join("rankings");
    stage(3, rankings.join("heldout.jsonl").exists(), &mut || {
        let c = &settings.collect;
        for (split, per_family, file) in [
            (reward::SplitArg::Train, c.per_family, "train.jsonl"),
            (
                reward::SplitArg::Heldout,
                c.heldout_per_family,
                "heldout.jsonl",
            ),
        ] {
            reward::run(reward::Command::Collect(reward::CollectArgs {
                model: tuned.join("model"),
                output: rankings.join(file),
                split,
                per_family,
                k: c.k,
                temperature: c.temperature,
                max_new_tokens: settings.eval.max_new_tokens,
                noise: c.noise,
                closeness: c.closeness,
                demonstrations: c.demonstrations && matches!(split, reward::SplitArg::Train),
                seed: 1,
                device: args.device,
            }))?;
        }
        Ok(())
    })?;

    let rm = run.join("reward");
    stage(4, rm.join("model/reward.json").exists(), &mut || {
        write_toml(&run.config("reward"), &settings.reward)?;
        reward::run(reward::Command::Train(reward::TrainArgs {
            model: tuned.join("model"),
            data: rankings.join("train.jsonl"),
            val: None,
            run: rm.clone(),
            config: Some(run.config("reward")),
            device: args.device,
            steps: None,
            strict: true,
        }))
    })?;

    let rl = run.join("ppo");
    stage(5, rl.join("model/model.mpk").exists(), &mut || {
        write_toml(&run.config("ppo"), &settings.ppo)?;
        ppo::run(ppo::Args {
            policy: tuned.join("model"),
            reward: rm.join("model"),
            run: rl.clone(),
            prompts: None,
            ptx_shards: Some(base.join("shards")),
            config: Some(run.config("ppo")),
            iterations: None,
            device: args.device,
        })
    })?;

    stage(6, run.join("eval/summary.json").exists(), &mut || {
        with_backend!(args.device, |B, AD, device| evaluate_models::<B>(
            &run, &settings, &device
        ))
    })?;

    stage(7, false, &mut || report::write(&run))?;
    println!(
        "\nthe pipeline took {:.1} min this time; the report is {}",
        started.elapsed().as_secs_f64() / 60.0,
        run.join("report.md").display()
    );
    Ok(())
}

/// The held-out evaluation of every stage's model, as the report reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Per model (`base`, `sft`, `ppo`), per family: the judge's scores.
    pub judge: BTreeMap<String, BTreeMap<String, eval::FamilyScore>>,
    /// Per model: the mean judge score over every held-out prompt.
    pub judge_mean: BTreeMap<String, f64>,
    /// Per model (`sft`, `ppo`): the reward model's mean normalised score of its answers.
    pub reward_mean: BTreeMap<String, f64>,
    /// PPO against SFT, prompt by prompt on the judge: wins, ties, losses.
    pub ppo_vs_sft: (usize, usize, usize),
    /// The reward model on held-out rankings: pairwise accuracy, mean margin, Spearman within
    /// prompts and pooled, pairs.
    pub reward_model: (f64, f64, Option<f64>, Option<f64>, usize),
    /// The same per task family: pairwise accuracy, pairs.
    #[serde(default)]
    pub reward_model_by_family: BTreeMap<String, (f64, usize)>,
    /// Per model, per family: the judge's mean score of sampled answers (`[eval] samples`
    /// per prompt at `[eval] temperature`); empty without a sampled evaluation.
    #[serde(default)]
    pub judge_sampled: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per model: the same over every sampled answer.
    #[serde(default)]
    pub judge_sampled_mean: BTreeMap<String, f64>,
    /// Sampled answers per prompt and their temperature.
    #[serde(default)]
    pub sampling: Option<(usize, f32)>,
}

fn evaluate_models<B: Backend>(
    run: &Layout,
    settings: &PipelineFile,
    device: &B::Device,
) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(run.join("sft/model/tokenizer.json"))?;
    let template = ChatTemplate::new(tokenizer.clone())?;
    let pad = tokenizer.special(Special::Pad)?;
    let tasks = TaskSet::builtin();
    let examples = tasks.examples(Split::HeldOut, settings.eval.per_family, 0);
    let (reward_model, normalization) = load_reward_model::<B>(&run.join("reward/model"), device)?;
    let mut summary = Summary {
        sampling: (settings.eval.samples > 0)
            .then_some((settings.eval.samples, settings.eval.temperature)),
        ..Default::default()
    };
    let mut by_model = BTreeMap::new();
    for name in ["base", "sft", "ppo"] {
        let model = load_model::<B>(&run.join(&format!("{name}/model")), device)?;
        let scored = eval::score_answers(
            &model,
            &template,
            &tasks,
            &examples,
            settings.eval.max_new_tokens,
            32,
            eval::Answering::GREEDY,
        )?;
        if settings.eval.samples > 0 {
            let sampled = eval::score_answers(
                &model,
                &template,
                &tasks,
                &examples,
                settings.eval.max_new_tokens,
                64,
                eval::Answering {
                    temperature: settings.eval.temperature,
                    samples: settings.eval.samples,
                    seed: 0,
                },
            )?;
            let (families, mean) = eval::by_family(&sampled);
            let means = families.into_iter().map(|(f, s)| (f, s.mean)).collect();
            summary.judge_sampled.insert(name.into(), means);
            summary.judge_sampled_mean.insert(name.into(), mean);
            println!(
                "{name}: mean judge score {mean:.3} on {} sampled answers (T = {})",
                sampled.len(),
                settings.eval.temperature
            );
        }
        let (families, mean) = eval::by_family(&scored);
        summary.judge.insert(name.into(), families);
        summary.judge_mean.insert(name.into(), mean);
        let rows = scored
            .iter()
            .map(|s| {
                let prompt = Conversation::new(vec![Message::user(&s.example.prompt)]);
                answer_row(&template, &prompt, &s.output)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rewards = score_rows(&reward_model, &rows, pad, 64)?
            .into_iter()
            .map(|r| normalization.apply(r))
            .collect::<Vec<_>>();
        if name != "base" {
            summary.reward_mean.insert(
                name.into(),
                rewards.iter().sum::<f64>() / rewards.len().max(1) as f64,
            );
        }
        let mut lines = String::new();
        for (s, r) in scored.iter().zip(&rewards) {
            let mut value = serde_json::to_value(s)?;
            value["reward"] = serde_json::json!(r);
            lines.push_str(&serde_json::to_string(&value)?);
            lines.push('\n');
        }
        std::fs::create_dir_all(run.join("eval"))?;
        ember_tokenizer::write_atomically(
            &run.join(&format!("eval/{name}.jsonl")),
            lines.as_bytes(),
        )?;
        by_model.insert(name, scored);
        println!(
            "{name}: mean judge score {mean:.3} on {} held-out prompts",
            examples.len()
        );
    }
    let (mut wins, mut ties, mut losses) = (0, 0, 0);
    for (p, s) in by_model["ppo"].iter().zip(&by_model["sft"]) {
        match p.score.partial_cmp(&s.score) {
            Some(std::cmp::Ordering::Greater) => wins += 1,
            Some(std::cmp::Ordering::Less) => losses += 1,
            _ => ties += 1,
        }
    }
    summary.ppo_vs_sft = (wins, ties, losses);
    let held = read_rankings(&run.join("rankings/heldout.jsonl"), OnError::Stop)?.rankings;
    let max_len = reward_model.trunk().config().max_seq_len;
    let (encoded, _) = encode_rankings(&template, &held, max_len)?;
    let scores = score_rankings(&reward_model, &encoded, pad, 64)?;
    summary.reward_model_by_family = reward::by_family(&held, &encoded, &scores)
        .into_iter()
        .map(|(family, e)| (family, (e.overall.accuracy, e.overall.pairs)))
        .collect();
    let e = Evaluation::new(&encoded, &scores);
    summary.reward_model = (
        e.overall.accuracy,
        e.overall.mean_margin,
        e.spearman_within,
        e.spearman,
        e.overall.pairs,
    );
    let json = serde_json::to_string_pretty(&summary)?;
    ember_tokenizer::write_atomically(&run.join("eval/summary.json"), json.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_the_pipelines_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, "[pretrain.tokenizer]\nvocab_size = 512\n").unwrap();
        let settings: PipelineFile = config::load(Some(&path)).unwrap();
        let defaults = PipelineFile::default();
        assert_eq!(settings.pretrain.tokenizer.vocab_size, 512);
        assert_eq!(settings.pretrain.train, defaults.pretrain.train);
        assert_eq!(settings.pretrain.train.steps, 200);
        assert_eq!(settings.sft, defaults.sft);
        assert_eq!(
            PipelineFile {
                pretrain: defaults.pretrain.clone(),
                ..settings
            },
            defaults
        );
    }
}
