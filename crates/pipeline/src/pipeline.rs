//! The pipeline: every stage in order on the built-in tasks — data, pretraining, SFT,
//! rankings, reward model, PPO, evaluation, report — in one run folder. A stage whose output
//! is complete is not redone; an interrupted one resumes from its checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use ember_instruct::OnError;
use serde::{Deserialize, Serialize};

use crate::settings::{check_fraction, record};
use crate::stages::{differences, read_all, records_dir, StageRecord};
use crate::summary::{evaluate_pipeline, EvalInputs, EvalSettings, Policy, Summary};
use crate::{
    collect, export_tasks, ppo, pretrain, read_examples, sft, train_reward_model, write_report,
    CollectSettings, Error, ModelFolder, PpoInputs, PpoSettings, PretrainInputs, PretrainSettings,
    PromptSource, Result, RewardSettings, SftSettings, TaskData, TasksSettings, TuneInputs,
};

/// The pipeline's settings: one table per stage, each laid over the pipeline's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// The run's seed: every stage's own seed is offset by it ([`PipelineSettings::seeded`]),
    /// so runs with seeds 0, 1, 2 differ in every random choice — the data, the flawed
    /// demonstrations, the initial weights, the batches, the sampled answers — and seed 0 is
    /// the stages' own seeds.
    pub seed: u64,
    /// The data.
    pub tasks: TasksSettings,
    /// Stage 1.
    pub pretrain: PretrainSettings,
    /// Stage 2.
    pub sft: SftSettings,
    /// Rankings for stage 3.
    pub collect: CollectSettings,
    /// Stage 3.
    pub reward: RewardSettings,
    /// Stage 4.
    pub ppo: PpoSettings,
    /// The evaluation.
    pub eval: EvalSettings,
    /// Run PPO a second time with the judge itself as the reward (a perfect reward model):
    /// the upper bound the report quotes. Off by default: it adds PPO's time again (about
    /// 100 s, past the 10 minutes of the default run).
    pub upper_bound: bool,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        let mut pretrain = PretrainSettings::default();
        // A small vocabulary keeps words in pieces: spelling, reversing and counting letters
        // are learnable from pieces, not from one opaque token per word (SFT judge 0.468
        // with 512 tokens, 0.209 with 2048; docs/pipeline.md).
        pretrain.tokenizer.vocab_size = 512;
        pretrain.train.steps = 200;
        pretrain.train.eval_every = std::num::NonZeroUsize::new(50);
        let mut sft = SftSettings {
            val_fraction: 0.05,
            ..Default::default()
        };
        sft.batch.batch_size = 16;
        sft.batch.row_len = 64;
        // 400 steps: on the flawed demonstrations the model learns the content more slowly
        // than on flawless ones (docs/tasks.md).
        sft.train.steps = 400;
        sft.train.eval_every = std::num::NonZeroUsize::new(50);
        sft.train.optimizer.lr = 2e-3;
        sft.train.optimizer.warmup_steps = 20;
        // No likelihood term: PPO climbs it by collapsing onto the SFT model's most likely
        // answers (greedy judge 0.296 → 0.226 with it, docs/tasks.md), and the head alone
        // reaches the same held-out accuracy on these rankings.
        let mut reward = RewardSettings {
            likelihood: false,
            ..Default::default()
        };
        reward.train.steps = 100;
        reward.train.eval_every = std::num::NonZeroUsize::new(25);
        // 10 rollout batches of 32 prompts × 4 answers at a learning rate of 3e-5 and β = 0.1:
        // the reward model's lesson (stop after the answer) is learnt within about 8 batches;
        // more batches, a higher rate or a weaker KL let the policy drift where the reward model
        // is wrong (its accuracy on PPO's own samples falls) and the judge's score with it.
        let mut ppo = PpoSettings {
            iterations: 10,
            eval_every: 5,
            checkpoint_every: 5,
            ..Default::default()
        };
        ppo.optimizer.lr = 3e-5;
        ppo.ppo.rollout_prompts = 128;
        Self {
            seed: 0,
            tasks: TasksSettings::default(),
            pretrain,
            sft,
            collect: CollectSettings::default(),
            reward,
            ppo,
            eval: EvalSettings::default(),
            upper_bound: false,
        }
    }
}

