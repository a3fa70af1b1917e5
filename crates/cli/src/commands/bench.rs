//! `ember bench`: whole training steps and generation on the chosen device, as a table.

use std::time::Instant;

use anyhow::Context as _;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Int, IntDType, Tensor, TensorData};
use ember_train::{fit, Loss, MicroBatch, Objective, OptimizerConfig, RunDir, TrainConfig};
use ember_transformer::{
    generate, Architecture, Decoder, DecoderConfig, GenerateConfig, Sampling, TokenBatch,
};

use ember_pipeline::Preset;

use super::pretrain::PresetArg;
use crate::device::{with_backend, DeviceKind};

/// The preset with `architecture` (the PyTorch peer's shapes: tiny and small), and the batch
/// it trains with (the peer's: 16 rows of tiny, 8 of the others).
fn shape(preset: Preset, architecture: Architecture) -> (DecoderConfig, usize) {
    let batch = if preset == Preset::Tiny { 16 } else { 8 };
    (preset.config().with_architecture(architecture), batch)
}

/// Arguments of `ember bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which backend runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// The model shapes to train, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tiny,small")]
    pub shapes: Vec<PresetArg>,
    /// Training steps measured per shape (after two warm-up steps); the median is reported.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// New tokens per generated row (after a 16-token prompt), with the `small` shape.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Leave out generation.
    #[arg(long)]
    pub no_generation: bool,
    /// Instead of the shapes: greedy generation of this model folder (from `ember import`,
    /// a pipeline run…) at each of `--batches`, a ChatML or Ember prompt, `--new-tokens` each.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// GPT-2-shaped models (learned positions, LayerNorm, GELU: the PyTorch peer's) or
    /// Llama-shaped ones (RoPE, RMSNorm, SwiGLU: what the pipeline trains).
    #[arg(long, value_enum, default_value = "gpt2")]
    pub architecture: ArchitectureArg,
    /// Ember's CPU kernels (activations, the attention softmax, the loss) on the cpu device;
    /// `off` runs burn's own ops there, for comparison. No effect on wgpu and cuda.
    #[arg(long, value_enum, default_value = "on")]
    pub kernels: Kernels,
    /// Decoding on the cpu device with the weight matrices packed into column panels, read
    /// once per step for every row (`on`; a quantised model's as its codes where the CPU has
    /// AVX2), as float panels only (`floats`), or multiplied as they are stored (`off`), for
    /// comparison. The same tokens every way.
    #[arg(long, value_enum, default_value = "on")]
    pub packed_weights: PackedWeights,
    /// Rows up to which an inference product on the cpu device takes Ember's few-rows kernels
    /// instead of flex's gemm (16 everywhere but `ember serve`, which uses its batch size).
    #[arg(long, default_value_t = 16)]
    pub few_rows: usize,
    /// With `--model`: the batch sizes to generate at, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 16])]
    pub batches: Vec<usize>,
    /// The float type of every tensor: parameters, activations, gradients and the optimizer's
    /// state (burn 0.21 has no mixed-precision autocast). `bf16` needs a backend that supports
    /// it (cuda; flex emulates it through f32, slowly).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// The device's peak throughput in TFLOP/s at `--precision` (an H100 SXM: 989 dense bf16);
    /// with it the training table adds MFU, the achieved share of that peak.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// bfloat16 everywhere.
    Bf16,
}

/// `--packed-weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PackedWeights {
    /// Packed once per matrix, read once per decoding step.
    On,
    /// Packed as floats, even where the values are a quantised model's codes.
    Floats,
    /// Multiplied as stored, read once per four rows.
    Off,
}

/// `--kernels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernels {
    /// Ember's kernels where they apply.
    On,
    /// burn's ops everywhere.
    Off,
}

/// `--architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchitectureArg {
    /// GPT-2's shape.
    Gpt2,
    /// Llama's shape.
    Llama,
}

impl From<ArchitectureArg> for Architecture {
    fn from(value: ArchitectureArg) -> Self {
        match value {
            ArchitectureArg::Gpt2 => Architecture::Gpt2,
            ArchitectureArg::Llama => Architecture::Llama,
        }
    }
}

/// Runs `ember bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    if let Some(peak) = args.peak_tflops {
        anyhow::ensure!(
            peak.is_finite() && peak > 0.0,
            "--peak-tflops must be a positive number, not {peak}"
        );
    }
    ember_transformer::set_flex_kernels(args.kernels == Kernels::On);
    anyhow::ensure!(
        args.batches.iter().all(|&b| b > 0),
        "--batches must all be at least 1"
    );
    ember_transformer::set_few_rows_limit(args.few_rows);
    match args.packed_weights {
        PackedWeights::On => {}
        PackedWeights::Floats => ember_transformer::set_coded_weights(false),
        PackedWeights::Off => ember_transformer::set_packed_weights_limit(0),
    }
    if let Some(model) = &args.model {
        let model = model.clone();
        return with_backend!(args.device, |B, AD, device| model_generation::<B>(
            &model, &args, &device
        ));
    }
    with_backend!(args.device, |B, AD, device| bench::<AD>(&args, &device))
}

