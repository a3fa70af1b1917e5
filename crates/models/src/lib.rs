#![doc = include_str!("../README.md")]

mod error;
pub mod gguf;
pub mod gguf_layout;
pub mod hf;
pub mod layout;
pub mod quant;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ember_instruct::TemplateSpec;
use ember_tokenizer::{Special, Tokenizer};
use ember_transformer::{Decoder, DecoderConfig};

pub use error::{Error, Result};
pub use gguf::{GgufFile, GgufWriter};
pub use layout::{HostTensor, Weights};
pub use quant::GgmlType;

/// A model read from another format: the decoder, its tokenizer, and its chat template when
/// the file has one Ember knows.
#[derive(Debug)]
pub struct Imported<B: Backend> {
    /// The decoder, its weights in `f32`.
    pub decoder: Decoder<B>,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template (ChatML, Ember's), if the model has one Ember knows.
    pub template: Option<TemplateSpec>,
    /// The raw chat template text the file holds (Jinja), if any.
    pub chat_template_text: Option<String>,
    /// Where it came from.
    pub source: PathBuf,
}

/// The longest context Ember builds position tables for (a corrupt or absurd
/// `context_length` must not allocate them).
pub const MAX_CONTEXT: usize = 1 << 20;

/// Refuses a config whose context is beyond [`MAX_CONTEXT`].
pub(crate) fn check_size(config: &DecoderConfig, path: &Path) -> Result<()> {
    if config.max_seq_len > MAX_CONTEXT {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "a context of {} positions; Ember builds position tables up to {MAX_CONTEXT}",
                config.max_seq_len
            ),
        });
    }
    Ok(())
}

/// What a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A GGUF file.
    Gguf,
    /// A Hugging Face folder.
    HfFolder,
}