impl PipelineSettings {
    /// Checks every setting of every stage before the first stage runs, so that a bad value
    /// in the last stage's table does not wait ten minutes to be found: no number is NaN or
    /// infinite (each is named), each stage's own checks, and SFT's rows fit the model that
    /// pretraining will build.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        let table = toml::Value::try_from(self)
            .map_err(|e| Error::Config(format!("unserialisable settings: {e}")))?;
        non_finite("", &table)?;
        let section = |name: &str, r: std::result::Result<(), String>| {
            r.map_err(|e| Error::Config(format!("[{name}] {e}")))
        };
        let text = |e: &dyn std::fmt::Display| e.to_string();
        section("tasks.flaws", self.tasks.flaws.validate())?;
        for (name, train) in [
            ("pretrain.train", &self.pretrain.train),
            ("sft.train", &self.sft.train),
            ("reward.train", &self.reward.train),
        ] {
            section(name, train.validate().map_err(|e| text(&e)))?;
        }
        section(
            "ppo.optimizer",
            self.ppo.optimizer.validate().map_err(|e| text(&e)),
        )?;
        section("ppo.ppo", self.ppo.ppo.validate().map_err(|e| text(&e)))?;
        for (name, fraction) in [
            ("sft", self.sft.val_fraction),
            ("reward", self.reward.val_fraction),
        ] {
            section(name, check_fraction(fraction).map_err(|e| text(&e)))?;
        }
        let (sft, rankings) = (ModelFolder::new("sft/model"), Path::new("rankings"));
        for job in self.collect.jobs(&sft, rankings, self.eval.max_new_tokens) {
            section("collect", job.validate().map_err(|e| text(&e)))?;
        }
        if self.eval.samples > 0 {
            section(
                "eval",
                self.eval.answering().validate().map_err(|e| text(&e)),
            )?;
        }
        let model = self.pretrain.model.resolve(
            self.pretrain.tokenizer.vocab_size,
            self.pretrain.batch.seq_len,
        );
        section("pretrain.model", model.validate().map_err(|e| text(&e)))?;
        if self.sft.batch.row_len > model.max_seq_len {
            return Err(Error::Config(format!(
                "[sft.batch] row_len {} is longer than the model's context of {} tokens",
                self.sft.batch.row_len, model.max_seq_len
            )));
        }
        Ok(())
    }

    /// The settings each stage runs with: every stage's seed offset by the run's seed
    /// (unchanged for seed 0).
    pub fn seeded(&self) -> Self {
        let offset = |own: u64| own.wrapping_add(self.seed.wrapping_mul(1_000_003));
        let mut seeded = self.clone();
        seeded.tasks.seed = offset(self.tasks.seed);
        seeded.pretrain.batch.seed = offset(self.pretrain.batch.seed);
        seeded.sft.batch.seed = offset(self.sft.batch.seed);
        seeded.collect.seed = offset(self.collect.seed);
        seeded.reward.batch.seed = offset(self.reward.batch.seed);
        seeded.ppo.ppo.seed = offset(self.ppo.ppo.seed);
        seeded.eval.seed = offset(self.eval.seed);
        seeded
    }

    /// A toy run of every stage in seconds on a CPU (a 2-layer, 32-wide model, a few steps of
    /// each stage): for tests, the examples and trying the plumbing, not for results.
    pub fn toy() -> Self {
        let mut toy = Self {
            upper_bound: true,
            tasks: TasksSettings {
                corpus_sentences: 3000,
                train_per_family: 24,
                ..TasksSettings::default()
            },
            ..Self::default()
        };
        let model = &mut toy.pretrain.model;
        (model.d_model, model.n_layers, model.n_heads) = (Some(32), Some(2), Some(2));
        toy.pretrain.tokenizer.vocab_size = 400;
        toy.pretrain.batch.batch_size = 4;
        toy.pretrain.batch.seq_len = 32;
        toy.sft.val_fraction = 0.1;
        toy.sft.batch.batch_size = 4;
        toy.sft.batch.row_len = 48;
        for train in [
            &mut toy.pretrain.train,
            &mut toy.sft.train,
            &mut toy.reward.train,
        ] {
            train.steps = 4;
            train.eval_every = std::num::NonZeroUsize::new(2);
            train.checkpoint_every = std::num::NonZeroUsize::new(2);
            train.progress = false;
        }
        toy.reward.train.steps = 3;
        toy.collect.per_family = 6;
        toy.collect.heldout_per_family = 4;
        toy.collect.k = 3;
        toy.reward.batch.prompts_per_batch = 2;
        toy.ppo.iterations = 2;
        toy.ppo.prompts_per_family = 4;
        toy.ppo.eval_per_family = 1;
        toy.ppo.eval_every = 1;
        toy.ppo.checkpoint_every = 1;
        toy.ppo.ppo.rollout_prompts = 8;
        toy.ppo.ppo.samples_per_prompt = 2;
        toy.ppo.ppo.minibatches = 2;
        toy.ppo.ppo.max_new_tokens = 6;
        toy.eval.per_family = 2;
        toy.eval.max_new_tokens = 8;
        toy
    }

    /// About half a minute of every stage on a CPU: the toy run with a 64-wide model and
    /// enough steps for the SFT model to answer in the tasks' formats and the reward model
    /// to rank by them — what the examples start from.
    pub fn quick() -> Self {
        let mut quick = Self::toy();
        quick.tasks.train_per_family = 100;
        quick.pretrain.model.d_model = Some(64);
        quick.pretrain.batch.batch_size = 8;
        quick.pretrain.train.steps = 150;
        quick.pretrain.train.eval_every = std::num::NonZeroUsize::new(50);
        quick.pretrain.train.checkpoint_every = std::num::NonZeroUsize::new(50);
        quick.sft.batch.batch_size = 8;
        quick.sft.train.steps = 200;
        quick.sft.train.eval_every = std::num::NonZeroUsize::new(50);
        quick.sft.train.checkpoint_every = std::num::NonZeroUsize::new(100);
        quick.collect.per_family = 20;
        quick.collect.k = 4;
        quick.reward.batch.prompts_per_batch = 4;
        quick.reward.train.steps = 40;
        quick.reward.train.eval_every = std::num::NonZeroUsize::new(20);
        quick.reward.train.checkpoint_every = std::num::NonZeroUsize::new(20);
        quick
    }
}

