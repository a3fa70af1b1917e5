//! The pipeline's held-out evaluation of every stage's model, as `eval/summary.json` holds it
//! and the report reads it.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use ember_instruct::{Conversation, Message, OnError};
use ember_reward::read_rankings;
use ember_tasks::{Example, TaskSet};
use serde::{Deserialize, Serialize};

use crate::compare::{compare, gap_closed, Comparison, PromptScore};
use crate::eval::{score_answers, Answering, JudgeScores, Scored, WinTieLoss};
use crate::reward::{evaluate_reward_model, score_answers_with};
use crate::stats::Interval;
use crate::{Error, ModelFolder, Result};

/// The models the pipeline evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The pretrained model.
    Base,
    /// The instruction-tuned model, on the demonstrations as the (imperfect) experts gave
    /// them.
    Sft,
    /// The yardstick: the same SFT on the same prompts with flawless demonstrations.
    SftFlawless,
    /// The model after RLHF.
    Ppo,
    /// The upper bound: PPO with the judge itself as the reward (a perfect reward model).
    PpoJudge,
}

impl Policy {
    /// All of them, in pipeline order.
    pub const ALL: [Policy; 5] = [
        Policy::Base,
        Policy::Sft,
        Policy::SftFlawless,
        Policy::Ppo,
        Policy::PpoJudge,
    ];

    /// The name of its stage folder and of its answers' file (`eval/{name}.jsonl`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Base => "base",
            Policy::Sft => "sft",
            Policy::SftFlawless => "sft_flawless",
            Policy::Ppo => "ppo",
            Policy::PpoJudge => "ppo_judge",
        }
    }

    /// Its name in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            Policy::Base => "base",
            Policy::Sft => "SFT",
            Policy::SftFlawless => "SFT, flawless data",
            Policy::Ppo => "PPO",
            Policy::PpoJudge => "PPO, judge as reward",
        }
    }
}

/// How the sampled answers were drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampledAnswers {
    /// Answers per prompt.
    pub samples: usize,
    /// Their temperature.
    pub temperature: f32,
}

/// One model's evaluation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PolicyEval {
    /// The judge's scores of its greedy answers.
    pub greedy: JudgeScores,
    /// The judge's scores of its sampled answers, when there was a sampled evaluation.
    pub sampled: Option<JudgeScores>,
    /// The reward model's mean normalised score of its greedy answers.
    pub reward: f64,
}

/// The reward model's agreement with the held-out rankings.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardAccuracy {
    /// Share of strictly ordered pairs the model orders the same way.
    pub accuracy: f64,
    /// Mean raw margin r_better − r_worse.
    pub mean_margin: f64,
    /// Spearman correlation with the labeler's scores within prompts.
    pub spearman_within: Option<f64>,
    /// The same pooled over prompts.
    pub spearman: Option<f64>,
    /// Pairs counted.
    pub pairs: usize,
}

/// The held-out evaluation of every stage's model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Per model.
    pub models: BTreeMap<Policy, PolicyEval>,
    /// PPO against SFT, prompt by prompt on the judge's greedy scores.
    pub ppo_vs_sft: WinTieLoss,
    /// The reward model on the held-out rankings.
    pub reward_model: RewardAccuracy,
    /// The same per task family.
    pub reward_model_by_family: BTreeMap<String, RewardAccuracy>,
    /// How the sampled answers were drawn; `None` without a sampled evaluation.
    pub sampling: Option<SampledAnswers>,
    /// Models against the SFT model, prompt by prompt with paired bootstrap intervals:
    /// `ppo`, `ppo_judge` (the upper bound) and `sft_flawless` (the yardstick), by the
    /// first model's name.
    pub versus_sft: BTreeMap<Policy, Comparison>,
    /// The share of the gap between SFT and SFT on flawless data that PPO closes, on the
    /// sampled answers (greedy without them), with its interval.
    pub gap_closed: Option<Interval>,
    /// The same for the upper bound, PPO with the judge as the reward.
    pub gap_closed_by_judge: Option<Interval>,
}

