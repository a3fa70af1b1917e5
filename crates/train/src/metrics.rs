//! Metrics appended to a JSONL file, one object per line: `{"step": 10, "split": "train",
//! "loss": 3.2, ...}`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The names the training loop and Ember's objectives write in `metrics.jsonl`, shared by the
/// writers and the readers (the pipeline's report).
pub mod metric {
    /// A line's optimizer step.
    pub const STEP: &str = "step";
    /// A line's split: [`TRAIN`] or [`VAL`].
    pub const SPLIT: &str = "split";
    /// The split of the loop's per-step lines.
    pub const TRAIN: &str = "train";
    /// The split of the validation lines.
    pub const VAL: &str = "val";
    /// The step's mean training loss (and pretraining's and the reward model's validation loss).
    pub const LOSS: &str = "loss";
    /// The learning rate.
    pub const LR: &str = "lr";
    /// The global gradient norm before clipping.
    pub const GRAD_NORM: &str = "grad_norm";
    /// Tokens seen so far.
    pub const TOKENS: &str = "tokens";
    /// Training throughput.
    pub const TOKENS_PER_SECOND: &str = "tokens_per_second";
    /// Pretraining's validation bits per byte.
    pub const BITS_PER_BYTE: &str = "bits_per_byte";
    /// SFT's validation loss on answer tokens.
    pub const ANSWER_LOSS: &str = "answer_loss";
}

/// One line of a metrics file.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricLine {
    /// The optimizer step.
    pub step: usize,
    /// [`metric::TRAIN`] or [`metric::VAL`].
    pub split: String,
    /// The values by name (a value written as `null`, a non-finite number, is left out).
    pub values: BTreeMap<String, f64>,
}

/// The metrics file of a run.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log for a run that starts at `start_step`: lines of later steps, written by
    /// a run that was interrupted after its last checkpoint, are dropped so that a resumed run
    /// does not log the same step twice. A fresh run (step 0) starts an empty file.
    ///
    /// # Errors
    /// The file cannot be read or rewritten.
    pub fn open(path: &Path, start_step: usize) -> Result<Self> {
        let kept = if start_step == 0 || !path.exists() {
            String::new()
        } else {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            text.lines()
                .filter(|line| {
                    serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v.get(metric::STEP).and_then(Value::as_u64))
                        .is_some_and(|step| step as usize <= start_step)
                })
                .map(|line| format!("{line}\n"))
                .collect()
        };
        ember_tokenizer::write_atomically(path, kept.as_bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Appends one line.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn append(&self, step: usize, split: &str, values: &[(String, f64)]) -> Result<()> {
        let mut object = Map::new();
        object.insert(metric::STEP.into(), step.into());
        object.insert(metric::SPLIT.into(), split.into());
        for (name, value) in values {
            let value = serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number);
            object.insert(name.clone(), value);
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(file, "{}", Value::Object(object)).map_err(|e| Error::io(&self.path, e))
    }

    /// Reads a metrics file. Lines that are not metric lines (a line cut short by a kill, for
    /// example) are skipped.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read(path: &Path) -> Result<Vec<MetricLine>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let Value::Object(map) = serde_json::from_str::<Value>(line).ok()? else {
                    return None;
                };
                let step = map.get(metric::STEP)?.as_u64()? as usize;
                let split = map.get(metric::SPLIT)?.as_str()?.to_string();
                let values = map
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .filter(|(k, _)| k != metric::STEP)
                    .collect();
                Some(MetricLine {
                    step,
                    split,
                    values,
                })
            })
            .collect())
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
