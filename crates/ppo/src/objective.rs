//! The RLHF loop as an `ember_train::Objective`: each rollout batch is sampled from the current
//! policy, scored, and then served as several epochs of minibatches; the shared loop does the
//! optimisation, clipping, schedule, metrics and checkpoints.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_reward::{Normalization, Padding, RewardModel, ScoreBatch};
use ember_train::{EpochOrder, Loss, MicroBatch, Objective, Pretraining};
use ember_transformer::{
    generate, DecoderInput, FinishReason, GenerateConfig, Gpt, Positions, Sampling, TokenBatch,
};
use serde::{Deserialize, Serialize};

use crate::metric;
use crate::{
    entropy, explained_variance, gae, policy_loss, shaped_score, token_logprobs, token_rewards,
    value_loss, whiten, Error, KlControl, KlEstimator, Result,
};

/// The policy being trained and its critic (value model), optimised together: their
/// parameters are disjoint, so one optimiser over both is two optimisers. Build it with
/// [`ActorCritic::new`], which makes sure of that.
#[derive(Module, Debug)]
pub struct ActorCritic<B: Backend> {
    /// The language model being tuned.
    pub policy: Gpt<B>,
    /// The value model: a transformer with a scalar head read at every token.
    pub critic: RewardModel<B>,
}

impl<B: Backend> ActorCritic<B> {
    /// Pairs a policy and a critic, giving the critic fresh parameter ids: both usually come
    /// from the same SFT weights, and a file's weights bring their ids, so without this the
    /// optimiser would see one parameter where there are two and mix their gradients.
    pub fn new(policy: Gpt<B>, critic: RewardModel<B>) -> Self {
        Self {
            policy,
            critic: ember_transformer::fresh_ids(critic),
        }
    }
}

/// PPO's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Answers per rollout batch: `rollout_prompts / samples_per_prompt` prompts, each
    /// answered `samples_per_prompt` times.
    pub rollout_prompts: usize,
    /// Answers sampled per prompt in a rollout batch.
    pub samples_per_prompt: usize,
    /// Subtract from each answer's score the mean score of the other answers to the same
    /// prompt (a leave-one-out baseline, as in RLOO) before the rewards go to GAE: the
    /// critic then only has to learn what is left, and the policy gradient is not swamped by
    /// how easy each prompt is. Needs `samples_per_prompt` ≥ 2.
    pub prompt_baseline: bool,
    /// Passes over each rollout batch.
    pub epochs: usize,
    /// Minibatches per pass (each one optimizer step).
    pub minibatches: usize,
    /// New tokens per answer, at most.
    pub max_new_tokens: usize,
    /// Sampling temperature of the rollouts; log-probabilities use the same.
    pub temperature: f64,
    /// Discount γ.
    pub gamma: f64,
    /// GAE's λ.
    pub lambda: f64,
    /// The policy's clip range ε.
    pub clip_range: f64,
    /// The value's clip range.
    pub value_clip_range: f64,
    /// Weight of the value loss.
    pub value_coef: f64,
    /// The KL estimate at each token.
    pub kl_estimator: KlEstimator,
    /// β, fixed or adaptive.
    pub kl_control: KlControl,
    /// The score of an answer cut off at `max_new_tokens` before its end marker (replacing the
    /// reward model's); none to keep the reward model's.
    pub truncation_penalty: Option<f64>,
    /// Clip the score to [−c, c].
    pub score_clip: Option<f64>,
    /// Whiten the per-token rewards (scale only) before GAE.
    pub whiten_rewards: bool,
    /// Weight of the pretraining loss mixed in (InstructGPT's PPO-ptx); 0 for none.
    pub ptx_coef: f64,
    /// Optimise the judge's score instead of the reward model's: PPO with a perfect reward
    /// model, an upper bound to compare a run with (needs a judge).
    pub judge_as_reward: bool,
    /// Seed of the prompt order and the sampling.
    pub seed: u64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            rollout_prompts: 64,
            samples_per_prompt: 4,
            prompt_baseline: true,
            epochs: 2,
            minibatches: 4,
            max_new_tokens: 32,
            temperature: 1.0,
            gamma: 1.0,
            lambda: 0.95,
            clip_range: 0.2,
            value_clip_range: 0.2,
            value_coef: 0.1,
            kl_estimator: KlEstimator::K1,
            kl_control: KlControl::default(),
            truncation_penalty: Some(-3.0),
            score_clip: Some(5.0),
            whiten_rewards: false,
            ptx_coef: 0.0,
            judge_as_reward: false,
            seed: 0,
        }
    }
}