impl Summary {
    /// Reads `eval/summary.json`.
    ///
    /// # Errors
    /// A missing or damaged file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::json(path, e))
    }

    /// Writes it, atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("summaries serialise");
        ember_tokenizer::write_atomically(path, json.as_bytes())?;
        Ok(())
    }

    /// The task families evaluated (those of the SFT model's greedy answers).
    pub fn families(&self) -> Vec<String> {
        self.models
            .get(&Policy::Sft)
            .map(|m| m.greedy.families.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// The pipeline evaluation's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Held-out prompts per family (the data stage writes this many).
    pub per_family: usize,
    /// New tokens per answer.
    pub max_new_tokens: usize,
    /// Sampled answers per prompt for the judge's expected score (besides the greedy
    /// answers); 0 leaves the sampled evaluation out.
    pub samples: usize,
    /// Their temperature; PPO's sampling temperature is what it optimises.
    pub temperature: f32,
    /// Seed of the sampled answers.
    pub seed: u64,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            per_family: 25,
            max_new_tokens: 32,
            samples: 8,
            temperature: 1.0,
            seed: 0,
        }
    }
}

impl EvalSettings {
    /// How the evaluation samples its answers.
    pub fn answering(&self) -> Answering {
        Answering {
            temperature: self.temperature,
            samples: self.samples,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
            batch_size: 64,
        }
    }
}

/// Where the pipeline's evaluation reads its models and writes its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalInputs {
    /// Each model's folder.
    pub models: BTreeMap<Policy, ModelFolder>,
    /// The reward model.
    pub reward: ModelFolder,
    /// The held-out rankings the reward model is measured on.
    pub rankings: std::path::PathBuf,
    /// The held-out examples (the data stage's `heldout.jsonl`).
    pub examples: Vec<Example>,
    /// The folder for `{model}.jsonl` (every answer with its scores) and `summary.json`.
    pub out: std::path::PathBuf,
}

/// Evaluates every model on the held-out examples (greedy and sampled answers, the judge and
/// the reward model), PPO against SFT, and the reward model on the held-out rankings; writes
/// each model's answers and the summary.
///
/// # Errors
/// Unreadable models or rankings, or a generation error.
pub fn evaluate_pipeline<B: Backend>(
    inputs: &EvalInputs,
    settings: &EvalSettings,
    device: &B::Device,
    log: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let sft = inputs
        .models
        .get(&Policy::Sft)
        .ok_or_else(|| Error::Config("the evaluation needs the SFT model".into()))?;
    let template = sft.template()?;
    let tasks = TaskSet::builtin();
    let (reward_model, normalization) = inputs.reward.load_reward::<B>(device)?;
    let sampled = settings.answering();
    let mut summary = Summary {
        sampling: (settings.samples > 0).then_some(SampledAnswers {
            samples: settings.samples,
            temperature: settings.temperature,
        }),
        ..Default::default()
    };
    std::fs::create_dir_all(&inputs.out).map_err(|e| Error::io(&inputs.out, e))?;
    let mut answers: BTreeMap<Policy, Vec<Scored>> = BTreeMap::new();
    let mut per_prompt: BTreeMap<Policy, Vec<PromptScore>> = BTreeMap::new();
    for (&policy, folder) in &inputs.models {
        let name = policy.name();
        let model = folder.load::<B>(device)?;
        let greedy = score_answers(
            &model,
            &template,
            &tasks,
            &inputs.examples,
            &Answering::greedy(settings.max_new_tokens),
        )?;
        let (sampled, sampled_means) = if settings.samples > 0 {
            let scored = score_answers(&model, &template, &tasks, &inputs.examples, &sampled)?;
            let scores = JudgeScores::of(&scored);
            log(&format!(
                "{name}: mean judge score {:.3} on {} sampled answers (T = {})",
                scores.mean,
                scored.len(),
                settings.temperature
            ));
            // score_answers keeps each prompt's samples together, in the examples' order.
            let means = scored
                .chunks(settings.samples)
                .map(|c| c.iter().map(|s| s.score).sum::<f64>() / c.len() as f64)
                .collect::<Vec<_>>();
            (Some(scores), Some(means))
        } else {
            (None, None)
        };
        let pairs = greedy
            .iter()
            .map(|s| {
                let prompt = Conversation::new(vec![Message::user(&s.example.prompt)]);
                (prompt, s.output.clone())
            })
            .collect::<Vec<_>>();
        let rewards = score_answers_with(&reward_model, normalization, &template, &pairs)?
            .into_iter()
            .map(|(normalised, _)| normalised)
            .collect::<Vec<_>>();
        write_answers(
            &inputs.out.join(format!("{name}.jsonl")),
            &greedy,
            &rewards,
            sampled_means.as_deref(),
        )?;
        per_prompt.insert(policy, prompt_scores(&greedy, sampled_means.as_deref()));
        let greedy_scores = JudgeScores::of(&greedy);
        log(&format!(
            "{name}: mean judge score {:.3} on {} held-out prompts",
            greedy_scores.mean,
            inputs.examples.len()
        ));
        summary.models.insert(
            policy,
            PolicyEval {
                greedy: greedy_scores,
                sampled,
                reward: rewards.iter().sum::<f64>() / rewards.len().max(1) as f64,
            },
        );
        answers.insert(policy, greedy);
    }
    if let (Some(ppo), Some(sft)) = (answers.get(&Policy::Ppo), answers.get(&Policy::Sft)) {
        summary.ppo_vs_sft = WinTieLoss::compare(ppo, sft);
    }
    if let Some(sft) = per_prompt.get(&Policy::Sft) {
        for (&policy, scores) in &per_prompt {
            if matches!(policy, Policy::Ppo | Policy::PpoJudge | Policy::SftFlawless) {
                let comparison = compare(&[(scores, sft)], settings.seed)?;
                summary.versus_sft.insert(policy, comparison);
            }
        }
        if let Some(flawless) = per_prompt.get(&Policy::SftFlawless) {
            let closed = |tuned: Policy| -> Result<Option<Interval>> {
                let Some(tuned) = per_prompt.get(&tuned) else {
                    return Ok(None);
                };
                gap_closed(
                    &[(sft, flawless, tuned)],
                    settings.samples > 0,
                    settings.seed,
                )
            };
            summary.gap_closed = closed(Policy::Ppo)?;
            summary.gap_closed_by_judge = closed(Policy::PpoJudge)?;
        }
    }
    let held = read_rankings(&inputs.rankings, OnError::Stop)?.rankings;
    let evaluation = evaluate_reward_model(&reward_model, &template, held)?;
    let accuracy = |e: &ember_reward::Evaluation| RewardAccuracy {
        accuracy: e.overall.accuracy,
        mean_margin: e.overall.mean_margin,
        spearman_within: e.spearman_within,
        spearman: e.spearman,
        pairs: e.overall.pairs,
    };
    summary.reward_model = accuracy(&evaluation.overall);
    summary.reward_model_by_family = evaluation
        .by_family
        .iter()
        .map(|(family, e)| (family.clone(), accuracy(e)))
        .collect();
    summary.write(&inputs.out.join("summary.json"))?;
    Ok(summary)
}

