//! Metrics appended to a JSONL file, one object per line: `{"step": 10, "split": "train",
//! "loss": 3.2, ...}`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, Result};

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
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
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
        object.insert("step".into(), step.into());
        object.insert("split".into(), split.into());
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

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
