//! The training loop shared by every stage: gradient accumulation, global-norm clipping,
//! AdamW in two groups, warm-up and cosine schedule, validation, metrics, progress and
//! checkpoints that resume exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{
    latest_checkpoint, load_record, read_state, save_record, write_checkpoint, TrainState,
};
use crate::integrity;
use crate::metrics::metric;
use crate::params::{clip_global_norm, global_grad_norm, split_grads, DecayGroups};
use crate::{Error, MetricsLog, Result, TrainConfig};

/// The loss of one micro-batch.
#[derive(Debug, Clone)]
pub struct Loss<B: AutodiffBackend> {
    /// Mean loss over the micro-batch's counted tokens (or examples), `[1]`.
    pub value: Tensor<B, 1>,
    /// Tokens (or examples) it counted, for throughput.
    pub tokens: usize,
    /// The objective's own metrics of this micro-batch (name, value); the loop logs their mean
    /// over the step's micro-batches on the step's `train` line.
    pub metrics: Vec<(String, f64)>,
}

impl<B: AutodiffBackend> Loss<B> {
    /// A loss with no metrics of its own.
    pub fn new(value: Tensor<B, 1>, tokens: usize) -> Self {
        Self {
            value,
            tokens,
            metrics: Vec::new(),
        }
    }
}

/// Which micro-batch the loop asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicroBatch {
    /// The optimizer step (from 0).
    pub step: usize,
    /// The micro-batch within the step (from 0 to `grad_accumulation - 1`).
    pub micro: usize,
    /// Micro-batches before this one in the whole run: `step * grad_accumulation + micro`.
    pub index: usize,
}

/// What a stage trains: its data and its loss. The loop does the rest.
pub trait Objective<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// The loss of one micro-batch. Its data must depend only on `batch` (and the
    /// objective's seed), so that a resumed run sees the same batches as an uninterrupted one.
    ///
    /// # Errors
    /// Bad data, or a batch the model cannot take.
    fn loss(&mut self, model: &M, batch: MicroBatch) -> Result<Loss<B>>;

    /// Validation metrics (name, value), computed without autodiff.
    ///
    /// # Errors
    /// Bad data.
    fn validate(&mut self, model: &M::InnerModule) -> Result<Vec<(String, f64)>>;

    /// State the objective carries from step to step besides its config and data (an adaptive
    /// coefficient, for example), saved with each checkpoint so that a resumed run goes on
    /// exactly. `None` (the default): nothing to save.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores what [`Objective::state`] saved.
    ///
    /// # Errors
    /// A state this objective cannot take.
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let _ = state;
        Ok(())
    }
}

/// Where a run keeps its checkpoints and metrics.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The run's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where checkpoints go.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The metrics file.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
}

/// What [`fit`] reports besides the model.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    /// Step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Mean training loss of each step this call ran, in order.
    pub train_losses: Vec<f64>,
    /// The last validation metrics.
    pub validation: Vec<(String, f64)>,
    /// Wall-clock seconds of each optimizer step this call ran (forward, backward, clipping
    /// and update; not validation or checkpoints).
    pub step_seconds: Vec<f64>,
    /// Target tokens per second of training over this call.
    pub tokens_per_second: f64,
}

type Adam<M, B> = OptimizerAdaptor<AdamW, M, B>;

fn adamw<B: AutodiffBackend, M: AutodiffModule<B>>(config: &TrainConfig, decay: f32) -> Adam<M, B> {
    let o = &config.optimizer;
    AdamWConfig::new()
        .with_beta_1(o.beta1)
        .with_beta_2(o.beta2)
        .with_epsilon(o.eps)
        .with_weight_decay(decay)
        .init()
}