/// A stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The built-in tasks' data as files.
    Data,
    /// Stage 1: tokenizer, shards, pretraining.
    Pretrain,
    /// Stage 2: instruction tuning.
    Sft,
    /// The yardstick: stage 2 again on flawless demonstrations.
    SftFlawless,
    /// K answers per prompt from the SFT model, ranked by the judge.
    Collect,
    /// Stage 3: the reward model.
    Reward,
    /// Stage 4: PPO.
    Ppo,
    /// The upper bound: PPO with the judge as the reward (when `upper_bound` is set).
    PpoJudge,
    /// The held-out evaluation of every model.
    Eval,
    /// `report.md` and the plots (always written anew).
    Report,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 10] = [
        Stage::Data,
        Stage::Pretrain,
        Stage::Sft,
        Stage::SftFlawless,
        Stage::Collect,
        Stage::Reward,
        Stage::Ppo,
        Stage::PpoJudge,
        Stage::Eval,
        Stage::Report,
    ];

    /// Its place in [`Stage::ALL`].
    fn index(self) -> usize {
        Stage::ALL
            .iter()
            .position(|&s| s == self)
            .expect("every stage is in Stage::ALL")
    }

    /// Its name in the log and in `timings.json`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::Pretrain => "pretrain",
            Stage::Sft => "sft",
            Stage::SftFlawless => "sft_flawless",
            Stage::Collect => "collect",
            Stage::Reward => "reward",
            Stage::Ppo => "ppo",
            Stage::PpoJudge => "ppo_judge",
            Stage::Eval => "eval",
            Stage::Report => "report",
        }
    }
}

/// What a resumed pipeline does with a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Its output is complete, made with these settings from these inputs: skip it.
    Done,
    /// Run it (resuming from its checkpoint, if it has one).
    Run,
    /// Its record says it ran with other settings, or from other inputs (an earlier stage's
    /// settings changed): its output is not this run's. [`Pipeline::run`] refuses, naming
    /// the settings, unless asked to redo such stages ([`Pipeline::redo_changed`]), which
    /// deletes their output first.
    Changed,
}