impl PpoConfig {
    /// Optimizer steps per rollout batch: `epochs × minibatches`.
    pub fn updates_per_rollout(&self) -> usize {
        self.epochs * self.minibatches
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.rollout_prompts == 0 || self.epochs == 0 || self.minibatches == 0 {
            Some("rollout_prompts, epochs and minibatches must be at least 1".to_string())
        } else if self.samples_per_prompt == 0
            || !self.rollout_prompts.is_multiple_of(self.samples_per_prompt)
        {
            Some(format!(
                "rollout_prompts ({}) must be a multiple of samples_per_prompt ({})",
                self.rollout_prompts, self.samples_per_prompt
            ))
        } else if self.prompt_baseline && self.samples_per_prompt < 2 {
            Some("prompt_baseline needs samples_per_prompt ≥ 2".into())
        } else if self.minibatches > self.rollout_prompts {
            Some(format!(
                "{} minibatches cannot split {} prompts",
                self.minibatches, self.rollout_prompts
            ))
        } else if self.max_new_tokens == 0 {
            Some("max_new_tokens must be at least 1".into())
        } else if self.temperature.is_nan() || self.temperature <= 0.0 {
            Some(format!(
                "temperature must be above 0, got {}",
                self.temperature
            ))
        } else if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lambda) {
            Some("gamma and lambda must be in [0, 1]".into())
        } else if !(self.clip_range > 0.0 && self.value_clip_range > 0.0) {
            Some("the clip ranges must be above 0".into())
        } else if self.kl_control.initial() < 0.0 {
            Some("the KL coefficient must not be negative".into())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::Config(p)))
    }
}

/// A prompt PPO samples answers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Its rendered ids, ending where the answer starts.
    pub ids: Vec<u32>,
    /// The text a judge reads.
    pub text: String,
    /// The task family, when known.
    pub family: Option<String>,
}

/// A program that scores an answer to a prompt, independent of the reward model (the built-in
/// tasks' judge), to check that what the reward model likes is really better.
pub type Judge = Box<dyn Fn(&Prompt, &str) -> Option<f64>>;

/// Turns answer tokens into text.
pub type Decode = Box<dyn Fn(&[u32]) -> Result<String>>;

/// Metrics (name, value) and the samples they were computed on.
pub type Evaluated = (Vec<(String, f64)>, Vec<Sample>);

/// What stays fixed through a PPO run: the reference and the reward model (without autodiff,
/// so no gradient can reach them) and the tokens that frame an answer.
pub struct Frozen<B: Backend> {
    /// The SFT model, for the KL penalty.
    pub reference: Gpt<B>,
    /// The reward model.
    pub reward: RewardModel<B>,
    /// Its normalisation.
    pub normalization: Normalization,
    /// The token that ends an answer (the assistant's end marker); the reward model reads
    /// its score there.
    pub stop_token: u32,
    /// Other tokens that end generation (end of text).
    pub other_stops: Vec<u32>,
    /// The padding token.
    pub pad_token: u32,
}

/// One sampled answer with everything the updates need, per answer token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index of the prompt in the run's prompt list.
    pub prompt: usize,
    /// Prompt ids followed by the answer's tokens (its end marker included if it has one).
    pub row: Vec<u32>,
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Whether the answer ended with a stop token rather than the length limit.
    pub finished: bool,
    /// The answer's text.
    pub answer: String,
    /// The reward model's normalised score.
    pub score: f64,
    /// The score PPO optimises (penalty, clipping).
    pub shaped: f64,
    /// Per answer token: log-probability under the sampling policy.
    pub old_logp: Vec<f64>,
    /// Per answer token: log-probability under the reference.
    pub ref_logp: Vec<f64>,
    /// Per answer token: the critic's value.
    pub values: Vec<f64>,
    /// Per answer token: the KL estimate.
    pub kl: Vec<f64>,
    /// Per answer token: the advantage (whitened over the batch).
    pub advantages: Vec<f64>,
    /// Per answer token: the return.
    pub returns: Vec<f64>,
    /// Per answer token: the policy's entropy.
    pub entropy: Vec<f64>,
    /// The judge's score, if there is a judge.
    pub judge: Option<f64>,
}

