//! The pretraining objective: next-token prediction on random windows of the token shards.

use std::path::Path;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use ember_tokenizer::{ShardMeta, TokenShard};
use ember_transformer::{Decoder, TokenBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{metric, Error, Loss, MicroBatch, Objective, Result};

/// Batching for [`Pretraining`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Tokens per row (the model sees `seq_len` inputs and predicts `seq_len` targets).
    pub seq_len: usize,
    /// Seed of the window draws.
    pub seed: u64,
    /// Validation reads at most this many non-overlapping windows of the validation shard
    /// (from its start, so every evaluation sees the same text).
    pub eval_windows: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            seq_len: 128,
            seed: 0,
            eval_windows: 64,
        }
    }
}

/// Next-token prediction over token shards written by [`ember_tokenizer::write_shards`].
#[derive(Debug)]
pub struct Pretraining<B: Backend> {
    train: TokenShard,
    val: TokenShard,
    meta: ShardMeta,
    config: PretrainConfig,
    device: B::Device,
}

/// Mixes a seed with a step and a micro-batch index (SplitMix64's finaliser).
fn mix(seed: u64, step: usize, micro: usize) -> u64 {
    let mut z =
        seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (micro as u64).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<B: Backend> Pretraining<B> {
    /// Opens the shards in `dir` (`train.bin`, `val.bin`, `meta.json`).
    ///
    /// # Errors
    /// Missing or damaged shards, a split shorter than one window, or a bad config.
    pub fn open(dir: &Path, config: PretrainConfig, device: &B::Device) -> Result<Self> {
        if config.batch_size == 0 || config.seq_len == 0 {
            return Err(Error::Config(
                "batch_size and seq_len must be at least 1".into(),
            ));
        }
        let train = TokenShard::open(&dir.join("train.bin"))?;
        let val = TokenShard::open(&dir.join("val.bin"))?;
        let meta = ShardMeta::load(dir)?;
        for (name, shard) in [("train", &train), ("val", &val)] {
            if shard.len() <= config.seq_len {
                return Err(Error::Config(format!(
                    "the {name} split has {} tokens, fewer than one window of {} + 1",
                    shard.len(),
                    config.seq_len
                )));
            }
        }
        Ok(Self {
            train,
            val,
            meta,
            config,
            device: device.clone(),
        })
    }

    /// The shards' metadata.
    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    /// The rows of micro-batch `micro` of step `step`: windows at offsets drawn from a
    /// generator seeded by `(seed, step, micro)` alone.
    pub fn train_rows(&self, step: usize, micro: usize) -> Vec<Vec<u32>> {
        let mut rng = StdRng::seed_from_u64(mix(self.config.seed, step, micro));
        let window = self.config.seq_len + 1;
        let last_start = self.train.len() - window;
        (0..self.config.batch_size)
            .map(|_| self.train.window(rng.random_range(0..=last_start), window))
            .collect()
    }

    /// Validation loss (nats per token) and bits per byte of `model`.
    ///
    /// # Errors
    /// From the model (never, for well-formed shards).
    pub fn evaluate<C: Backend<Device = B::Device>>(
        &self,
        model: &Decoder<C>,
    ) -> Result<(f64, f64)> {
        let window = self.config.seq_len + 1;
        let n_windows = ((self.val.len() - 1) / self.config.seq_len)
            .min(self.config.eval_windows)
            .max(1);
        let starts = (0..n_windows)
            .map(|i| i * self.config.seq_len)
            .collect::<Vec<_>>();
        let (mut total, mut count) = (0.0, 0usize);
        for chunk in starts.chunks(self.config.batch_size) {
            let rows = chunk
                .iter()
                .map(|&s| self.val.window(s, window))
                .collect::<Vec<_>>();
            let batch = TokenBatch::<C>::from_rows(&rows, &self.device)?;
            let loss = f64::from(model.loss(&batch)?.into_scalar().elem::<f32>());
            total += loss * batch.n_targets as f64;
            count += batch.n_targets;
        }
        let loss = total / count as f64;
        Ok((
            loss,
            loss / std::f64::consts::LN_2 * self.meta.val_tokens_per_byte(),
        ))
    }
}

impl<B: AutodiffBackend> Objective<B, Decoder<B>> for Pretraining<B> {
    fn loss(&mut self, model: &Decoder<B>, batch: MicroBatch) -> Result<Loss<B>> {
        let batch = TokenBatch::from_rows(&self.train_rows(batch.step, batch.micro), &self.device)?;
        Ok(Loss::new(model.train_loss(&batch)?, batch.n_targets))
    }

    fn validate(&mut self, model: &Decoder<B::InnerBackend>) -> Result<Vec<(String, f64)>> {
        let (loss, bits_per_byte) = self.evaluate(model)?;
        Ok(vec![
            (metric::LOSS.into(), loss),
            (metric::BITS_PER_BYTE.into(), bits_per_byte),
        ])
    }
}
