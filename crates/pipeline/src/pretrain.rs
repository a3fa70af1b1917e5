//! Stage 1, pretraining: a tokenizer (trained on the data, or given), the data as token
//! shards, the decoder trained on next-token prediction, and a sample, in one run folder that
//! an interrupted run resumes from.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_tokenizer::{
    corpus_files, write_shards, BpeConfig, ShardConfig, ShardMeta, Special, TokenShard, Tokenizer,
};
use ember_train::{fit, PretrainConfig, Pretraining, RunDir, TrainConfig};
use ember_transformer::{generate, DecoderConfig, GenerateConfig, Sampling};
use serde::{Deserialize, Serialize};

use crate::settings::{start_run, ModelSettings};
use crate::{Error, ModelFolder, Result};

/// Pretraining's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainSettings {
    /// The model.
    pub model: ModelSettings,
    /// The tokenizer trained when none is given.
    pub tokenizer: BpeConfig,
    /// The train/validation split.
    pub shards: ShardConfig,
    /// Micro-batches.
    pub batch: PretrainConfig,
    /// The loop.
    pub train: TrainConfig,
}

impl Default for PretrainSettings {
    fn default() -> Self {
        let train = TrainConfig {
            // About five minutes on a 2-core CPU for the tiny preset.
            steps: 300,
            eval_every: std::num::NonZeroUsize::new(50),
            checkpoint_every: std::num::NonZeroUsize::new(100),
            ..Default::default()
        };
        Self {
            model: ModelSettings::default(),
            tokenizer: BpeConfig {
                vocab_size: 4096,
                ..Default::default()
            },
            shards: ShardConfig::default(),
            batch: PretrainConfig {
                batch_size: 16,
                seq_len: 128,
                ..Default::default()
            },
            train,
        }
    }
}

/// What pretraining reads and where it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainInputs {
    /// Text files or folders to train on; not needed to resume a run whose shards exist.
    pub data: Vec<PathBuf>,
    /// An existing `tokenizer.json` to use instead of training one on the data.
    pub tokenizer: Option<PathBuf>,
    /// The run folder: `tokenizer.json`, `shards/`, checkpoints, `metrics.jsonl`,
    /// `config.toml` and the model (`model/`).
    pub run: PathBuf,
}

impl PretrainInputs {
    /// The trained model's folder.
    pub fn model(&self) -> ModelFolder {
        ModelFolder::new(self.run.join("model"))
    }

    /// The token shards' folder.
    pub fn shards(&self) -> PathBuf {
        self.run.join("shards")
    }
}

/// What pretraining did.
#[derive(Debug, Clone, PartialEq)]
pub struct Pretrained {
    /// The trained model.
    pub model: ModelFolder,
    /// The token shards (for PPO-ptx).
    pub shards: PathBuf,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// The last validation metrics (name, value).
    pub validation: Vec<(String, f64)>,
    /// Training throughput.
    pub tokens_per_second: f64,
    /// A sample continuing the start of the validation text.
    pub sample: String,
}

impl std::fmt::Display for Pretrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(step) = self.resumed_from {
            writeln!(f, "resumed from step {step}")?;
        }
        writeln!(
            f,
            "validation: {}   ({:.0} tokens/s)",
            shown(&self.validation),
            self.tokens_per_second
        )?;
        writeln!(f, "wrote the model to {}", self.model.path().display())?;
        write!(f, "sample:\n{}", self.sample)
    }
}