/// Whether `path` is a GGUF file or a Hugging Face folder.
///
/// # Errors
/// [`Error::Unsupported`] for anything else, saying what was expected.
pub fn source_kind(path: &Path) -> Result<SourceKind> {
    if path.is_dir() {
        if path.join(hf::CONFIG_FILE).is_file() {
            return Ok(SourceKind::HfFolder);
        }
    } else if path.is_file() {
        let mut magic = [0u8; 4];
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if file.read_exact(&mut magic).is_ok() && &magic == b"GGUF" {
            return Ok(SourceKind::Gguf);
        }
    } else {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    Err(Error::Unsupported {
        path: path.to_path_buf(),
        message: format!(
            "neither a GGUF file nor a Hugging Face folder (one with {})",
            hf::CONFIG_FILE
        ),
    })
}

/// The template a model's Jinja chat template (or, without one, its vocabulary) points to.
fn template_for(tokenizer: &Tokenizer, jinja: Option<&str>) -> Option<TemplateSpec> {
    if let Some(spec) = jinja.and_then(TemplateSpec::recognise) {
        return Some(spec);
    }
    if tokenizer.special(Special::AssistantStart).is_ok() {
        return Some(TemplateSpec::ember());
    }
    tokenizer
        .token_id("<|im_start|>")
        .is_ok()
        .then(|| TemplateSpec::chatml(None))
}

/// Reads a model from a GGUF file or a Hugging Face folder. `progress` is called with
/// (tensors done, tensors in all).
///
/// # Errors
/// A typed error naming the file and what is wrong with it; never a panic.
pub fn import<B: Backend>(
    path: &Path,
    device: &B::Device,
    progress: impl FnMut(usize, usize),
) -> Result<Imported<B>> {
    match source_kind(path)? {
        SourceKind::Gguf => import_gguf(path, device, progress),
        SourceKind::HfFolder => import_hf(path, device, progress),
    }
}

/// Reads a GGUF file (see [`import`]).
///
/// # Errors
/// See [`import`].
pub fn import_gguf<B: Backend>(
    path: &Path,
    device: &B::Device,
    progress: impl FnMut(usize, usize),
) -> Result<Imported<B>> {
    let file = GgufFile::open(path)?;
    let config = gguf_layout::config(&file)?;
    let tokenizer = gguf_layout::tokenizer(&file)?;
    let chat_template_text = file
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let hf_weights = gguf_layout::weights(&file, &config, progress)?;
    let params = layout::hf_to_ember(&config, hf_weights, path)?;
    let decoder = layout::build_decoder(&config, params, path, device)?;
    Ok(Imported {
        template: template_for(&tokenizer, chat_template_text.as_deref()),
        decoder,
        tokenizer,
        chat_template_text,
        source: path.to_path_buf(),
    })
}

/// Reads a Hugging Face folder (see [`import`]).
///
/// # Errors
/// See [`import`].
pub fn import_hf<B: Backend>(
    dir: &Path,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Imported<B>> {
    let config = hf::read_config(&dir.join(hf::CONFIG_FILE))?;
    let tokenizer = Tokenizer::from_file(dir.join(hf::TOKENIZER_FILE))?;
    let chat_template_text = hf::read_chat_template(dir)?;
    let weights = hf::read_weights(dir)?;
    progress(weights.len(), weights.len());
    let params = layout::hf_to_ember(&config, weights, dir)?;
    let decoder = layout::build_decoder(&config, params, dir, device)?;
    Ok(Imported {
        template: template_for(&tokenizer, chat_template_text.as_deref()),
        decoder,
        tokenizer,
        chat_template_text,
        source: dir.to_path_buf(),
    })
}

fn token_text(tokenizer: &Tokenizer, id: u32) -> Option<String> {
    tokenizer.inner().id_to_token(id)
}

/// Writes a decoder as a Hugging Face folder that `transformers` loads with
/// `AutoModelForCausalLM.from_pretrained`: `config.json`, `model.safetensors` (F32),
/// `tokenizer.json` and `tokenizer_config.json` with the chat template. Each file is written
/// atomically; the folder is created if needed.
///
/// # Errors
/// [`Error::Io`] and the writers' errors.
pub fn export_hf<B: Backend>(
    decoder: &Decoder<B>,
    tokenizer: &Tokenizer,
    template: Option<&TemplateSpec>,
    dir: &Path,
) -> Result<()> {
    let config = decoder.config();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let hf_weights = layout::ember_to_hf(config, layout::decoder_params(decoder));
    hf::write_safetensors(&dir.join(hf::WEIGHTS_FILE), &hf_weights)?;
    let id = |text: &str| tokenizer.token_id(text).ok();
    let (bos, eos, pad) = match template {
        Some(spec) => (
            (!spec.bos.is_empty()).then(|| spec.bos.clone()),
            spec.assistant[1]
                .split_inclusive("|>")
                .next()
                .map(str::to_string),
            Some(spec.pad.clone()),
        ),
        None => (None, None, None),
    };
    let bos_id = bos.as_deref().and_then(id);
    let eos_id = eos.as_deref().and_then(id);
    hf::write_json(
        &dir.join(hf::CONFIG_FILE),
        &hf::config_json(config, bos_id, eos_id),
    )?;
    tokenizer.save(dir.join(hf::TOKENIZER_FILE))?;
    let mut tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_seq_len,
        "clean_up_tokenization_spaces": false,
    });
    let text = |id: Option<u32>| id.and_then(|i| token_text(tokenizer, i));
    if let Some(spec) = template {
        tokenizer_config["chat_template"] = spec.to_jinja().into();
        tokenizer_config["bos_token"] = text(bos_id).into();
        tokenizer_config["eos_token"] = text(eos_id).into();
        tokenizer_config["pad_token"] = pad.into();
    }
    hf::write_json(&dir.join(hf::TOKENIZER_CONFIG_FILE), &tokenizer_config)
}

/// Writes a decoder as a GGUF file in llama.cpp's conventions (see
/// [`gguf_layout::write`]), matrices as `kind` (F32, F16 or Q8_0).
///
/// # Errors
/// [`Error::Io`] and the writer's errors.
pub fn export_gguf<B: Backend>(
    decoder: &Decoder<B>,
    tokenizer: &Tokenizer,
    template: Option<&TemplateSpec>,
    path: &Path,
    kind: GgmlType,
) -> Result<()> {
    let config: &DecoderConfig = decoder.config();
    let hf_weights = layout::ember_to_hf(config, layout::decoder_params(decoder));
    let jinja = template.map(TemplateSpec::to_jinja).unwrap_or_default();
    gguf_layout::write(path, config, hf_weights, tokenizer, &jinja, kind)
}