/// Deterministic pseudo-random tokens (throughput does not depend on what they say).
fn tokens(rows: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut state = seed;
    (0..rows)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// Next-token loss on one fixed batch, uploaded once so that the steps measure training only.
struct Synthetic<B: Backend> {
    batch: TokenBatch<B>,
}

impl<B: AutodiffBackend> Objective<B, Decoder<B>> for Synthetic<B> {
    fn loss(&mut self, model: &Decoder<B>, _batch: MicroBatch) -> ember_train::Result<Loss<B>> {
        Ok(Loss::new(
            model.train_loss(&self.batch)?,
            self.batch.n_targets,
        ))
    }

    fn validate(
        &mut self,
        _model: &Decoder<B::InnerBackend>,
    ) -> ember_train::Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// FLOPs per trained token: 6 per parameter (forward and backward matmuls) plus attention's
/// 12 · layers · context · width (PaLM's appendix B; nanoGPT's MFU estimate).
fn flops_per_token(config: &DecoderConfig) -> f64 {
    6.0 * config.num_params() as f64
        + 12.0 * (config.n_layers * config.max_seq_len * config.d_model) as f64
}

fn bench<B: AutodiffBackend>(args: &Args, device: &B::Device) -> anyhow::Result<()> {
    if args.precision == Precision::Bf16 {
        // Before any tensor exists on the device: the first one fixes its defaults.
        burn::tensor::set_default_dtypes::<B>(device, FloatDType::BF16, IntDType::I64)
            .map_err(|e| anyhow::anyhow!("--precision bf16 on {:?}: {e:?}", args.device))?;
    }
    // The training loop's checkpoints go to a scratch folder, removed whatever happens.
    let scratch = std::env::temp_dir().join(format!("ember-bench-{}", std::process::id()));
    let trained = training::<B>(args, device, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    trained?;
    if !args.no_generation {
        generation::<B::InnerBackend>(args, device)?;
    }
    Ok(())
}

/// The training-step table.
fn training<B: AutodiffBackend>(
    args: &Args,
    device: &B::Device,
    scratch: &std::path::Path,
) -> anyhow::Result<()> {
    // What new tensors on the device are: the device's default, which `--precision` sets.
    let dtype = Tensor::<B, 1>::zeros([1], device).dtype();
    println!(
        "training steps ({:?}-shaped, {dtype:?}; forward, backward, global-norm clipping, AdamW; kernels {:?}), median of {}:",
        args.architecture, args.kernels, args.steps
    );
    let mfu_header = if args.peak_tflops.is_some() {
        "      MFU"
    } else {
        ""
    };
    println!(
        "{:<11} {:>9} {:>7} {:>8} {:>12} {:>11} {:>9}{mfu_header}",
        "shape", "params", "batch", "tokens", "step (ms)", "tokens/s", "GFLOP/s"
    );
    for preset in args.shapes.iter().map(|&p| Preset::from(p)) {
        let (config, batch) = shape(preset, args.architecture.into());
        let seq = config.max_seq_len;
        let model = config.init::<B>(device)?;
        let train = TrainConfig {
            steps: args.steps + 2,
            progress: false,
            eval_every: None,
            checkpoint_every: None,
            optimizer: OptimizerConfig {
                warmup_steps: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let rows = tokens(batch, seq + 1, config.vocab_size, 1);
        let mut objective = Synthetic {
            batch: TokenBatch::<B>::from_rows(&rows, device)?,
        };
        let (model, summary) = fit(
            model,
            &mut objective,
            &train,
            &RunDir::new(scratch.join(preset.name())),
        )
        .with_context(|| format!("training the {} shape", preset.name()))?;
        drop(model);
        // The first two steps allocate and warm caches.
        let step = median(summary.step_seconds[2..].to_vec());
        let tokens_per_second = (batch * seq) as f64 / step;
        let gflops = tokens_per_second * flops_per_token(&config) / 1e9;
        let mfu = args
            .peak_tflops
            .map(|peak| format!(" {:>7.2}%", 100.0 * gflops / (peak * 1e3)))
            .unwrap_or_default();
        println!(
            "{:<11} {:>8.2}M {batch:>7} {:>8} {:>12.1} {:>11.0} {gflops:>9.1}{mfu}",
            preset.name(),
            config.num_params() as f64 / 1e6,
            batch * seq,
            step * 1e3,
            tokens_per_second,
        );
    }
    Ok(())
}

/// Greedy generation with the KV cache (Ember's `generate`) and without it (the whole sequence
/// again at every step), `small` shape, 16-token prompts.
fn generation<B: Backend>(args: &Args, device: &B::Device) -> anyhow::Result<()> {
    let (config, _) = shape(Preset::Small, args.architecture.into());
    let model = config.init::<B>(device)?;
    let new_tokens = args.new_tokens.min(config.max_seq_len - 16);
    println!("\ngeneration, small shape, 16-token prompts, {new_tokens} new tokens, greedy:");
    println!(
        "{:<8} {:>16} {:>16} {:>9} {:>11}",
        "batch", "KV cache tok/s", "no cache tok/s", "speed-up", "same tokens"
    );
    for batch in [1, 8] {
        let prompts = tokens(batch, 16, config.vocab_size, 2);
        let generate_config = GenerateConfig {
            max_new_tokens: new_tokens,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            pad_token: 0,
            seed: 0,
        };
        // Warm-up, then the measured run.
        generate(
            &model,
            &prompts,
            &GenerateConfig {
                max_new_tokens: 4,
                ..generate_config.clone()
            },
        )?;
        let started = Instant::now();
        let cached = generate(&model, &prompts, &generate_config)?;
        let cached_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let uncached = generate_uncached(&model, &prompts, new_tokens, device);
        let uncached_seconds = started.elapsed().as_secs_f64();
        // Same model, same greedy rule: the same tokens, up to argmax ties that rounding
        // breaks differently (a random model's logits are close together).
        let (mut same, mut total) = (0, 0);
        for (with, without) in cached.iter().zip(&uncached) {
            same += with
                .tokens
                .iter()
                .zip(without)
                .filter(|(a, b)| a == b)
                .count();
            total += without.len();
        }
        let produced = (batch * new_tokens) as f64;
        println!(
            "{batch:<8} {:>16.0} {:>16.0} {:>8.1}× {:>10.1}%",
            produced / cached_seconds,
            produced / uncached_seconds,
            uncached_seconds / cached_seconds,
            100.0 * same as f64 / total.max(1) as f64
        );
    }
    Ok(())
}

/// Greedy generation of a model folder at each of `--batches` (1, 8, 16): the same chat
/// prompt in every row, exactly `--new-tokens` new tokens (no stop token), after a short warm-up. The peer is
/// `scripts/parity/generate_bench.py` (transformers on the same model).
fn model_generation<B: Backend>(
    folder: &std::path::Path,
    args: &Args,
    device: &B::Device,
) -> anyhow::Result<()> {
    let folder = ember_pipeline::ModelFolder::new(folder);
    let template = folder.template()?;
    let model = folder.load::<B>(device)?;
    let prompt = template.render_prompt(&ember_instruct::Conversation::new(vec![
        ember_instruct::Message::user("Tell me about the history of Paris."),
    ]))?;
    let context = model.config().max_seq_len;
    let new_tokens = args.new_tokens.min(context.saturating_sub(prompt.len()));
    println!(
        "
generation of {}, {}-token prompt, {new_tokens} new tokens, greedy:",
        folder.path().display(),
        prompt.len()
    );
    println!("{:<8} {:>14} {:>10}", "batch", "tokens/s", "seconds");
    for &batch in &args.batches {
        let prompts = vec![prompt.clone(); batch];
        let config = GenerateConfig {
            max_new_tokens: new_tokens,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            pad_token: template.pad_token(),
            seed: 0,
        };
        generate(
            &model,
            &prompts,
            &GenerateConfig {
                max_new_tokens: 2,
                ..config.clone()
            },
        )?;
        let started = Instant::now();
        let out = generate(&model, &prompts, &config)?;
        let seconds = started.elapsed().as_secs_f64();
        let produced = out.iter().map(|g| g.tokens.len()).sum::<usize>() as f64;
        println!("{batch:<8} {:>14.1} {seconds:>10.2}", produced / seconds);
    }
    let kept = ember_transformer::packed_weights();
    if kept.matrices > 0 {
        println!(
            "packed weights: {} matrices, {} of them as a quantised model's codes ({} tied \
             head), {:.1} MB",
            kept.matrices,
            kept.coded,
            kept.coded_heads,
            kept.bytes as f64 / 1e6
        );
    }
    Ok(())
}

/// Greedy decoding that runs the whole sequence through the model for every new token.
fn generate_uncached<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    let mut rows = prompts.to_vec();
    let mut produced = vec![Vec::new(); rows.len()];
    for _ in 0..new_tokens {
        let (batch, len) = (rows.len(), rows[0].len());
        let flat = rows
            .iter()
            .flatten()
            .map(|&t| i64::from(t))
            .collect::<Vec<_>>();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, len]), device);
        let logits = model.forward(input);
        let vocab = logits.dims()[2];
        let next = logits
            .slice([0..batch, len - 1..len, 0..vocab])
            .argmax(2)
            .into_data()
            .iter::<i64>()
            .collect::<Vec<_>>();
        for ((row, out), token) in rows.iter_mut().zip(&mut produced).zip(next) {
            row.push(token as u32);
            out.push(token as u32);
        }
    }
    produced
}