/// Metrics as `name value` pairs on one line.
pub(crate) fn shown(metrics: &[(String, f64)]) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Runs pretraining: reuses the run folder's tokenizer and shards when they are there (shards
/// made with another tokenizer are re-encoded), trains (resuming from the last checkpoint),
/// saves the model folder and writes a sample. `log` hears what is being done as it starts.
///
/// # Errors
/// No data where the run folder has no tokenizer or shards yet, unreadable data, or a
/// training error.
pub fn pretrain<B: AutodiffBackend>(
    inputs: &PretrainInputs,
    settings: &PretrainSettings,
    device: &B::Device,
    log: &mut dyn FnMut(&str),
) -> Result<Pretrained> {
    start_run(&inputs.run, settings)?;
    let tokenizer = prepare_tokenizer(inputs, settings, log)?;
    let shards = inputs.shards();
    let meta = prepare_shards(inputs, settings, &tokenizer, &shards, log)?;
    log(&format!(
        "data: {} train and {} validation tokens ({:.2} tokens per byte) from {} file(s)",
        meta.train_tokens,
        meta.val_tokens,
        meta.val_tokens_per_byte(),
        meta.files.len()
    ));
    let model_config = settings
        .model
        .resolve(tokenizer.vocab_size(), settings.batch.seq_len);
    log(&describe(&model_config));
    B::seed(device, settings.batch.seed);
    let model = model_config.init::<B>(device)?;
    let mut objective = Pretraining::<B>::open(&shards, settings.batch.clone(), device)?;
    let (model, summary) = fit(
        model,
        &mut objective,
        &settings.train,
        &RunDir::new(&inputs.run),
    )?;
    let model = model.valid();
    let folder = inputs.model();
    folder.save(&model, &tokenizer)?;

    // A sample, continuing the start of the validation text.
    let val = TokenShard::open(&shards.join("val.bin"))?;
    let prompt = val.window(0, val.len().min(8));
    let generation = GenerateConfig {
        max_new_tokens: 80,
        sampling: Sampling::TopK {
            k: 40,
            temperature: 0.8,
        },
        stop_tokens: vec![tokenizer.special(Special::Eos)?],
        pad_token: tokenizer.special(Special::Pad)?,
        seed: 0,
    };
    let generated = generate(&model, std::slice::from_ref(&prompt), &generation)?;
    let sample = tokenizer.decode(&[prompt, generated[0].tokens.clone()].concat())?;
    Ok(Pretrained {
        model: folder,
        shards,
        resumed_from: summary.resumed_from,
        validation: summary.validation,
        tokens_per_second: summary.tokens_per_second,
        sample,
    })
}

/// One line about a model's shape and size.
pub fn describe(config: &DecoderConfig) -> String {
    format!(
        "model: {:?}-shaped, {} layers × {} wide, {} heads, {:.2}M parameters",
        config.architecture,
        config.n_layers,
        config.d_model,
        config.n_heads,
        config.num_params() as f64 / 1e6
    )
}

fn no_data(inputs: &PretrainInputs, what: &str) -> Error {
    Error::Missing {
        path: inputs.run.clone(),
        reason: format!("no {what} yet, and no data to make one from"),
    }
}

fn prepare_tokenizer(
    inputs: &PretrainInputs,
    settings: &PretrainSettings,
    log: &mut dyn FnMut(&str),
) -> Result<Tokenizer> {
    let path = inputs.run.join("tokenizer.json");
    if let Some(given) = &inputs.tokenizer {
        let mut tokenizer = Tokenizer::from_file(given)?;
        let added = tokenizer.add_missing_special_tokens();
        if added > 0 {
            log(&format!(
                "added {added} of Ember's special tokens to {}",
                given.display()
            ));
        }
        tokenizer.save(&path)?;
        return Ok(tokenizer);
    }
    if path.exists() {
        return Ok(Tokenizer::from_file(&path)?);
    }
    if inputs.data.is_empty() {
        return Err(no_data(inputs, "tokenizer"));
    }
    log(&format!(
        "training a {}-token BPE tokenizer",
        settings.tokenizer.vocab_size
    ));
    let mut bpe = settings.tokenizer.clone();
    bpe.show_progress = settings.train.progress;
    let tokenizer = Tokenizer::train(&corpus_files(&inputs.data)?, &bpe)?;
    tokenizer.save(&path)?;
    Ok(tokenizer)
}

fn prepare_shards(
    inputs: &PretrainInputs,
    settings: &PretrainSettings,
    tokenizer: &Tokenizer,
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<ShardMeta> {
    if dir.join("meta.json").exists() {
        let meta = ShardMeta::load(dir)?;
        if meta.vocab_size == tokenizer.vocab_size() {
            return Ok(meta);
        }
        log("the shards were made with another tokenizer; re-encoding");
    }
    if inputs.data.is_empty() {
        return Err(no_data(inputs, "token shards"));
    }
    log("encoding the corpus into token shards");
    Ok(write_shards(
        tokenizer,
        &inputs.data,
        dir,
        &settings.shards,
    )?)
}