/// Seconds each stage took, kept in `timings.json` so that a resumed run still reports the
/// stages it did not redo.
pub type Timings = BTreeMap<String, f64>;

/// A pipeline run folder's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFolder {
    root: PathBuf,
}

impl RunFolder {
    /// The run folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The data stage's files.
    pub fn data(&self) -> TaskData {
        TaskData::in_dir(&self.root.join("data"))
    }

    /// A stage's own run folder (checkpoints, metrics, `config.toml`, `model/`): `base`,
    /// `sft`, `reward` or `ppo`.
    pub fn stage(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A policy's model folder.
    pub fn model(&self, policy: Policy) -> ModelFolder {
        ModelFolder::new(self.stage(policy.name()).join("model"))
    }

    /// The reward model's folder.
    pub fn reward_model(&self) -> ModelFolder {
        ModelFolder::new(self.stage("reward").join("model"))
    }

    /// The rankings' folder (`train.jsonl`, `heldout.jsonl`).
    pub fn rankings(&self) -> PathBuf {
        self.root.join("rankings")
    }

    /// The evaluation's folder (`{model}.jsonl`, `summary.json`).
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }

    /// `timings.json`.
    pub fn timings(&self) -> PathBuf {
        self.root.join("timings.json")
    }

    /// `report.md`.
    pub fn report(&self) -> PathBuf {
        self.root.join("report.md")
    }

    /// The plots' folder.
    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }

    /// A stage's completion record, `stages/{name}.json`.
    pub fn record(&self, stage: Stage) -> PathBuf {
        records_dir(&self.root).join(format!("{}.json", stage.name()))
    }

    /// The folders a stage writes (deleted before it is redone with other settings).
    pub fn outputs(&self, stage: Stage) -> Vec<PathBuf> {
        let name = match stage {
            Stage::Data => "data",
            Stage::Pretrain => Policy::Base.name(),
            Stage::Sft => Policy::Sft.name(),
            Stage::SftFlawless => Policy::SftFlawless.name(),
            Stage::Collect => "rankings",
            Stage::Reward => "reward",
            Stage::Ppo => Policy::Ppo.name(),
            Stage::PpoJudge => Policy::PpoJudge.name(),
            Stage::Eval => "eval",
            Stage::Report => return vec![self.report(), self.plots()],
        };
        vec![self.root.join(name)]
    }

    /// The timings of the stages run so far.
    ///
    /// # Errors
    /// A damaged `timings.json`.
    pub fn read_timings(&self) -> Result<Timings> {
        let path = self.timings();
        if !path.exists() {
            return Ok(Timings::new());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::json(&path, e))
    }
}

/// The pipeline over one run folder with its settings.
#[derive(Debug, Clone)]
pub struct Pipeline {
    folder: RunFolder,
    settings: PipelineSettings,
    redo_changed: bool,
}

impl Pipeline {
    /// The pipeline writing into `root` with `settings`.
    pub fn new(root: impl Into<PathBuf>, settings: PipelineSettings) -> Self {
        Self {
            folder: RunFolder::new(root),
            settings,
            redo_changed: false,
        }
    }

    /// Redo, rather than refuse, the stages whose settings or inputs changed since they ran
    /// ([`Decision::Changed`]): their output is deleted first.
    pub fn redo_changed(mut self, redo: bool) -> Self {
        self.redo_changed = redo;
        self
    }

    /// The part of the (seeded) settings that `stage` reads.
    pub fn stage_settings(&self, stage: Stage) -> serde_json::Value {
        let s = self.settings.seeded();
        match stage {
            Stage::Data => serde_json::json!({
                "tasks": value(&s.tasks),
                "eval.per_family": s.eval.per_family,
            }),
            Stage::Pretrain => value(&s.pretrain),
            Stage::Sft | Stage::SftFlawless => value(&s.sft),
            Stage::Collect => serde_json::json!({
                "collect": value(&s.collect),
                "eval.max_new_tokens": s.eval.max_new_tokens,
            }),
            Stage::Reward => value(&s.reward),
            Stage::Ppo => value(&s.ppo),
            Stage::PpoJudge => serde_json::json!({
                "ppo": value(&s.ppo),
                "upper_bound": s.upper_bound,
            }),
            Stage::Eval => serde_json::json!({
                "eval": value(&s.eval),
                "upper_bound": s.upper_bound,
            }),
            Stage::Report => serde_json::json!({ "seed": s.seed }),
        }
    }

