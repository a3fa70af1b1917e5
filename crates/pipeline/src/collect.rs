//! Collecting rankings for stage 3: the SFT model answers each built-in task prompt K times,
//! the tasks' judge (the labeler) ranks the answers, and the rankings go to a JSONL file.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ember_instruct::{Conversation, Message};
use ember_reward::{collect_rankings, write_rankings, CollectConfig, CollectPrompt};
use ember_tasks::{Split, TaskSet};
use ember_transformer::Sampling;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::{Error, ModelFolder, Result};

/// One collection: which prompts, how many answers, how they are ranked.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectJob {
    /// The SFT model that answers.
    pub model: ModelFolder,
    /// The JSONL file to write.
    pub output: PathBuf,
    /// The built-in tasks' training or held-out prompts.
    pub split: Split,
    /// Prompts per task family.
    pub per_family: usize,
    /// Answers per prompt (K).
    pub k: usize,
    /// Sampling temperature of the answers (above 0: the answers must differ).
    pub temperature: f32,
    /// New tokens per answer, at most.
    pub max_new_tokens: usize,
    /// Standard deviation of Gaussian noise on the judge's scores before ranking (labelers
    /// who disagree); 0 ranks exactly by the judge.
    pub noise: f64,
    /// Weight in [0, 0.1) of the tie-break by closeness to the reference answer.
    pub closeness: f64,
    /// Rank the task's expert answer (the SFT demonstration) among the sampled ones.
    pub demonstrations: bool,
    /// Seed of the prompts, the answers and the noise.
    pub seed: u64,
}

/// What a collection wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectReport {
    /// The file.
    pub output: PathBuf,
    /// Prompts answered.
    pub prompts: usize,
    /// Answers per prompt.
    pub k: usize,
    /// Rankings written.
    pub rankings: usize,
    /// Prompts left out with every answer tied.
    pub all_tied: usize,
    /// Empty answers dropped.
    pub empty_answers: usize,
    /// Demonstrations ranked with the answers.
    pub demonstrations: usize,
}

impl std::fmt::Display for CollectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} prompts × {} answers", self.prompts, self.k)?;
        if self.demonstrations > 0 {
            write!(f, " and {} demonstrations", self.demonstrations)?;
        }
        write!(
            f,
            ": wrote {} rankings to {} ({} left out with every answer tied, {} empty answers dropped)",
            self.rankings,
            self.output.display(),
            self.all_tied,
            self.empty_answers
        )
    }
}

impl CollectJob {
    /// The sampling and ranking settings it hands to `ember_reward::collect_rankings`.
    pub fn config(&self) -> CollectConfig {
        CollectConfig {
            k: self.k,
            max_new_tokens: self.max_new_tokens,
            sampling: Sampling::Temperature {
                temperature: self.temperature,
            },
            seed: self.seed,
            noise: self.noise,
            ..Default::default()
        }
    }

    /// Checks the settings before any model is loaded.
    ///
    /// # Errors
    /// [`Error::Config`]: a closeness outside [0, 0.1), a temperature that is not above 0, or
    /// what [`CollectConfig::validate`] refuses.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..0.1).contains(&self.closeness) {
            return Err(Error::Config(format!(
                "closeness {} would reorder the judge's levels: use a weight in [0, 0.1)",
                self.closeness
            )));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(
                "collecting needs different answers per prompt: use a temperature above 0".into(),
            ));
        }
        Ok(self.config().validate()?)
    }
}

/// A progress bar over `len` items.
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what}  [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("a valid progress template"),
    );
    bar
}

/// Samples, ranks and writes the rankings of `job`.
///
/// # Errors
/// A closeness outside [0, 0.1), a temperature of 0, an unreadable model or a generation
/// error.
pub fn collect<B: Backend>(job: &CollectJob, device: &B::Device) -> Result<CollectReport> {
    job.validate()?;
    let template = job.model.template()?;
    let policy = job.model.load::<B>(device)?;
    let tasks = TaskSet::builtin();
    let examples = tasks.examples(job.split, job.per_family, job.seed);
    let prompts = examples
        .iter()
        .map(|e| CollectPrompt {
            prompt: Conversation::new(vec![Message::user(&e.prompt)]),
            family: Some(e.family.clone()),
            demonstration: job.demonstrations.then(|| e.answer.clone()),
        })
        .collect::<Vec<_>>();
    let config = job.config();
    let progress = bar((prompts.len() * job.k) as u64, "answers");
    let collected = collect_rankings(
        &policy,
        &template,
        &prompts,
        &config,
        |i, answer| {
            let e = &examples[i];
            tasks
                .label(&e.family, &e.prompt, answer, job.closeness)
                .unwrap_or(0.0)
        },
        |n| progress.inc(n as u64),
    )?;
    progress.finish_and_clear();
    if collected.rankings.is_empty() {
        // Nothing to learn from: say so, and leave whatever the file held.
        return Err(Error::Missing {
            path: job.output.clone(),
            reason: format!(
                "no ranking collected ({} prompts with every answer tied, {} empty answers); the file was not written",
                collected.all_tied, collected.empty_answers
            ),
        });
    }
    write_rankings(&job.output, &collected.rankings)?;
    Ok(CollectReport {
        output: job.output.clone(),
        prompts: prompts.len(),
        k: job.k,
        rankings: collected.rankings.len(),
        all_tied: collected.all_tied,
        empty_answers: collected.empty_answers,
        demonstrations: collected.demonstrations,
    })
}

/// The pipeline's `[collect]` table: rankings from the SFT model on the training prompts
/// (for the reward model) and on held-out prompts (for its evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectSettings {
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
    /// Seed of the prompts, the answers and the noise.
    pub seed: u64,
}

impl Default for CollectSettings {
    fn default() -> Self {
        Self {
            per_family: 120,
            heldout_per_family: 40,
            k: 6,
            temperature: 1.0,
            noise: 0.0,
            closeness: 0.0,
            demonstrations: false,
            seed: 1,
        }
    }
}

impl CollectSettings {
    /// The two collections of the pipeline: training rankings into `dir/train.jsonl`, then
    /// held-out ones into `dir/heldout.jsonl`, both with the settings' seed.
    pub fn jobs(&self, model: &ModelFolder, dir: &Path, max_new_tokens: usize) -> [CollectJob; 2] {
        let job = |split: Split, per_family: usize, file: &str| CollectJob {
            model: model.clone(),
            output: dir.join(file),
            split,
            per_family,
            k: self.k,
            temperature: self.temperature,
            max_new_tokens,
            noise: self.noise,
            closeness: self.closeness,
            demonstrations: self.demonstrations && split == Split::Train,
            seed: self.seed,
        };
        [
            job(Split::Train, self.per_family, "train.jsonl"),
            job(Split::HeldOut, self.heldout_per_family, "heldout.jsonl"),
        ]
    }
}