/// Right-padded rows and their answer tokens laid out as next-token targets: entry t of a row
/// is about token t + 1.
struct Layout<B: Backend> {
    tokens: Tensor<B, 2, Int>,
    seq: usize,
}

fn layout<B: Backend>(samples: &[&Sample], pad: u32, device: &B::Device) -> Layout<B> {
    let seq = samples.iter().map(|s| s.row.len()).max().unwrap_or(2);
    let mut ids = Vec::with_capacity(samples.len() * seq);
    for s in samples {
        ids.extend(s.row.iter().map(|&t| i64::from(t)));
        ids.extend(std::iter::repeat_n(i64::from(pad), seq - s.row.len()));
    }
    Layout {
        tokens: Tensor::from_data(TensorData::new(ids, [samples.len(), seq]), device),
        seq,
    }
}

/// Spreads each sample's per-answer-token `values` (one slice per sample) over the `[batch, seq − 1]` target layout
/// (answer token j of a sample sits at entry `prompt_len − 1 + j`), zero elsewhere.
pub fn spread(samples: &[&Sample], seq: usize, values: &[&[f64]]) -> Vec<f32> {
    let width = seq - 1;
    let mut out = vec![0.0f32; samples.len() * width];
    for (row, (s, values)) in samples.iter().zip(values).enumerate() {
        let start = row * width + s.prompt_len - 1;
        for (j, v) in values.iter().enumerate() {
            out[start + j] = *v as f32;
        }
    }
    out
}

/// 1 at the answer tokens of the `[batch, seq − 1]` target layout (see [`spread`]), 0 at the
/// prompt and the padding.
pub fn answer_mask(samples: &[&Sample], seq: usize) -> Vec<f32> {
    let width = seq - 1;
    let mut out = vec![0.0f32; samples.len() * width];
    for (row, s) in samples.iter().enumerate() {
        let start = row * width + s.prompt_len - 1;
        out[start..start + s.row.len() - s.prompt_len].fill(1.0);
    }
    out
}

fn gather_answers<B: Backend>(per_position: Tensor<B, 2>, samples: &[&Sample]) -> Vec<Vec<f64>> {
    let [_, width] = per_position.dims();
    let flat = per_position.into_data().to_vec::<f32>().expect("floats");
    samples
        .iter()
        .enumerate()
        .map(|(row, s)| {
            let start = row * width + s.prompt_len - 1;
            let n = s.row.len() - s.prompt_len;
            flat[start..start + n]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        })
        .collect()
}

