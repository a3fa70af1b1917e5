//! A trained model on disk: `model.json` (its [`DecoderConfig`]) and `model.mpk` (its weights),
//! beside the `tokenizer.json` it was trained with.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use ember_transformer::{Decoder, DecoderConfig};

use crate::checkpoint::save_record;
use crate::{integrity, Error, Result};

/// Writes `model` into `dir` (created if needed): `model.mpk`, `model.json`, then
/// `manifest.json` (every file's SHA-256 and every tensor's shape, checked on load; see
/// [`crate::integrity`]). Each file is replaced atomically.
///
/// # Errors
/// The folder or files cannot be written.
pub fn save_model<B: Backend>(model: &Decoder<B>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(model.config()).expect("DecoderConfig serialises");
    let tmp = dir.join(".model.tmp");
    save_record::<B, _>(model.clone().into_record(), &tmp)?;
    let final_path = dir.join("model.mpk");
    std::fs::rename(tmp.with_extension("mpk"), &final_path)
        .map_err(|e| Error::io(&final_path, e))?;
    ember_tokenizer::write_atomically(&dir.join("model.json"), json.as_bytes())?;
    integrity::seal(dir, Some(integrity::tensor_shapes::<B, _>(model)))?;
    Ok(())
}

/// Reads the config in `dir/model.json`.
///
/// # Errors
/// A missing or unparsable file.
pub fn load_model_config(dir: &Path) -> Result<DecoderConfig> {
    let path = dir.join("model.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}

/// Loads a model written by [`save_model`] onto `device`, verified first: its files against
/// `manifest.json`, its tensors' shapes against `model.json`, its weights for NaN and infinity.
///
/// # Errors
/// Missing or damaged files ([`Error::Damaged`]), weights that do not fit the config
/// ([`Error::ShapeMismatch`]) or are not finite ([`Error::NonFinite`]).
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<Decoder<B>> {
    let manifest = integrity::verify(dir)?;
    let config = load_model_config(dir)?;
    let model = config.init_zeroed::<B>(device)?;
    integrity::load_checked(
        model,
        dir,
        manifest.as_ref(),
        &dir.join("model.json"),
        device,
    )
}