/// Each prompt's greedy score and mean sampled score.
fn prompt_scores(greedy: &[Scored], sampled: Option<&[f64]>) -> Vec<PromptScore> {
    greedy
        .iter()
        .enumerate()
        .map(|(i, s)| PromptScore {
            family: s.example.family.clone(),
            prompt: s.example.prompt.clone(),
            greedy: s.score,
            sampled: sampled.map(|m| m[i]),
        })
        .collect()
}

/// Reads each prompt's scores from a model's `eval/{model}.jsonl`.
///
/// # Errors
/// A missing file or a line that is not an answer.
pub fn read_prompt_scores(path: &Path) -> Result<Vec<PromptScore>> {
    crate::data::read_jsonl(path)
}

/// Every greedy answer with the judge's and the reward model's score, and the prompt's mean
/// judge score over its sampled answers, JSONL.
fn write_answers(
    path: &Path,
    scored: &[Scored],
    rewards: &[f64],
    sampled: Option<&[f64]>,
) -> Result<()> {
    let mut lines = String::new();
    for (i, (s, r)) in scored.iter().zip(rewards).enumerate() {
        let mut value = serde_json::to_value(s).expect("answers serialise");
        value["reward"] = serde_json::json!(r);
        if let Some(means) = sampled {
            value["sampled"] = serde_json::json!(means[i]);
        }
        lines.push_str(&value.to_string());
        lines.push('\n');
    }
    ember_tokenizer::write_atomically(path, lines.as_bytes())?;
    Ok(())
}

/// Reads the answers [`evaluate_pipeline`] wrote for a model.
///
/// # Errors
/// A missing file or a line that is not an answer.
pub fn read_answers(path: &Path) -> Result<Vec<Scored>> {
    crate::data::read_jsonl(path)
}