/// Samples answers to `prompts` from `policy` and scores them: log-probabilities under the
/// policy and the reference, values, KL, the reward model's score, advantages and returns.
/// `beta` is the KL coefficient; `label` sees each sample once its text and reward-model score
/// are known, before the rewards are formed (to add the judge's score, or to replace the score).
///
/// # Errors
/// From generation or the reward model.
#[allow(clippy::too_many_arguments)]
pub fn rollout<B: Backend>(
    policy: &Gpt<B>,
    critic: &RewardModel<B>,
    frozen: &Frozen<B>,
    prompts: &[(usize, &Prompt)],
    config: &PpoConfig,
    beta: f64,
    seed: u64,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    label: &dyn Fn(&mut Sample),
) -> Result<Vec<Sample>> {
    let device = policy
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let mut stops = vec![frozen.stop_token];
    stops.extend(&frozen.other_stops);
    let generation = GenerateConfig {
        max_new_tokens: config.max_new_tokens,
        sampling: Sampling::Temperature {
            temperature: config.temperature as f32,
        },
        stop_tokens: stops.clone(),
        pad_token: frozen.pad_token,
        seed,
    };
    let ids = prompts
        .iter()
        .map(|(_, p)| p.ids.clone())
        .collect::<Vec<_>>();
    let outputs = generate(policy, &ids, &generation)?;
    let mut samples = Vec::with_capacity(prompts.len());
    let mut reward_rows = Vec::with_capacity(prompts.len());
    for ((index, prompt), output) in prompts.iter().zip(outputs) {
        let content = output.content();
        let mut reward_row = prompt.ids.clone();
        reward_row.extend(content);
        reward_row.push(frozen.stop_token);
        reward_rows.push(reward_row);
        let mut row = prompt.ids.clone();
        row.extend(&output.tokens);
        samples.push(Sample {
            prompt: *index,
            row,
            prompt_len: prompt.ids.len(),
            finished: output.finish == FinishReason::Stop,
            answer: decode(content)?.trim().to_string(),
            score: 0.0,
            shaped: 0.0,
            old_logp: Vec::new(),
            ref_logp: Vec::new(),
            values: Vec::new(),
            kl: Vec::new(),
            advantages: Vec::new(),
            returns: Vec::new(),
            entropy: Vec::new(),
            judge: None,
        });
    }
    // The reward model's score of each answer.
    let heads = frozen.reward.trunk().config().n_heads;
    let batch = ScoreBatch::new(
        &reward_rows,
        frozen.pad_token,
        Padding::Right,
        heads,
        &device,
    )?;
    let raw = frozen
        .reward
        .score(&batch)
        .into_data()
        .to_vec::<f32>()
        .expect("floats");
    // Log-probabilities, entropies and values in one right-padded layout.
    let refs = samples.iter().collect::<Vec<_>>();
    let Layout { tokens, seq } = layout::<B>(&refs, frozen.pad_token, &device);
    let (logp, dist) = token_logprobs(policy, tokens.clone(), config.temperature);
    let (ref_logp, _) = token_logprobs(&frozen.reference, tokens.clone(), config.temperature);
    let values = critic
        .forward_all(DecoderInput {
            tokens,
            positions: Positions::Contiguous { start: 0 },
            mask: None,
        })
        .narrow(1, 0, seq - 1);
    let logp = gather_answers(logp, &refs);
    let ref_logp = gather_answers(ref_logp, &refs);
    let entropy = gather_answers(entropy(dist), &refs);
    let values = gather_answers(values, &refs);
    let mut rewards = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter_mut().enumerate() {
        sample.score = frozen.normalization.apply(f64::from(raw[i]));
        label(sample);
        sample.shaped = shaped_score(
            sample.score,
            sample.finished,
            config.truncation_penalty,
            config.score_clip,
        );
    }
    let baselines = if config.prompt_baseline {
        leave_one_out(
            &samples
                .iter()
                .map(|s| (s.prompt, s.shaped))
                .collect::<Vec<_>>(),
        )
    } else {
        vec![0.0; samples.len()]
    };
    for (i, sample) in samples.iter_mut().enumerate() {
        sample.kl = logp[i]
            .iter()
            .zip(&ref_logp[i])
            .map(|(&p, &q)| config.kl_estimator.estimate(p, q))
            .collect();
        sample.old_logp = logp[i].clone();
        sample.ref_logp = ref_logp[i].clone();
        sample.entropy = entropy[i].clone();
        sample.values = values[i].clone();
        rewards.push(token_rewards(
            &sample.kl,
            sample.shaped - baselines[i],
            beta,
        ));
    }
    if config.whiten_rewards {
        let flat = whiten(&rewards.concat(), false);
        let mut at = 0;
        for r in &mut rewards {
            let n = r.len();
            r.copy_from_slice(&flat[at..at + n]);
            at += n;
        }
    }
    for (sample, rewards) in samples.iter_mut().zip(&rewards) {
        let (advantages, returns) = gae(rewards, &sample.values, config.gamma, config.lambda);
        sample.advantages = advantages;
        sample.returns = returns;
    }
    let whitened = whiten(
        &samples
            .iter()
            .flat_map(|s| s.advantages.clone())
            .collect::<Vec<_>>(),
        true,
    );
    let mut at = 0;
    for sample in &mut samples {
        let n = sample.advantages.len();
        sample.advantages.copy_from_slice(&whitened[at..at + n]);
        at += n;
    }
    Ok(samples)
}

/// For each `(prompt, score)`, the mean score of the other answers to the same prompt (0 for
/// an answer with no sibling).
pub fn leave_one_out(scores: &[(usize, f64)]) -> Vec<f64> {
    let mut totals: std::collections::HashMap<usize, (f64, usize)> = Default::default();
    for &(prompt, score) in scores {
        let entry = totals.entry(prompt).or_default();
        entry.0 += score;
        entry.1 += 1;
    }
    scores
        .iter()
        .map(|&(prompt, score)| {
            let (sum, n) = totals[&prompt];
            if n > 1 {
                (sum - score) / (n - 1) as f64
            } else {
                0.0
            }
        })
        .collect()
}

fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Summary metrics of a rollout batch: mean score, shaped score, KL (per answer), entropy (per
/// token), answer length, share cut off, the judge's mean, the critic's explained variance.
pub fn rollout_metrics(samples: &[Sample]) -> Vec<(String, f64)> {
    let values = samples
        .iter()
        .flat_map(|s| s.values.clone())
        .collect::<Vec<_>>();
    let returns = samples
        .iter()
        .flat_map(|s| s.returns.clone())
        .collect::<Vec<_>>();
    let mut metrics = vec![
        (
            metric::SCORE.to_string(),
            mean(samples.iter().map(|s| s.score)),
        ),
        (
            metric::SHAPED_SCORE.into(),
            mean(samples.iter().map(|s| s.shaped)),
        ),
        (
            metric::KL.into(),
            mean(samples.iter().map(|s| s.kl.iter().sum::<f64>())),
        ),
        (
            metric::ENTROPY.into(),
            mean(samples.iter().flat_map(|s| s.entropy.clone())),
        ),
        (
            metric::ANSWER_TOKENS.into(),
            mean(samples.iter().map(|s| (s.row.len() - s.prompt_len) as f64)),
        ),
        (
            metric::CUT_OFF.into(),
            mean(samples.iter().map(|s| f64::from(u8::from(!s.finished)))),
        ),
        (
            metric::EXPLAINED_VARIANCE.into(),
            explained_variance(&values, &returns),
        ),
    ];
    if samples.iter().any(|s| s.judge.is_some()) {
        metrics.push((
            metric::JUDGE.into(),
            mean(samples.iter().filter_map(|s| s.judge)),
        ));
    }
    metrics
}

/// The state a resumed run needs: β.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct SavedState {
    beta: f64,
}

/// RLHF with PPO as an objective for `ember_train::fit` over an [`ActorCritic`]. Run it for
/// `iterations × config.updates_per_rollout()` steps.
pub struct Ppo<B: AutodiffBackend> {
    config: PpoConfig,
    frozen: Frozen<B::InnerBackend>,
    prompts: Vec<Prompt>,
    eval_prompts: Vec<Prompt>,
    judge: Option<Judge>,
    decode: Decode,
    ptx: Option<Pretraining<B>>,
    order: EpochOrder,
    beta: f64,
    /// The rollout batch being served, with its iteration and the order of its samples in
    /// each epoch.
    current: Option<(usize, Vec<Sample>)>,
    /// When the last rollout batch was ready (to time the updates that followed).
    ready_at: Option<Instant>,
    device: B::Device,
}

