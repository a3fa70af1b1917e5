//! Stage 4, RLHF with PPO: the SFT policy improved against the reward model with a KL penalty
//! to the SFT model, on the built-in tasks' prompts (judged as it goes) or a prompt file.
//! Checkpoints fall on rollout boundaries, so a resumed run goes on exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_instruct::{read_prompts, ChatTemplate, Conversation, Message, OnError};
use ember_ppo::{ActorCritic, Environment, Judge, Ppo, PpoConfig, PpoData, Prompt, Sample};
use ember_reward::RewardModel;
use ember_tasks::{Split, TaskSet};
use ember_train::{fit, OptimizerConfig, PretrainConfig, Pretraining, RunDir, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::pretrain::shown;
use crate::settings::start_run;
use crate::{Error, ModelFolder, Result};

/// Where the critic (value model) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticInit {
    /// A copy of the reward model (InstructGPT), its normalisation folded into the head.
    Reward,
    /// The SFT model's trunk with a zero-initialised head.
    Zero,
}

/// PPO's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoSettings {
    /// Rollout batches; each is followed by `epochs × minibatches` optimizer steps.
    pub iterations: usize,
    /// Built-in task prompts per family to sample from (training split).
    pub prompts_per_family: usize,
    /// Held-out prompts per family for the greedy evaluation every `eval_every` iterations.
    pub eval_per_family: usize,
    /// Evaluate every this many iterations (and at the end).
    pub eval_every: usize,
    /// Checkpoint every this many iterations (and at the end).
    pub checkpoint_every: usize,
    /// Where the critic starts.
    pub critic: CriticInit,
    /// Train only the policy's top this many blocks and its final norm (the embeddings, the
    /// tied language-model head and the lower blocks stay the SFT model's); all of it when
    /// left out.
    pub train_top_blocks: Option<usize>,
    /// PPO itself.
    pub ppo: PpoConfig,
    /// The optimiser of policy and critic (constant rate by default, no weight decay).
    pub optimizer: OptimizerConfig,
    /// Windows of the pretraining data per update when `ppo.ptx_coef` > 0.
    pub ptx_batch: PretrainConfig,
}

impl Default for PpoSettings {
    fn default() -> Self {
        Self {
            iterations: 15,
            prompts_per_family: 200,
            eval_per_family: 8,
            eval_every: 5,
            checkpoint_every: 5,
            // With the leave-one-out baseline, a critic that starts at zero (and λ = 1) adds
            // the least noise to the advantages; the reward model's head, read at every
            // token, is a poor value function at first (explained variance below 0).
            critic: CriticInit::Zero,
            train_top_blocks: None,
            ppo: PpoConfig {
                lambda: 1.0,
                ..PpoConfig::default()
            },
            optimizer: OptimizerConfig {
                lr: 1e-4,
                min_lr_ratio: 1.0,
                warmup_steps: 0,
                weight_decay: 0.0,
                ..Default::default()
            },
            ptx_batch: PretrainConfig {
                batch_size: 4,
                seq_len: 64,
                ..Default::default()
            },
        }
    }
}

impl PpoSettings {
    /// The shared loop's configuration: `iterations × updates per rollout` steps, with
    /// evaluations and checkpoints between rollout batches.
    ///
    /// # Errors
    /// `iterations`, `eval_every` or `checkpoint_every` of 0.
    pub fn train_config(&self, progress: bool) -> Result<TrainConfig> {
        if self.iterations == 0 || self.eval_every == 0 || self.checkpoint_every == 0 {
            return Err(Error::Config(
                "iterations, eval_every and checkpoint_every must be at least 1".into(),
            ));
        }
        let updates = self.ppo.updates_per_rollout();
        Ok(TrainConfig {
            steps: self.iterations * updates,
            grad_accumulation: 1,
            optimizer: self.optimizer.clone(),
            eval_every: std::num::NonZeroUsize::new(self.eval_every * updates),
            // Checkpoints fall between rollout batches, so a resumed run samples its next
            // batch exactly as an uninterrupted one would.
            checkpoint_every: std::num::NonZeroUsize::new(self.checkpoint_every * updates),
            keep_checkpoints: 2,
            progress,
        })
    }
}

