//! The RLHF loop as an `ember_train::Objective`: each rollout batch is sampled from the current
//! policy, scored, and then served as several epochs of minibatches; the shared loop does the
//! optimisation, clipping, schedule, metrics and checkpoints.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use ember_reward::RewardModel;
use ember_train::{EpochOrder, Loss, MicroBatch, Objective, Pretraining};
use ember_transformer::{Decoder, DecoderInput, Positions, Sampling, TokenBatch};
use serde::{Deserialize, Serialize};

use crate::metric;
use crate::rollout::mean;
use crate::sample::{padded_rows, PaddedRows};
use crate::{
    answer_mask, policy_loss, rollout, rollout_metrics, spread, token_logprobs, value_loss,
    ActorCritic, Decode, Environment, Error, Judge, PpoConfig, Prompt, Result, RolloutInputs,
    Sample,
};

/// Metrics (name, value) and the samples they were computed on.
pub type Evaluated = (Vec<(String, f64)>, Vec<Sample>);

/// The state a resumed run needs: β.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct SavedState {
    beta: f64,
}

/// What a PPO objective samples from and scores with.
pub struct PpoData<B: AutodiffBackend> {
    /// The reward model, the reference and the answer's framing tokens.
    pub environment: Environment<B::InnerBackend>,
    /// The prompts rollouts are drawn from.
    pub prompts: Vec<Prompt>,
    /// The prompts of the greedy evaluation.
    pub eval_prompts: Vec<Prompt>,
    /// An independent judge of the answers, when there is one.
    pub judge: Option<Judge>,
    /// Answer tokens to text (for the judge and the logs).
    pub decode: Decode,
    /// Pretraining data, mixed in with weight `config.ptx_coef` (PPO-ptx).
    pub ptx: Option<Pretraining<B>>,
}

/// RLHF with PPO as an objective for `ember_train::fit` over an [`ActorCritic`]. Run it for
/// `iterations × config.updates_per_rollout()` steps.
pub struct Ppo<B: AutodiffBackend> {
    config: PpoConfig,
    frozen: Environment<B::InnerBackend>,
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
    /// An objective that samples from `data.prompts` and evaluates greedily on
    /// `data.eval_prompts`.
    ///
    /// # Errors
    /// A bad config or no prompts.
    pub fn new(config: PpoConfig, data: PpoData<B>, device: &B::Device) -> Result<Self> {
        let PpoData {
            environment: frozen,
            prompts,
            eval_prompts,
            judge,
            decode,
            ptx,
        } = data;
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
        let inputs = RolloutInputs {
            policy: &inner.policy,
            critic: &inner.critic,
            prompts: &picked,
            sampling: Sampling::Temperature {
                temperature: self.config.temperature as f32,
            },
            beta: self.beta,
            seed,
        };
        let samples = rollout(
            &self.frozen,
            &inputs,
            &self.config,
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
        policy: &Decoder<B::InnerBackend>,
        critic: &RewardModel<B::InnerBackend>,
    ) -> Result<Evaluated> {
        if self.eval_prompts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let config = PpoConfig {
            prompt_baseline: false,
            ..self.config.clone()
        };
        let picked = self.eval_prompts.iter().enumerate().collect::<Vec<_>>();
        let label = |sample: &mut Sample| {
            if let Some(judge) = &self.judge {
                sample.judge = judge(&self.eval_prompts[sample.prompt], &sample.answer);
            }
        };
        let inputs = RolloutInputs {
            policy,
            critic,
            prompts: &picked,
            sampling: Sampling::Greedy,
            beta: 0.0,
            seed: 0,
        };
        let samples = rollout(&self.frozen, &inputs, &config, self.decode.as_ref(), &label)?;
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

        let PaddedRows { tokens, seq } =
            padded_rows::<B>(&picked, self.frozen.pad_token, &self.device);
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
            .map_err(|e| ember_train::Error::objective(Error::State(e)))?;
        self.beta = saved.beta;
        Ok(())
    }
}
