//! CPU training throughput of the GPT-2-shaped `tiny` and `small` configs: forward, backward,
//! global-norm clipping and the AdamW step, through Ember's own training loop.
//!
//!     cargo run --release --example train_throughput -- [--steps 8]
//!
//! The shapes match `pytorch_gpt_bench.py --sections train` (tiny: batch 16 × 128 tokens,
//! small: batch 8 × 256), so the two figures can be put side by side as a ratio; run both in
//! the same session, the machines are shared and noisy.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use ember::train::{
    fit, keep_freed_memory, Loss, MicroBatch, Objective, OptimizerConfig, RunDir, TrainConfig,
};
use ember::transformer::{Architecture, Gpt, GptConfig, TokenBatch};

type B = Autodiff<Flex>;

/// Fixed pseudo-random tokens: throughput does not depend on what the tokens say.
struct Synthetic {
    rows: Vec<Vec<u32>>,
}

impl Objective<B, Gpt<B>> for Synthetic {
    fn loss(&mut self, model: &Gpt<B>, _batch: MicroBatch) -> ember::train::Result<Loss<B>> {
        let batch = TokenBatch::from_rows(&self.rows, &Default::default())?;
        Ok(Loss::new(model.loss(&batch)?, batch.n_targets))
    }

    fn validate(&mut self, _model: &Gpt<Flex>) -> ember::train::Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let steps = std::env::args()
        .skip_while(|a| a != "--steps")
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8usize);
    let run = tempfile::tempdir()?;
    println!(
        "{:<8} {:>10} {:>8} {:>14} {:>12}",
        "config", "params", "tokens", "median step", "tokens/s"
    );
    for (name, config, batch) in [
        ("tiny", GptConfig::tiny(), 16),
        ("small", GptConfig::small(), 8),
    ] {
        let config = config.with_architecture(Architecture::Gpt2);
        let seq = config.max_seq_len;
        let mut state = 1u64;
        let rows = (0..batch)
            .map(|_| {
                (0..=seq)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 33) % config.vocab_size as u64) as u32
                    })
                    .collect()
            })
            .collect();
        let model = config.init::<B>(&Default::default())?;
        let train = TrainConfig {
            steps: steps + 2,
            progress: false,
            eval_every: None,
            checkpoint_every: None,
            optimizer: OptimizerConfig {
                warmup_steps: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let (model, summary) = fit(
            model,
            &mut Synthetic { rows },
            &train,
            &RunDir::new(run.path().join(name)),
        )?;
        // The first two steps allocate and warm caches; the median of the rest is the figure.
        let mut times = summary.step_seconds[2..].to_vec();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let tokens = batch * seq;
        println!(
            "{name:<8} {:>9.2}M {tokens:>8} {:>11.1} ms {:>12.0}",
            config.num_params() as f64 / 1e6,
            median * 1e3,
            tokens as f64 / median
        );
        drop(model.valid());
    }
    Ok(())
}