/// Trains `model` on `objective` for `config.steps` optimizer steps, resuming from the newest
/// checkpoint in `run` if there is one (then `model` only supplies the structure).
///
/// # Errors
/// A bad config, data errors from the objective, a loss that diverges, or files that cannot
/// be read or written.
pub fn fit<B, M, O>(
    model: M,
    objective: &mut O,
    config: &TrainConfig,
    run: &RunDir,
) -> Result<(M, FitSummary)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Objective<B, M>,
{
    config.validate()?;
    let device = model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let mut decayed: Adam<M, B> = adamw(config, config.optimizer.weight_decay);
    let mut undecayed: Adam<M, B> = adamw(config, 0.0);
    let mut model = model;
    let mut state = TrainState {
        step: 0,
        tokens_seen: 0,
    };
    let mut resumed_from = None;

    if let Some(checkpoint) = latest_checkpoint(&run.checkpoints())? {
        // A damaged checkpoint is named, never loaded (nor silently skipped for an older one).
        let manifest = integrity::verify(&checkpoint)?;
        state = read_state(&checkpoint)?;
        model =
            integrity::load_checked(model, &checkpoint, manifest.as_ref(), &checkpoint, &device)?;
        decayed = decayed.load_record(load_record::<B, _>(
            &checkpoint.join("optim-decay"),
            &device,
        )?);
        undecayed = undecayed.load_record(load_record::<B, _>(
            &checkpoint.join("optim-no-decay"),
            &device,
        )?);
        let saved = checkpoint.join("objective.json");
        if saved.exists() {
            let text = std::fs::read_to_string(&saved).map_err(|e| Error::io(&saved, e))?;
            let value = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: saved.clone(),
                source,
            })?;
            objective.restore(value)?;
        }
        resumed_from = Some(state.step);
    }
    // After loading: a checkpoint brings its own parameter ids.
    let groups = DecayGroups::of::<B, M>(&model);
    let metrics = MetricsLog::open(&run.metrics(), state.step)?;

    let progress = if config.progress {
        ProgressBar::new(config.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    progress.set_position(state.step as u64);
    if let Some(step) = resumed_from {
        progress.suspend(|| println!("resumed from the checkpoint at step {step}"));
    }

    let mut training_seconds = 0.0;
    let mut step_seconds = Vec::new();
    let mut tokens_this_call = 0u64;
    let mut train_losses = Vec::new();
    let mut validation = Vec::new();

    while state.step < config.steps {
        let step = state.step;
        let step_started = Instant::now();
        let lr = config.optimizer.lr_at(step, config.steps);
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut loss_sum = 0.0;
        let mut step_tokens = 0usize;
        let mut extra: Vec<(String, f64, usize)> = Vec::new();
        for micro in 0..config.grad_accumulation {
            let index = step * config.grad_accumulation + micro;
            let loss = objective.loss(&model, MicroBatch { step, micro, index })?;
            step_tokens += loss.tokens;
            for (name, value) in loss.metrics {
                match extra.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) => {
                        entry.1 += value;
                        entry.2 += 1;
                    }
                    None => extra.push((name, value, 1)),
                }
            }
            let scaled = loss.value.div_scalar(config.grad_accumulation as f64);
            loss_sum += f64::from(scaled.clone().into_scalar().elem::<f32>());
            let grads = GradientsParams::from_grads(scaled.backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        if !loss_sum.is_finite() {
            return Err(Error::Diverged {
                step,
                loss: loss_sum,
            });
        }
        let mut grads = accumulator.grads();
        let grad_norm = match config.optimizer.grad_clip {
            Some(max) => clip_global_norm::<B, M>(&model, &mut grads, max),
            None => global_grad_norm::<B, M>(&model, &mut grads),
        };
        // A finite loss can still have NaN or infinite gradients (an overflow in the backward
        // pass): one step with them would write NaN into every weight.
        if !grad_norm.is_finite() {
            return Err(Error::Diverged {
                step,
                loss: grad_norm,
            });
        }
        let decay_grads = split_grads::<B, M>(&model, &mut grads, &groups.decay);
        model = decayed.step(lr, model, decay_grads);
        model = undecayed.step(lr, model, grads);
        B::sync(&device).map_err(|e| Error::Device(format!("{e:?}")))?;
        step_seconds.push(step_started.elapsed().as_secs_f64());
        training_seconds += step_seconds[step_seconds.len() - 1];

        state.step += 1;
        state.tokens_seen += step_tokens as u64;
        tokens_this_call += step_tokens as u64;
        train_losses.push(loss_sum);
        let tokens_per_second = tokens_this_call as f64 / training_seconds.max(1e-9);
        let mut line = vec![
            (metric::LOSS.into(), loss_sum),
            (metric::LR.into(), lr),
            (metric::GRAD_NORM.into(), grad_norm),
            (metric::TOKENS.into(), state.tokens_seen as f64),
            (metric::TOKENS_PER_SECOND.into(), tokens_per_second),
        ];
        line.extend(
            extra
                .into_iter()
                .map(|(name, sum, n)| (name, sum / n as f64)),
        );
        metrics.append(state.step, metric::TRAIN, &line)?;
        progress.set_position(state.step as u64);
        progress.set_message(format!(
            "loss {loss_sum:.4}  lr {lr:.2e}  {tokens_per_second:.0} tok/s"
        ));

        let last = state.step == config.steps;
        if last
            || config
                .eval_every
                .is_some_and(|n| state.step.is_multiple_of(n.get()))
        {
            validation = objective.validate(&model.valid())?;
            metrics.append(state.step, metric::VAL, &validation)?;
            let shown = validation
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>();
            // `suspend` prints whether or not the bar is drawn (it is hidden off a terminal);
            // an objective with nothing to validate prints nothing.
            progress.suspend(|| {
                if !shown.is_empty() {
                    println!(
                        "step {:>6}  train loss {loss_sum:.4}  val {}",
                        state.step,
                        shown.join("  ")
                    );
                }
            });
        }
        if last
            || config
                .checkpoint_every
                .is_some_and(|n| state.step.is_multiple_of(n.get()))
        {
            let objective_state = objective.state();
            let tensors = integrity::tensor_shapes::<B, M>(&model);
            write_checkpoint(
                &run.checkpoints(),
                &state,
                config.keep_checkpoints,
                tensors,
                |dir| {
                    if let Some(value) = &objective_state {
                        let json =
                            serde_json::to_string_pretty(value).expect("JSON values serialise");
                        ember_tokenizer::write_atomically(
                            &dir.join("objective.json"),
                            json.as_bytes(),
                        )?;
                    }
                    save_record::<B, _>(model.clone().into_record(), &dir.join("model"))?;
                    save_record::<B, _>(decayed.to_record(), &dir.join("optim-decay"))?;
                    save_record::<B, _>(undecayed.to_record(), &dir.join("optim-no-decay"))
                },
            )?;
        }
    }
    progress.finish_and_clear();
    if validation.is_empty() {
        // Resumed a run that had already finished: still report where it stands.
        validation = objective.validate(&model.valid())?;
    }
    let tokens_per_second = tokens_this_call as f64 / training_seconds.max(1e-9);
    Ok((
        model,
        FitSummary {
            resumed_from,
            train_losses,
            validation,
            step_seconds,
            tokens_per_second,
        },
    ))
}
