//! A stage's completion record, `stages/{name}.json`: the settings the stage ran with, the
//! digest of the stage before it (so a record stands for everything upstream of it too),
//! the seconds it has taken over all its attempts, and whether it finished. It is written
//! when the stage starts, every few seconds while it runs, and last of all its files when it
//! ends: a stage is done only if its record says so, for these settings and these inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// A stage's completion record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    /// The stage's name.
    pub stage: String,
    /// The settings it runs with (the parts of the pipeline's settings it reads, seeded).
    pub settings: Value,
    /// The digest of the record of the stage before it (empty for the first).
    pub inputs: String,
    /// Whether it finished.
    pub complete: bool,
    /// Seconds spent on it, every attempt together.
    pub seconds: f64,
    /// How many times it was started.
    pub attempts: u32,
}

impl StageRecord {
    /// A record for a stage about to start.
    pub fn new(stage: &str, settings: Value, inputs: String) -> Self {
        Self {
            stage: stage.to_string(),
            settings,
            inputs,
            complete: false,
            seconds: 0.0,
            attempts: 0,
        }
    }

    /// What the next stage's record depends on: this stage's name, settings and inputs (not
    /// its timing, which differs between identical runs).
    pub fn digest(&self) -> String {
        let key = serde_json::json!([self.stage, self.settings, self.inputs]);
        ember_train::integrity::sha256_hex(key.to_string().as_bytes())
    }

    /// Reads `path`; `None` if there is none.
    ///
    /// # Errors
    /// A file that cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::json(path, e))
    }

    /// Writes it to `path`, atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let json = serde_json::to_string_pretty(self).expect("records serialise");
        Ok(ember_tokenizer::write_atomically(path, json.as_bytes())?)
    }
}

/// The settings that differ between `before` and `now`, as `path: before → now` lines
/// (`train.steps: 400 → 500`).
pub fn differences(before: &Value, now: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", before, now, &mut out);
    out
}

fn diff(path: &str, before: &Value, now: &Value, out: &mut Vec<String>) {
    match (before, now) {
        (Value::Object(a), Value::Object(b)) => {
            let keys = a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>();
            for key in keys {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(&sub, x, y, out),
                    (x, y) => out.push(format!("{sub}: {} → {}", show(x), show(y))),
                }
            }
        }
        _ if before != now => out.push(format!(
            "{}: {} → {}",
            if path.is_empty() { "(all)" } else { path },
            before,
            now
        )),
        _ => {}
    }
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(none)".to_string(), Value::to_string)
}

/// Where the records live in a run folder.
pub fn records_dir(root: &Path) -> PathBuf {
    root.join("stages")
}

/// Every record in `dir` by stage name (for tests and tools).
///
/// # Errors
/// A record that cannot be read.
pub fn read_all(dir: &Path) -> Result<BTreeMap<String, StageRecord>> {
    let mut all = BTreeMap::new();
    if !dir.exists() {
        return Ok(all);
    }
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            if let Some(record) = StageRecord::read(&path)? {
                all.insert(record.stage.clone(), record);
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_each_changed_setting() {
        let before = json!({"train": {"steps": 400, "lr": 0.001}, "seed": 1});
        let now = json!({"train": {"steps": 500, "lr": 0.001}, "extra": true, "seed": 1});
        assert_eq!(
            differences(&before, &now),
            ["extra: (none) → true", "train.steps: 400 → 500"]
        );
        assert!(differences(&before, &before).is_empty());
    }

    #[test]
    fn the_digest_ignores_timing_but_not_settings_or_inputs() {
        let a = StageRecord::new("sft", json!({"steps": 4}), "abc".into());
        let mut timed = a.clone();
        (timed.seconds, timed.attempts, timed.complete) = (9.5, 3, true);
        assert_eq!(a.digest(), timed.digest());
        let other_settings = StageRecord::new("sft", json!({"steps": 5}), "abc".into());
        let other_inputs = StageRecord::new("sft", json!({"steps": 4}), "abd".into());
        assert_ne!(a.digest(), other_settings.digest());
        assert_ne!(a.digest(), other_inputs.digest());
        assert_eq!(a.digest().len(), 64);
    }
}
