//! Stage 2, supervised instruction tuning: a pretrained model learns the answers of
//! conversations (the loss on answer tokens only).

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_instruct::{read, Conversation, OnError, Rendered};
use ember_train::{fit, RunDir, Sft, SftConfig, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::pretrain::shown;
use crate::settings::{check_fraction, hold_out, start_run};
use crate::{Error, ModelFolder, Result};

/// SFT's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSettings {
    /// Share of the data held out for validation when no validation file is given.
    pub val_fraction: f64,
    /// Rows and packing.
    pub batch: SftConfig,
    /// The loop; a lower peak rate than pretraining, as fine-tuning starts from trained weights.
    pub train: TrainConfig,
}

impl Default for SftSettings {
    fn default() -> Self {
        let mut train = TrainConfig {
            steps: 200,
            ..Default::default()
        };
        train.optimizer.lr = 3e-4;
        train.optimizer.warmup_steps = 10;
        Self {
            val_fraction: 0.1,
            batch: SftConfig::default(),
            train,
        }
    }
}

/// What a stage that tunes a model on a data file reads and where it writes: SFT (on
/// conversations) and the reward model (on rankings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuneInputs {
    /// The model it starts from (pretrained for SFT, the SFT model for the reward model).
    pub model: ModelFolder,
    /// What to learn from: for SFT, conversations (messages JSONL, prompt–completion JSONL,
    /// Alpaca or ShareGPT); for the reward model, rankings (K-way or pairwise JSONL).
    pub data: PathBuf,
    /// Held-out records; without them, `val_fraction` of `data` is held out.
    pub val: Option<PathBuf>,
    /// The run folder: checkpoints, metrics, `config.toml` and the tuned model (`model/`).
    pub run: PathBuf,
    /// What to do with a malformed record.
    pub on_error: OnError,
}

/// What SFT did.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuned {
    /// The tuned model.
    pub model: ModelFolder,
    /// Training and validation conversations.
    pub conversations: (usize, usize),
    /// Malformed records skipped (with `OnError::Skip`), and the first of them.
    pub skipped: Vec<String>,
    /// The validation answer loss before tuning.
    pub loss_before: f64,
    /// The last validation metrics.
    pub validation: Vec<(String, f64)>,
    /// Answer tokens per second.
    pub tokens_per_second: f64,
}

impl std::fmt::Display for Tuned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "validation: {}   ({:.0} answer tokens/s)",
            shown(&self.validation),
            self.tokens_per_second
        )?;
        write!(
            f,
            "wrote the tuned model to {}",
            self.model.path().display()
        )
    }
}

fn load(path: &Path, on_error: OnError, skipped: &mut Vec<String>) -> Result<Vec<Conversation>> {
    let data = read(path, None, on_error)?;
    skipped.extend(data.skipped.iter().map(ToString::to_string));
    Ok(data.conversations)
}

/// Runs SFT, resuming from the run folder's last checkpoint.
///
/// # Errors
/// A bad `val_fraction`, unreadable data or model, or a training error.
pub fn sft<B: AutodiffBackend>(
    inputs: &TuneInputs,
    settings: &SftSettings,
    device: &B::Device,
    log: &mut dyn FnMut(&str),
) -> Result<Tuned> {
    check_fraction(settings.val_fraction)?;
    let context = inputs.model.config()?.max_seq_len;
    if settings.batch.row_len > context {
        return Err(Error::Config(format!(
            "sft row_len {} is longer than the model's context of {context} tokens ({}); \
             a row must fit the context",
            settings.batch.row_len,
            inputs.model.path().join("model.json").display()
        )));
    }
    start_run(&inputs.run, settings)?;
    let tokenizer = inputs.model.tokenizer()?;
    let template = inputs.model.template()?;
    let mut skipped = Vec::new();
    let mut train = load(&inputs.data, inputs.on_error, &mut skipped)?;
    let val = match &inputs.val {
        Some(path) => load(path, inputs.on_error, &mut skipped)?,
        None => {
            let (kept, held) = hold_out(train, settings.val_fraction);
            train = kept;
            held
        }
    };
    if !skipped.is_empty() {
        log(&format!(
            "skipped {} malformed record(s); the first: {}",
            skipped.len(),
            skipped[0]
        ));
    }
    let render = |conversations: &[Conversation]| -> Result<Vec<Rendered>> {
        conversations
            .iter()
            .map(|c| Ok(template.render(c)?))
            .collect()
    };
    let (train, val) = (render(&train)?, render(&val)?);
    log(&format!(
        "{} training and {} validation conversations",
        train.len(),
        val.len()
    ));
    let pad = template.pad_token();
    let model = inputs.model.load::<B>(device)?;
    let mut objective = Sft::<B>::new(&train, &val, pad, settings.batch.clone(), device)?;
    let loss_before = objective.evaluate(&model.valid())?;
    log(&format!(
        "validation answer loss before tuning: {loss_before:.4}"
    ));
    let (model, summary) = fit(
        model,
        &mut objective,
        &settings.train,
        &RunDir::new(&inputs.run),
    )?;
    let folder = ModelFolder::new(inputs.run.join("model"));
    folder.save_with_template(&model.valid(), &tokenizer, template.spec())?;
    Ok(Tuned {
        model: folder,
        conversations: (train.len(), val.len()),
        skipped,
        loss_before,
        validation: summary.validation,
        tokens_per_second: summary.tokens_per_second,
    })
}