impl<B: AutodiffBackend> std::fmt::Debug for Ppo<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ppo")
            .field("config", &self.config)
            .field("prompts", &self.prompts.len())
            .field("eval_prompts", &self.eval_prompts.len())
            .field("beta", &self.beta)
            .finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend> Ppo<B> {
    /// An objective that samples from `prompts` and evaluates greedily on `eval_prompts`.
    /// `decode` turns answer tokens into text (for the judge and the logs); `ptx` mixes in
    /// the pretraining loss with weight `config.ptx_coef`.
    ///
    /// # Errors
    /// A bad config or no prompts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: PpoConfig,
        frozen: Frozen<B::InnerBackend>,
        prompts: Vec<Prompt>,
        eval_prompts: Vec<Prompt>,
        judge: Option<Judge>,
        decode: Decode,
        ptx: Option<Pretraining<B>>,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        if prompts.is_empty() {
            return Err(Error::Config("PPO needs at least one prompt".into()));
        }
        if config.judge_as_reward && judge.is_none() {
            return Err(Error::Config(
                "judge_as_reward needs a judge (the built-in tasks' prompts)".into(),
            ));
        }
        if config.ptx_coef > 0.0 && ptx.is_none() {
            return Err(Error::Config(
                "ptx_coef is above 0 but no pretraining data was given".into(),
            ));
        }
        Ok(Self {
            order: EpochOrder::new(prompts.len(), config.seed),
            beta: config.kl_control.initial(),
            config,
            frozen,
            prompts,
            eval_prompts,
            judge,
            decode,
            ptx,
            current: None,
            ready_at: None,
            device: device.clone(),
        })
    }

    /// The prompts of the greedy evaluation.
    pub fn eval_prompts(&self) -> &[Prompt] {
        &self.eval_prompts
    }

    /// The current KL coefficient β.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The samples of the rollout batch being served, if any.
    pub fn current_samples(&self) -> Option<&[Sample]> {
        self.current.as_ref().map(|(_, s)| s.as_slice())
    }

    /// Samples and scores rollout batch `iteration` with the current policy, and updates β.
    fn new_rollout(
        &mut self,
        model: &ActorCritic<B>,
        iteration: usize,
    ) -> Result<Vec<(String, f64)>> {
        let started = Instant::now();
        let train_seconds = self.ready_at.map(|t| (started - t).as_secs_f64());
        let inner = model.valid();
        let k = self.config.samples_per_prompt;
        let picked = self
            .order
            .batch(iteration, self.config.rollout_prompts / k)
            .into_iter()
            .flat_map(|i| std::iter::repeat_n((i, &self.prompts[i]), k))
            .collect::<Vec<_>>();
        let seed = self
            .config
            .seed
            .wrapping_add((iteration * self.config.rollout_prompts) as u64);
        let oracle = self.config.judge_as_reward;
        let label = |sample: &mut Sample| {
            if let Some(judge) = &self.judge {
                sample.judge = judge(&self.prompts[sample.prompt], &sample.answer);
                if oracle {
                    sample.score = sample.judge.unwrap_or(0.0);
                }
            }
        };
        let samples = rollout(
            &inner.policy,
            &inner.critic,
            &self.frozen,
            &picked,
            &self.config,
            self.beta,
            seed,
            self.decode.as_ref(),
            &label,
        )?;
        let mut metrics = rollout_metrics(&samples);
        let kl = metrics
            .iter()
            .find(|(k, _)| k == metric::KL)
            .map_or(0.0, |m| m.1);
        metrics.push((metric::KL_COEF.into(), self.beta));
        self.beta = self.config.kl_control.update(self.beta, kl, samples.len());
        metrics.push((
            metric::ROLLOUT_SECONDS.into(),
            started.elapsed().as_secs_f64(),
        ));
        if let Some(t) = train_seconds {
            metrics.push((metric::UPDATE_SECONDS.into(), t));
        }
        self.current = Some((iteration, samples));
        self.ready_at = Some(Instant::now());
        Ok(metrics)
    }

    /// Greedy answers to the evaluation prompts: the reward model's mean score, the judge's,
    /// the KL to the reference (per answer) and the answer length.
    ///
    /// # Errors
    /// From generation or the reward model.
    pub fn evaluate(
        &self,
        policy: &Gpt<B::InnerBackend>,
        critic: &RewardModel<B::InnerBackend>,
    ) -> Result<Evaluated> {
        if self.eval_prompts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let greedy = PpoConfig {
            prompt_baseline: false,
            // Near-greedy sampling: a temperature this low always picks the top token. (The
            // log-probabilities of this rollout use it too; only its scores are reported.)
            temperature: 1e-4,
            ..self.config.clone()
        };
        let picked = self.eval_prompts.iter().enumerate().collect::<Vec<_>>();
        let label = |sample: &mut Sample| {
            if let Some(judge) = &self.judge {
                sample.judge = judge(&self.eval_prompts[sample.prompt], &sample.answer);
            }
        };
        let samples = rollout(
            policy,
            critic,
            &self.frozen,
            &picked,
            &greedy,
            0.0,
            0,
            self.decode.as_ref(),
            &label,
        )?;
        let mut metrics = vec![
            (
                metric::SCORE.to_string(),
                mean(samples.iter().map(|s| s.score)),
            ),
            (
                metric::ANSWER_TOKENS.into(),
                mean(samples.iter().map(|s| (s.row.len() - s.prompt_len) as f64)),
            ),
        ];
        if samples.iter().any(|s| s.judge.is_some()) {
            metrics.push((
                metric::JUDGE.into(),
                mean(samples.iter().filter_map(|s| s.judge)),
            ));
        }
        Ok((metrics, samples))
    }
}