    /// The record every stage has when it ran with these settings, in order: each one's
    /// inputs are the digest of the one before.
    pub fn expected_records(&self) -> Vec<StageRecord> {
        let mut inputs = String::new();
        Stage::ALL
            .iter()
            .map(|&stage| {
                let record =
                    StageRecord::new(stage.name(), self.stage_settings(stage), inputs.clone());
                inputs = record.digest();
                record
            })
            .collect()
    }

    fn expected_record(&self, stage: Stage) -> StageRecord {
        self.expected_records().swap_remove(stage.index())
    }

    /// Every stage with the record it has with these settings and the one in the run folder
    /// (none if absent or unreadable).
    fn records(&self) -> Vec<(Stage, StageRecord, Option<StageRecord>)> {
        Stage::ALL
            .into_iter()
            .zip(self.expected_records())
            .map(|(stage, expected)| {
                let found = StageRecord::read(&self.folder.record(stage)).ok().flatten();
                (stage, expected, found)
            })
            .collect()
    }

    /// What changed for each stage whose record disagrees with these settings.
    fn changes(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (_, expected, found) in self.records() {
            let Some(found) = found.filter(|f| f.digest() != expected.digest()) else {
                continue;
            };
            let differences = differences(&found.settings, &expected.settings);
            if differences.is_empty() {
                lines.push(format!(
                    "  {}: an earlier stage's settings changed",
                    expected.stage
                ));
            }
            for d in differences {
                lines.push(format!("  {}: {d}", expected.stage));
            }
        }
        lines
    }

    /// Its run folder.
    pub fn folder(&self) -> &RunFolder {
        &self.folder
    }

    /// Its settings.
    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    /// Whether `stage` is done: its record says it finished with these settings from these
    /// inputs, and its output is in the run folder.
    pub fn is_done(&self, stage: Stage) -> bool {
        let (_, expected, found) = self.records().swap_remove(stage.index());
        Self::finished(&expected, found.as_ref()) && self.has_output(stage)
    }

    fn finished(expected: &StageRecord, found: Option<&StageRecord>) -> bool {
        found.is_some_and(|f| f.complete && f.digest() == expected.digest())
    }

    /// Whether `stage`'s output is in the run folder (whatever made it).
    fn has_output(&self, stage: Stage) -> bool {
        let run = &self.folder;
        match stage {
            Stage::Data => run.data().exists(),
            Stage::Pretrain => run.model(Policy::Base).exists(),
            Stage::Sft => run.model(Policy::Sft).exists(),
            Stage::SftFlawless => run.model(Policy::SftFlawless).exists(),
            Stage::Collect => run.rankings().join("heldout.jsonl").is_file(),
            Stage::Reward => run.reward_model().holds_reward_model(),
            Stage::Ppo => run.model(Policy::Ppo).exists(),
            Stage::PpoJudge => !self.settings.upper_bound || run.model(Policy::PpoJudge).exists(),
            // A summary this version cannot read (an older run folder's) is made again.
            Stage::Eval => Summary::read(&run.eval().join("summary.json")).is_ok(),
            Stage::Report => false,
        }
    }

    /// What running now would do with each stage: a stage is skipped when it is done and no
    /// stage before it runs (a later stage's output rests on the earlier ones', so it is made
    /// again after any of them is); a stage whose record disagrees with these settings is
    /// [`Decision::Changed`].
    pub fn plan(&self) -> Vec<(Stage, Decision)> {
        let mut rerun = false;
        self.records()
            .into_iter()
            .map(|(stage, expected, found)| {
                let decision = match &found {
                    Some(f) if f.digest() != expected.digest() => Decision::Changed,
                    _ if rerun
                        || !Self::finished(&expected, found.as_ref())
                        || !self.has_output(stage) =>
                    {
                        Decision::Run
                    }
                    _ => Decision::Done,
                };
                rerun = rerun || decision != Decision::Done;
                (stage, decision)
            })
            .collect()
    }