/// Which prompts PPO samples from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptSource {
    /// The built-in tasks' training prompts (`prompts_per_family` per family), judged by the
    /// tasks' judges as PPO goes.
    Tasks,
    /// A JSONL file of `{"prompt": …}` records (a string or a list of messages); no judge.
    File(PathBuf),
}

/// What PPO reads and where it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PpoInputs {
    /// The SFT model: the policy starts here and it stays the KL reference.
    pub policy: ModelFolder,
    /// The reward model.
    pub reward: ModelFolder,
    /// The prompts.
    pub prompts: PromptSource,
    /// Token shards of the pretraining data for PPO-ptx (used when `ppo.ptx_coef` > 0).
    pub ptx_shards: Option<PathBuf>,
    /// The run folder: checkpoints, metrics, `config.toml`, `before.json`, the tuned policy
    /// (`model/`) and its final held-out answers (`samples.jsonl`).
    pub run: PathBuf,
}

/// What PPO did.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoTrained {
    /// The tuned policy.
    pub model: ModelFolder,
    /// The SFT policy's greedy held-out metrics (computed once per run).
    pub before: BTreeMap<String, f64>,
    /// The tuned policy's.
    pub after: Vec<(String, f64)>,
}

impl std::fmt::Display for PpoTrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "after PPO (greedy, held-out prompts):  {}",
            shown(&self.after)
        )?;
        write!(
            f,
            "wrote the tuned policy to {}",
            self.model.path().display()
        )
    }
}

/// The built-in tasks' prompts of `split`, rendered.
///
/// # Errors
/// A prompt the template cannot render.
pub fn task_prompts(
    template: &ChatTemplate,
    split: Split,
    per_family: usize,
    seed: u64,
) -> Result<Vec<Prompt>> {
    TaskSet::builtin()
        .examples(split, per_family, seed)
        .into_iter()
        .map(|e| {
            let conversation = Conversation::new(vec![Message::user(&e.prompt)]);
            Ok(Prompt {
                ids: template.render_prompt(&conversation)?,
                text: e.prompt,
                family: Some(e.family),
            })
        })
        .collect()
}

/// The built-in tasks' judge over prompts that carry their family.
pub fn task_judge() -> Judge {
    let tasks = TaskSet::builtin();
    Box::new(move |prompt: &Prompt, answer: &str| {
        let family = prompt.family.as_deref()?;
        tasks.score(family, &prompt.text, answer)
    })
}

/// The prompts of a prompt file, rendered.
///
/// # Errors
/// An unreadable file, a malformed record, or no prompt.
pub fn file_prompts(path: &Path, template: &ChatTemplate) -> Result<Vec<Prompt>> {
    let read = read_prompts(path, false, OnError::Stop)?;
    if read.prompts.is_empty() {
        return Err(Error::Missing {
            path: path.to_path_buf(),
            reason: "no prompt".into(),
        });
    }
    read.prompts
        .into_iter()
        .map(|record| {
            let text = record
                .prompt
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            Ok(Prompt {
                ids: template.render_prompt(&record.prompt)?,
                text,
                family: None,
            })
        })
        .collect()
}

