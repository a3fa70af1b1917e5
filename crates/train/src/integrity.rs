//! Folders that are verified before anything in them is loaded: a model folder or a checkpoint
//! carries `manifest.json`, written last, with each file's size and SHA-256 and the shape of
//! every tensor of the weights. Loading checks the files against it (a truncated, bit-flipped or
//! edited file is named, never loaded), the tensors' shapes against the config's model (a
//! `model.json` that disagrees with `model.mpk` is named, tensor by tensor, instead of a panic
//! inside burn), and the weights for NaN and infinity.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::load_record;
use crate::{Error, Result};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A file's size and SHA-256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Its length in bytes.
    pub bytes: u64,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

impl FileDigest {
    /// The digest of the file at `path`, read in 1 MiB pieces.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn of(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            bytes += n as u64;
        }
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { bytes, sha256 })
    }
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a sealed folder holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Every file of the folder but the manifest, by name.
    pub files: BTreeMap<String, FileDigest>,
    /// The shape of every float tensor of the weights, by its path in the module
    /// (`blocks.0.attention.query.weight`); empty for a folder of other records.
    #[serde(default)]
    pub tensors: BTreeMap<String, Vec<usize>>,
}

/// Writes `dir/manifest.json` over every regular file of `dir` (hidden files and folders
/// aside), atomically; `tensors` replaces the shapes, `None` keeps those of the manifest
/// already there. Call it once the folder's other files are written: a folder whose manifest
/// does not list a file's current digest is damaged.
///
/// # Errors
/// A file cannot be read or the manifest written.
pub fn seal(dir: &Path, tensors: Option<BTreeMap<String, Vec<usize>>>) -> Result<Manifest> {
    let tensors = match tensors {
        Some(tensors) => tensors,
        None => read_manifest(dir)?.map(|m| m.tensors).unwrap_or_default(),
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == MANIFEST_FILE || name.starts_with('.') || !path.is_file() {
            continue;
        }
        files.insert(name, FileDigest::of(&path)?);
    }
    let manifest = Manifest { files, tensors };
    let json = serde_json::to_string_pretty(&manifest).expect("manifests serialise");
    ember_tokenizer::write_atomically(&dir.join(MANIFEST_FILE), json.as_bytes())?;
    Ok(manifest)
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json { path, source })
}

/// Checks every file `dir/manifest.json` lists against its size and SHA-256. Returns the
/// manifest, or `None` for a folder without one (written before manifests existed: nothing
/// to check against).
///
/// # Errors
/// [`Error::Damaged`] naming the first file that is missing, of another size (truncated) or
/// of other contents (corrupted or edited).
pub fn verify(dir: &Path) -> Result<Option<Manifest>> {
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(None);
    };
    for (name, expected) in &manifest.files {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(Error::Damaged {
                path,
                reason: "missing (the manifest lists it)".into(),
            });
        }
        let found = FileDigest::of(&path)?;
        if found.bytes != expected.bytes {
            return Err(Error::Damaged {
                path,
                reason: format!(
                    "{} bytes, but {} were written (truncated or overwritten)",
                    found.bytes, expected.bytes
                ),
            });
        }
        if found.sha256 != expected.sha256 {
            return Err(Error::Damaged {
                path,
                reason: "its contents changed since it was written (SHA-256 differs from \
                         manifest.json): corrupted, or edited by hand"
                    .into(),
            });
        }
    }
    Ok(Some(manifest))
}

/// Every float parameter's shape by its path in the module and, when asked, the first one
/// holding a NaN or an infinity: one walk over the module.
struct Survey {
    path: Vec<String>,
    shapes: BTreeMap<String, Vec<usize>>,
    check_finite: bool,
    non_finite: Option<String>,
}

impl Survey {
    fn of<B: Backend, M: Module<B>>(module: &M, check_finite: bool) -> Self {
        let mut survey = Self {
            path: Vec::new(),
            shapes: BTreeMap::new(),
            check_finite,
            non_finite: None,
        };
        module.visit(&mut survey);
        survey
    }
}

impl<B: Backend> ModuleVisitor<B> for Survey {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        if self.check_finite
            && self.non_finite.is_none()
            && !param.val().is_finite().all().into_scalar().elem::<bool>()
        {
            self.non_finite = Some(name.clone());
        }
        self.shapes.insert(name, param.lazy_shape().to_vec());
    }
}

/// The shape of every float parameter of `module`, by its path.
pub fn tensor_shapes<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<usize>> {
    Survey::of::<B, M>(module, false).shapes
}

/// Checks that the model a config builds (`expected`) has the tensors, of the shapes, that
/// were saved (`saved`, from the manifest or the loaded weights).
///
/// # Errors
/// [`Error::ShapeMismatch`] naming the first tensor that differs or is missing on one side.
pub fn check_shapes(
    config: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    saved: &BTreeMap<String, Vec<usize>>,
) -> Result<()> {
    let names = expected.keys().chain(saved.keys());
    for name in names {
        let (e, s) = (expected.get(name), saved.get(name));
        if e != s {
            let show = |shape: Option<&Vec<usize>>| {
                shape.map_or_else(|| "no such tensor".to_string(), |s| format!("{s:?}"))
            };
            return Err(Error::ShapeMismatch {
                config: config.to_path_buf(),
                tensor: name.clone(),
                expected: show(e),
                saved: show(s),
            });
        }
    }
    Ok(())
}

/// Loads `dir/model.mpk` into `module` (built from the config at `config`) after the checks:
/// the weights' shapes (when the folder's manifest records them) against the module's, then
/// burn's own load, then — in one walk — the loaded tensors' shapes against the module's again
/// (burn checks them only lazily, at the first forward pass, with a panic) and their values for
/// NaN and infinity.
///
/// # Errors
/// A missing or unreadable weights file, [`Error::ShapeMismatch`], [`Error::NonFinite`], or
/// [`Error::Record`] if burn's load fails.
pub fn load_checked<B: Backend, M: Module<B>>(
    module: M,
    dir: &Path,
    manifest: Option<&Manifest>,
    config: &Path,
    device: &B::Device,
) -> Result<M> {
    let weights = dir.join("model.mpk");
    let expected = tensor_shapes::<B, M>(&module);
    if let Some(manifest) = manifest.filter(|m| !m.tensors.is_empty()) {
        check_shapes(config, &expected, &manifest.tensors)?;
    }
    let record = load_record::<B, M::Record>(&dir.join("model"), device)?;
    let loaded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| module.load_record(record)))
            .map_err(|panic| Error::Record {
                path: weights.clone(),
                reason: format!(
                    "the weights do not fit the model {} describes: {}",
                    config.display(),
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a shape mismatch")
                ),
            })?;
    let survey = Survey::of::<B, M>(&loaded, true);
    check_shapes(config, &expected, &survey.shapes)?;
    if let Some(tensor) = survey.non_finite {
        return Err(Error::NonFinite {
            path: weights,
            tensor,
        });
    }
    Ok(loaded)
}