impl<B: AutodiffBackend> Objective<B, ActorCritic<B>> for Ppo<B> {
    fn loss(&mut self, model: &ActorCritic<B>, batch: MicroBatch) -> ember_train::Result<Loss<B>> {
        let updates = self.config.updates_per_rollout();
        let iteration = batch.index / updates;
        let mut metrics = Vec::new();
        if self.current.as_ref().is_none_or(|(i, _)| *i != iteration) {
            metrics = self.new_rollout(model, iteration)?;
        }
        let (_, samples) = self.current.as_ref().expect("just made");
        // This update's minibatch: epoch e visits the samples in its own shuffled order.
        let within = batch.index % updates;
        let (epoch, part) = (
            within / self.config.minibatches,
            within % self.config.minibatches,
        );
        let mut order = EpochOrder::new(samples.len(), self.config.seed ^ iteration as u64);
        let n = samples.len();
        let (start, end) = (
            part * n / self.config.minibatches,
            (part + 1) * n / self.config.minibatches,
        );
        let picked = (start..end)
            .map(|i| &samples[order.at(epoch * n + i)])
            .collect::<Vec<_>>();

        let Layout { tokens, seq } = layout::<B>(&picked, self.frozen.pad_token, &self.device);
        let width = seq - 1;
        let host = |values: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(values, [picked.len(), width]), &self.device)
        };
        let mask = host(answer_mask(&picked, seq));
        let field = |get: fn(&Sample) -> &Vec<f64>| {
            picked.iter().map(|s| get(s).as_slice()).collect::<Vec<_>>()
        };
        let old_logp = host(spread(&picked, seq, &field(|s| &s.old_logp)));
        let old_values = host(spread(&picked, seq, &field(|s| &s.values)));
        let advantages = host(spread(&picked, seq, &field(|s| &s.advantages)));
        let returns = host(spread(&picked, seq, &field(|s| &s.returns)));

        let (logp, _) = token_logprobs(&model.policy, tokens.clone(), self.config.temperature);
        let values = model
            .critic
            .forward_all(DecoderInput {
                tokens,
                positions: Positions::Contiguous { start: 0 },
                mask: None,
            })
            .narrow(1, 0, width);
        let policy = policy_loss(
            logp,
            old_logp,
            advantages,
            mask.clone(),
            self.config.clip_range,
        );
        let (value, value_clipped) = value_loss(
            values,
            old_values,
            returns,
            mask.clone(),
            self.config.value_clip_range,
        );
        let scalar = |t: &Tensor<B, 1>| f64::from(t.clone().into_scalar().elem::<f32>());
        metrics.push((metric::POLICY_LOSS.into(), scalar(&policy.loss)));
        metrics.push((metric::VALUE_LOSS.into(), scalar(&value)));
        metrics.push((metric::CLIP_FRACTION.into(), policy.clip_fraction));
        metrics.push((metric::VALUE_CLIP_FRACTION.into(), value_clipped));
        metrics.push((metric::APPROX_KL.into(), policy.approx_kl));
        let mut total = policy.loss + value.mul_scalar(self.config.value_coef);
        if let (Some(ptx), true) = (&self.ptx, self.config.ptx_coef > 0.0) {
            let rows = ptx.train_rows(batch.step, batch.micro);
            let lm = model
                .policy
                .loss(&TokenBatch::<B>::from_rows(&rows, &self.device)?)?;
            metrics.push((metric::PTX_LOSS.into(), scalar(&lm)));
            total = total + lm.mul_scalar(self.config.ptx_coef);
        }
        let tokens = picked.iter().map(|s| s.row.len() - s.prompt_len).sum();
        Ok(Loss {
            value: total,
            tokens,
            metrics,
        })
    }

    fn validate(
        &mut self,
        model: &ActorCritic<B::InnerBackend>,
    ) -> ember_train::Result<Vec<(String, f64)>> {
        Ok(self.evaluate(&model.policy, &model.critic)?.0)
    }

    fn state(&self) -> Option<serde_json::Value> {
        Some(serde_json::to_value(SavedState { beta: self.beta }).expect("serialises"))
    }

    fn restore(&mut self, state: serde_json::Value) -> ember_train::Result<()> {
        let saved: SavedState = serde_json::from_value(state)
            .map_err(|e| ember_train::Error::Config(format!("PPO state: {e}")))?;
        self.beta = saved.beta;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leave_one_out_baseline_is_the_mean_of_the_siblings() {
        let baselines = leave_one_out(&[(0, 1.0), (1, 5.0), (0, 2.0), (0, 6.0), (2, 3.0)]);
        assert_eq!(baselines, vec![4.0, 0.0, 3.5, 1.5, 0.0]);
    }
}
