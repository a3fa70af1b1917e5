//! Real models in and out of Ember's model folders: [`import_model`] reads a GGUF file or a
//! Hugging Face folder into a [`ModelFolder`] (which every stage, `ember chat` and `ember
//! serve` then take like one Ember trained), [`export_model`] writes a folder out again.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ember_instruct::{ChatTemplate, TemplateSpec};
use ember_models::{export_gguf, export_hf, import, GgmlType, SourceKind};

use crate::{Error, ModelFolder, Result};

/// What an import read.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The file or folder read.
    pub source: PathBuf,
    /// What it was.
    pub kind: SourceKind,
    /// Its decoder's shape.
    pub config: ember_transformer::DecoderConfig,
    /// Parameters.
    pub params: usize,
    /// The chat template's name (`chatml`, `ember`).
    pub template: String,
    /// The vocabulary's size.
    pub vocab_size: usize,
}

/// Reads a GGUF file or a Hugging Face folder and saves it as the Ember model folder
/// `folder` (whole or not at all; it is replaced if it exists). `progress` is called with
/// (tensors done, tensors in all). Weights are dequantised to `f32`.
///
/// # Errors
/// A file that cannot be read (named, with what is wrong), a model Ember cannot build, or a
/// model without a chat template Ember knows (ChatML or Ember's).
pub fn import_model<B: Backend>(
    source: &Path,
    folder: &ModelFolder,
    device: &B::Device,
    progress: impl FnMut(usize, usize),
) -> Result<ImportSummary> {
    let kind = ember_models::source_kind(source)?;
    let imported = import::<B>(source, device, progress)?;
    let template = imported.template.clone().ok_or_else(|| {
        Error::Config(format!(
            "{}: no chat template Ember knows (ChatML or Ember's){}; the stages and `ember chat` \
             need one",
            source.display(),
            match &imported.chat_template_text {
                Some(_) => " in its chat template",
                None => ", and it has none",
            }
        ))
    })?;
    // The template must work over this vocabulary before anything is written.
    ChatTemplate::with_spec(imported.tokenizer.clone(), template.clone())?;
    folder.save_with_template(&imported.decoder, &imported.tokenizer, &template)?;
    let config = imported.decoder.config().clone();
    Ok(ImportSummary {
        source: source.to_path_buf(),
        kind,
        params: config.num_params(),
        template: template.name,
        vocab_size: imported.tokenizer.vocab_size(),
        config,
    })
}

/// The formats [`export_model`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A Hugging Face folder (F32 safetensors).
    HfFolder,
    /// A GGUF file with matrices in this type (F32, F16 or Q8_0).
    Gguf(GgmlType),
}

/// Writes the Ember model folder `folder` as `format` to `out` (a folder for Hugging Face, a
/// file for GGUF), for `transformers`, llama.cpp and the tools built on them.
///
/// # Errors
/// A folder that cannot be loaded, or a file that cannot be written.
pub fn export_model<B: Backend>(
    folder: &ModelFolder,
    out: &Path,
    format: ExportFormat,
    device: &B::Device,
) -> Result<()> {
    let decoder = folder.load::<B>(device)?;
    let tokenizer = folder.tokenizer()?;
    let spec: TemplateSpec = folder.template_spec()?;
    match format {
        ExportFormat::HfFolder => {
            // Into a hidden sibling, then renamed: a folder that exists is complete.
            let name = out
                .file_name()
                .ok_or_else(|| Error::Config(format!("{}: not a folder name", out.display())))?
                .to_string_lossy();
            let partial = out.with_file_name(format!(".{name}.partial"));
            if partial.exists() {
                std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            }
            export_hf(&decoder, &tokenizer, Some(&spec), &partial)?;
            if out.exists() {
                std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
            }
            std::fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
        }
        ExportFormat::Gguf(kind) => export_gguf(&decoder, &tokenizer, Some(&spec), out, kind)?,
    }
    Ok(())
}