    /// Runs every stage that is not done, in order, on `device`; `log` hears each stage's
    /// progress and results. Returns the timings of every stage run so far.
    ///
    /// # Errors
    /// The first stage that fails, named.
    pub fn run<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        log: &mut dyn FnMut(&str),
    ) -> Result<Timings> {
        self.settings.validate()?;
        let plan = self.plan();
        if !self.redo_changed && plan.iter().any(|(_, d)| *d == Decision::Changed) {
            return Err(Error::Changed {
                root: self.folder.root().to_path_buf(),
                changes: self.changes().join("\n"),
            });
        }
        std::fs::create_dir_all(self.folder.root())
            .map_err(|e| Error::io(self.folder.root(), e))?;
        record(&self.folder.root().join("config.toml"), &self.settings)?;
        let total = Stage::ALL.len();
        for (index, (stage, decision)) in plan.into_iter().enumerate() {
            let name = stage.name();
            if decision == Decision::Done {
                log(&format!("== {}/{total} {name}: done already", index + 1));
                continue;
            }
            if decision == Decision::Changed {
                log(&format!(
                    "\n== {}/{total} {name}: its settings changed; deleting its output to redo it",
                    index + 1
                ));
                for path in self.folder.outputs(stage) {
                    remove(&path)?;
                }
                remove(&self.folder.record(stage))?;
            } else {
                log(&format!("\n== {}/{total} {name}", index + 1));
            }
            self.run_stage::<B>(stage, device, log)
                .map_err(|source| Error::Stage {
                    stage: name,
                    source: Box::new(source),
                })?;
            self.write_timings()?;
        }
        self.timings()
    }

    /// Seconds each stage took, every attempt together, from the stages' records (for a run
    /// folder from before records, its `timings.json`).
    ///
    /// # Errors
    /// A damaged record or `timings.json`.
    pub fn timings(&self) -> Result<Timings> {
        let mut timings = self.folder.read_timings()?;
        for (name, found) in read_all(&records_dir(self.folder.root()))? {
            if name != Stage::Report.name() {
                timings.insert(name, found.seconds);
            }
        }
        Ok(timings)
    }

    fn write_timings(&self) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.timings()?).expect("timings serialise");
        Ok(ember_tokenizer::write_atomically(
            &self.folder.timings(),
            json.as_bytes(),
        )?)
    }

    /// Runs one stage (whether or not it is done), reading what the stages before it wrote,
    /// and keeps its record: written at the start (the settings, the inputs, one attempt
    /// more), every two seconds while it runs (the seconds so far, so a killed attempt's time
    /// counts), and marked complete last of all.
    ///
    /// # Errors
    /// A missing input or the stage's own error.
    pub fn run_stage<B: AutodiffBackend>(
        &self,
        stage: Stage,
        device: &B::Device,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let path = self.folder.record(stage);
        let mut current = self.expected_record(stage);
        if let Ok(Some(found)) = StageRecord::read(&path) {
            if found.digest() == current.digest() {
                (current.seconds, current.attempts) = (found.seconds, found.attempts);
            }
        }
        current.attempts += 1;
        current.write(&path)?;
        let clock = Instant::now();
        let stop = AtomicBool::new(false);
        let result = std::thread::scope(|scope| {
            let ticker = {
                let (stop, path, current) = (&stop, &path, &current);
                scope.spawn(move || {
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        if last.elapsed() >= Duration::from_secs(2) {
                            last = Instant::now();
                            let mut update = current.clone();
                            update.seconds += clock.elapsed().as_secs_f64();
                            // Best effort: the final write below is the one that counts.
                            let _ = update.write(path);
                        }
                    }
                })
            };
            let result = self.execute_stage::<B>(stage, device, log);
            stop.store(true, Ordering::Relaxed);
            let _ = ticker.join();
            result
        });
        current.seconds += clock.elapsed().as_secs_f64();
        current.complete = result.is_ok();
        current.write(&path)?;
        result
    }

    fn execute_stage<B: AutodiffBackend>(
        &self,
        stage: Stage,
        device: &B::Device,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let run = &self.folder;
        let settings = &self.settings.seeded();
        let data = run.data();
        match stage {
            Stage::Data => {
                let dir = run.root().join("data");
                let exported = export_tasks(&dir, &settings.tasks, settings.eval.per_family)?;
                log(&exported.to_string());
            }
            Stage::Pretrain => {
                let inputs = PretrainInputs {
                    data: vec![data.corpus.clone()],
                    tokenizer: None,
                    run: run.stage(Policy::Base.name()),
                };
                let done = pretrain::<B>(&inputs, &settings.pretrain, device, log)?;
                log(&done.to_string());
            }
            Stage::Sft => {
                let inputs = TuneInputs {
                    model: run.model(Policy::Base),
                    data: data.sft.clone(),
                    val: None,
                    run: run.stage(Policy::Sft.name()),
                    on_error: OnError::Stop,
                };
                let done = sft::<B>(&inputs, &settings.sft, device, log)?;
                log(&done.to_string());
            }
            Stage::SftFlawless => {
                let inputs = TuneInputs {
                    model: run.model(Policy::Base),
                    data: data.sft_flawless.clone(),
                    val: None,
                    run: run.stage(Policy::SftFlawless.name()),
                    on_error: OnError::Stop,
                };
                let done = sft::<B>(&inputs, &settings.sft, device, log)?;
                log(&done.to_string());
            }
            Stage::Collect => {
                let jobs = settings.collect.jobs(
                    &run.model(Policy::Sft),
                    &run.rankings(),
                    settings.eval.max_new_tokens,
                );
                for job in &jobs {
                    let done = collect::<B::InnerBackend>(job, device)?;
                    log(&done.to_string());
                }
            }
            Stage::Reward => {
                let inputs = TuneInputs {
                    model: run.model(Policy::Sft),
                    data: run.rankings().join("train.jsonl"),
                    val: None,
                    run: run.stage("reward"),
                    on_error: OnError::Stop,
                };
                let done = train_reward_model::<B>(&inputs, &settings.reward, device, log)?;
                log(&done.to_string());
            }
            Stage::Ppo | Stage::PpoJudge => {
                let policy = if stage == Stage::Ppo {
                    Policy::Ppo
                } else if settings.upper_bound {
                    Policy::PpoJudge
                } else {
                    return Ok(());
                };
                let inputs = PpoInputs {
                    policy: run.model(Policy::Sft),
                    reward: run.reward_model(),
                    prompts: PromptSource::Tasks,
                    ptx_shards: Some(run.stage(Policy::Base.name()).join("shards")),
                    run: run.stage(policy.name()),
                };
                let mut ppo_settings = settings.ppo.clone();
                ppo_settings.ppo.judge_as_reward |= policy == Policy::PpoJudge;
                let done = ppo::<B>(&inputs, &ppo_settings, device, log)?;
                log(&done.to_string());
            }
            Stage::Eval => {
                let inputs = EvalInputs {
                    models: Policy::ALL
                        .iter()
                        .filter(|&&p| p != Policy::PpoJudge || settings.upper_bound)
                        .map(|&p| (p, run.model(p)))
                        .collect(),
                    reward: run.reward_model(),
                    rankings: run.rankings().join("heldout.jsonl"),
                    examples: read_examples(&data.heldout)?,
                    out: run.eval(),
                };
                evaluate_pipeline::<B::InnerBackend>(&inputs, &settings.eval, device, log)?;
            }
            Stage::Report => {
                let updates = settings.ppo.ppo.updates_per_rollout();
                let markdown = write_report(run, updates, settings.seed)?;
                log(&markdown);
            }
        }
        Ok(())
    }
}

/// The first number in `value` that is NaN or infinite, named by its path.
fn non_finite(path: &str, value: &toml::Value) -> Result<()> {
    match value {
        toml::Value::Float(x) if !x.is_finite() => Err(Error::Config(format!(
            "{path} is {x}: every setting must be a finite number"
        ))),
        toml::Value::Table(table) => {
            for (key, v) in table {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                non_finite(&sub, v)?;
            }
            Ok(())
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                non_finite(&format!("{path}[{i}]"), v)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn value<T: Serialize>(settings: &T) -> serde_json::Value {
    serde_json::to_value(settings).expect("settings serialise")
}

fn remove(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else if path.exists() {
        std::fs::remove_file(path)
    } else {
        return Ok(());
    };
    result.map_err(|e| Error::io(path, e))
}
