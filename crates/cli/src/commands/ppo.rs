//! `ember ppo`: RLHF — the SFT policy improved with PPO against a reward model, with a KL
//! penalty to the SFT model (stage 4).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_instruct::{ChatTemplate, Conversation, Message};
use ember_ppo::{ActorCritic, Frozen, Judge, Ppo, PpoConfig, Prompt};
use ember_reward::{load_reward_model, RewardModel};
use ember_tasks::{Split, TaskSet};
use ember_tokenizer::{Special, Tokenizer};
use ember_train::{
    fit, load_model, save_model, OptimizerConfig, PretrainConfig, Pretraining, RunDir, TrainConfig,
};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::device::{with_backend, DeviceKind};

/// Where the critic (value model) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticInit {
    /// A copy of the reward model (InstructGPT), its normalisation folded into the head.
    Reward,
    /// The SFT model's trunk with a zero-initialised head.
    Zero,
}

/// `ember ppo`'s configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoFile {
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

impl Default for PpoFile {
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

impl PpoFile {
    /// The shared loop's configuration.
    pub fn train_config(&self, progress: bool) -> anyhow::Result<TrainConfig> {
        if self.iterations == 0 || self.eval_every == 0 || self.checkpoint_every == 0 {
            bail!("iterations, eval_every and checkpoint_every must be at least 1");
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
    let settings = config::for_run(&args.run, args.config.as_deref(), |s: &mut PpoFile| {
        if let Some(n) = args.iterations {
            s.iterations = n;
        }
    })?;
    settings.ppo.validate()?;
    with_backend!(args.device, |B, AD, device| train::<AD>(
        &args, &settings, &device
    ))
}

fn read_prompts(path: &Path, template: &ChatTemplate) -> anyhow::Result<Vec<Prompt>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| anyhow::anyhow!("{}:{}: {reason}", path.display(), i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let prompt = value
            .get("prompt")
            .ok_or_else(|| bad("missing `prompt`".into()))?;
        let conversation = ember_reward::parse_prompt(prompt).map_err(bad)?;
        let text = conversation
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        prompts.push(Prompt {
            ids: template.render_prompt(&conversation)?,
            text,
            family: None,
        });
    }
    if prompts.is_empty() {
        bail!("{}: no prompt", path.display());
    }
    Ok(prompts)
}

/// The built-in tasks' prompts of `split`, rendered.
pub fn task_prompts(
    template: &ChatTemplate,
    split: Split,
    per_family: usize,
    seed: u64,
) -> anyhow::Result<Vec<Prompt>> {
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

fn train<B: AutodiffBackend>(
    args: &Args,
    settings: &PpoFile,
    device: &B::Device,
) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(args.policy.join("tokenizer.json"))?;
    let template = ChatTemplate::new(tokenizer.clone())?;
    let policy = load_model::<B>(&args.policy, device)
        .with_context(|| format!("loading the policy in {}", args.policy.display()))?;
    let reference = policy.valid();
    let policy = match settings.train_top_blocks {
        Some(n) => policy.train_top_blocks(n),
        None => policy,
    };
    let (reward, normalization) = load_reward_model::<B::InnerBackend>(&args.reward, device)
        .with_context(|| format!("loading the reward model in {}", args.reward.display()))?;
    let critic = match settings.critic {
        CriticInit::Reward => {
            let (model, normalization) = load_reward_model::<B>(&args.reward, device)?;
            model.with_normalization(normalization)
        }
        CriticInit::Zero => RewardModel::new(load_model::<B>(&args.policy, device)?, 0.0),
    };
    let (prompts, judge) = match &args.prompts {
        Some(path) => (read_prompts(path, &template)?, None),
        None => (
            task_prompts(
                &template,
                Split::Train,
                settings.prompts_per_family,
                settings.ppo.seed,
            )?,
            Some(task_judge()),
        ),
    };
    let eval_prompts = task_prompts(&template, Split::HeldOut, settings.eval_per_family, 0)?;
    let frozen = Frozen {
        reference,
        reward,
        normalization,
        stop_token: template.stop_token(),
        other_stops: vec![tokenizer.special(Special::Eos)?],
        pad_token: tokenizer.special(Special::Pad)?,
    };
    let ptx = match &args.ptx_shards {
        Some(dir) if settings.ppo.ptx_coef > 0.0 => Some(Pretraining::<B>::open(
            dir,
            settings.ptx_batch.clone(),
            device,
        )?),
        _ => None,
    };
    let decoder = tokenizer.clone();
    let decode = Box::new(move |ids: &[u32]| Ok(decoder.decode(ids)?));
    let mut objective = Ppo::<B>::new(
        settings.ppo.clone(),
        frozen,
        prompts,
        eval_prompts,
        judge,
        decode,
        ptx,
        device,
    )?;
    let inner_start = ActorCritic::new(policy, critic);
    // The SFT policy's greedy scores, once per run (a resumed run has them already).
    let before_path = args.run.join("before.json");
    if !before_path.exists() {
        let before = objective
            .evaluate(&inner_start.policy.valid(), &inner_start.critic.valid())?
            .0;
        println!("before PPO (greedy, held-out prompts): {}", shown(&before));
        let map = before
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>();
        ember_tokenizer::write_atomically(
            &before_path,
            serde_json::to_string_pretty(&map)?.as_bytes(),
        )?;
    }
    let train_config = settings.train_config(true)?;
    let run = RunDir::new(&args.run);
    let (model, _) = fit(inner_start, &mut objective, &train_config, &run)?;
    let model = model.valid();
    let (after, samples) = objective.evaluate(&model.policy, &model.critic)?;
    println!("after PPO (greedy, held-out prompts):  {}", shown(&after));
    let out = args.run.join("model");
    save_model(&model.policy, &out)?;
    tokenizer.save(out.join("tokenizer.json"))?;
    let mut lines = String::new();
    for s in &samples {
        let prompt = &objective.eval_prompts()[s.prompt];
        lines.push_str(&serde_json::to_string(&serde_json::json!({
            "family": prompt.family,
            "prompt": prompt.text,
            "answer": s.answer,
            "score": s.score,
            "judge": s.judge,
            "finished": s.finished,
        }))?);
        lines.push('\n');
    }
    ember_tokenizer::write_atomically(&args.run.join("samples.jsonl"), lines.as_bytes())?;
    println!("wrote the tuned policy to {}", out.display());
    Ok(())
}

fn shown(metrics: &[(String, f64)]) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join("  ")
}
