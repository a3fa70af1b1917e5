//! Checkpoints: model, optimizer state and loop state in one folder, written atomically (a
//! temporary folder, then a rename), so an interrupted run always finds a whole checkpoint.

use std::path::{Path, PathBuf};

use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The loop's own state at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Target tokens trained on so far.
    pub tokens_seen: u64,
}

pub(crate) type FileRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Saves one record to `path` (burn adds `.mpk`), in full precision.
pub fn save_record<B: Backend, R: Record<B>>(record: R, path: &Path) -> Result<()> {
    Recorder::<B>::record(&FileRecorder::new(), record, path.to_path_buf())
        .map(|_| ())
        .map_err(|e| Error::Record {
            path: path.with_extension("mpk"),
            reason: e.to_string(),
        })
}

/// Loads one record from `path` (without `.mpk`).
pub fn load_record<B: Backend, R: Record<B>>(path: &Path, device: &B::Device) -> Result<R> {
    let file = path.with_extension("mpk");
    if !file.exists() {
        return Err(Error::io(
            &file,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    Recorder::<B>::load(&FileRecorder::new(), path.to_path_buf(), device).map_err(|e| {
        Error::Record {
            path: file,
            reason: e.to_string(),
        }
    })
}

fn step_dir(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

/// The newest complete checkpoint under `dir`, if any.
///
/// # Errors
/// `dir` exists but cannot be read.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(step) = step {
            if path.join("state.json").exists() && best.as_ref().is_none_or(|(s, _)| step > *s) {
                best = Some((step, path));
            }
        }
    }
    Ok(best.map(|(_, path)| path))
}

/// Writes a checkpoint for `state.step` with `write` filling the folder, seals it (its
/// `manifest.json`, with the model's `tensors`), then keeps only the newest `keep` checkpoints.
pub(crate) fn write_checkpoint(
    dir: &Path,
    state: &TrainState,
    keep: usize,
    tensors: std::collections::BTreeMap<String, Vec<usize>>,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".step-{:08}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write(&tmp)?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    ember_tokenizer::write_atomically(&tmp.join("state.json"), json.as_bytes())?;
    crate::integrity::seal(&tmp, Some(tensors))?;
    let final_dir = step_dir(dir, state.step);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    prune(dir, keep)?;
    Ok(final_dir)
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let mut steps = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect::<Vec<_>>();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for old in &steps[..excess] {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(())
}

/// Reads a checkpoint's loop state.
pub(crate) fn read_state(checkpoint: &Path) -> Result<TrainState> {
    let path = checkpoint.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}