/// Runs PPO, resuming from the run folder's last checkpoint.
///
/// # Errors
/// Invalid settings, unreadable models or prompts, or a training error.
pub fn ppo<B: AutodiffBackend>(
    inputs: &PpoInputs,
    settings: &PpoSettings,
    device: &B::Device,
    log: &mut dyn FnMut(&str),
) -> Result<PpoTrained> {
    settings.ppo.validate()?;
    let train_config = settings.train_config(true)?;
    start_run(&inputs.run, settings)?;
    let tokenizer = inputs.policy.tokenizer()?;
    let template = inputs.policy.template()?;
    let policy = inputs.policy.load::<B>(device)?;
    let reference = policy.valid();
    let policy = match settings.train_top_blocks {
        Some(n) => policy.train_top_blocks(n),
        None => policy,
    };
    let (reward, normalization) = inputs.reward.load_reward::<B::InnerBackend>(device)?;
    let critic = match settings.critic {
        CriticInit::Reward => {
            let (model, normalization) = inputs.reward.load_reward::<B>(device)?;
            model.with_normalization(normalization)
        }
        CriticInit::Zero => RewardModel::new(inputs.policy.load::<B>(device)?, 0.0),
    };
    let (prompts, judge) = match &inputs.prompts {
        PromptSource::File(path) => (file_prompts(path, &template)?, None),
        PromptSource::Tasks => (
            task_prompts(
                &template,
                Split::Train,
                settings.prompts_per_family,
                settings.ppo.seed,
            )?,
            Some(task_judge()),
        ),
    };
    let eval_prompts = task_prompts(
        &template,
        Split::HeldOut,
        settings.eval_per_family,
        settings.ppo.seed,
    )?;
    let environment = Environment {
        reference,
        reward,
        normalization,
        stop_token: template.stop_token(),
        other_stops: vec![template.eos_token()],
        pad_token: template.pad_token(),
    };
    let ptx = match &inputs.ptx_shards {
        Some(dir) if settings.ppo.ptx_coef > 0.0 => Some(Pretraining::<B>::open(
            dir,
            settings.ptx_batch.clone(),
            device,
        )?),
        _ => None,
    };
    let decoder = tokenizer.clone();
    let decode = Box::new(move |ids: &[u32]| Ok(decoder.decode_skip_special(ids)?));
    let data = PpoData {
        environment,
        prompts,
        eval_prompts,
        judge,
        decode,
        ptx,
    };
    let mut objective = Ppo::<B>::new(settings.ppo.clone(), data, device)?;
    let start = ActorCritic::new(policy, critic);
    // The SFT policy's greedy scores, once per run (a resumed run has them already).
    let before_path = inputs.run.join("before.json");
    let before = if before_path.exists() {
        let text = std::fs::read_to_string(&before_path).map_err(|e| Error::io(&before_path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::json(&before_path, e))?
    } else {
        let before = objective
            .evaluate(&start.policy.valid(), &start.critic.valid())?
            .0;
        log(&format!(
            "before PPO (greedy, held-out prompts): {}",
            shown(&before)
        ));
        let map = before.into_iter().collect::<BTreeMap<_, _>>();
        let json = serde_json::to_string_pretty(&map).expect("metrics serialise");
        ember_tokenizer::write_atomically(&before_path, json.as_bytes())?;
        map
    };
    let (model, _) = fit(
        start,
        &mut objective,
        &train_config,
        &RunDir::new(&inputs.run),
    )?;
    let model = model.valid();
    let (after, samples) = objective.evaluate(&model.policy, &model.critic)?;
    write_samples(
        &inputs.run.join("samples.jsonl"),
        objective.eval_prompts(),
        &samples,
    )?;
    // Last: the model folder is what says the stage is done.
    let folder = ModelFolder::new(inputs.run.join("model"));
    folder.save_with_template(&model.policy, &tokenizer, template.spec())?;
    Ok(PpoTrained {
        model: folder,
        before,
        after,
    })
}

fn write_samples(path: &Path, prompts: &[Prompt], samples: &[Sample]) -> Result<()> {
    let mut lines = String::new();
    for s in samples {
        let prompt = &prompts[s.prompt];
        let line = serde_json::json!({
            "family": prompt.family,
            "prompt": prompt.text,
            "answer": s.answer,
            "score": s.score,
            "judge": s.judge,
            "finished": s.finished,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    ember_tokenizer::write_atomically(path, lines.as_bytes())?;
    Ok(())
}
