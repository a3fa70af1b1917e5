//! A model folder: the weights (`model.mpk`), the model's config (`model.json`), the tokenizer
//! it was trained with (`tokenizer.json`), its chat template (`template.json`; without one,
//! Ember's own over the tokenizer's special tokens) and, for a reward model, `reward.json`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ember_instruct::{ChatTemplate, TemplateSpec};
use ember_reward::{load_reward_model, save_reward_model, Normalization, RewardModel};
use ember_tokenizer::Tokenizer;
use ember_train::{load_model, load_model_config, save_model};
use ember_transformer::{Decoder, DecoderConfig};

use crate::{Error, Result};

/// The tokenizer's file in a model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The chat template's file in a model folder (absent: Ember's template).
pub const TEMPLATE_FILE: &str = "template.json";

/// A model folder on disk, written whole or not at all: [`ModelFolder::save`] writes a hidden
/// sibling folder and renames it into place, so a folder that exists is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFolder {
    path: PathBuf,
}

impl ModelFolder {
    /// The folder at `path` (nothing is read until asked for).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a model has been saved here (a folder only appears once it is complete).
    pub fn exists(&self) -> bool {
        self.path.join("model.mpk").is_file() && self.path.join(TOKENIZER_FILE).is_file()
    }

    /// Whether a reward model has been saved here.
    pub fn holds_reward_model(&self) -> bool {
        self.exists() && self.path.join("reward.json").is_file()
    }

    /// The tokenizer.
    ///
    /// # Errors
    /// A missing or damaged `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Ok(Tokenizer::from_file(self.path.join(TOKENIZER_FILE))?)
    }

    /// The folder's template spec: `template.json`, or Ember's when there is none.
    ///
    /// # Errors
    /// A `template.json` that cannot be read or parsed (named with its line).
    pub fn template_spec(&self) -> Result<TemplateSpec> {
        let path = self.path.join(TEMPLATE_FILE);
        if !path.is_file() {
            return Ok(TemplateSpec::ember());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The chat template over the tokenizer.
    ///
    /// # Errors
    /// As [`ModelFolder::tokenizer`] and [`ModelFolder::template_spec`], or a tokenizer
    /// without the template's special tokens.
    pub fn template(&self) -> Result<ChatTemplate> {
        Ok(ChatTemplate::with_spec(
            self.tokenizer()?,
            self.template_spec()?,
        )?)
    }

    /// The model's config.
    ///
    /// # Errors
    /// A missing or damaged `model.json`.
    pub fn config(&self) -> Result<DecoderConfig> {
        Ok(load_model_config(&self.path)?)
    }

    /// The language model, on `device`.
    ///
    /// # Errors
    /// Missing or damaged files.
    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<Decoder<B>> {
        Ok(load_model::<B>(&self.path, device)?)
    }

    /// The reward model and its normalisation, on `device`.
    ///
    /// # Errors
    /// Missing or damaged files; a folder without `reward.json` holds a language model.
    pub fn load_reward<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(RewardModel<B>, Normalization)> {
        Ok(load_reward_model::<B>(&self.path, device)?)
    }

    /// Saves a language model with its tokenizer and Ember's template, replacing what the
    /// folder held.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn save<B: Backend>(&self, model: &Decoder<B>, tokenizer: &Tokenizer) -> Result<()> {
        self.save_with_template(model, tokenizer, &TemplateSpec::ember())
    }

    /// Saves a language model with its tokenizer and chat template, replacing what the
    /// folder held.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn save_with_template<B: Backend>(
        &self,
        model: &Decoder<B>,
        tokenizer: &Tokenizer,
        template: &TemplateSpec,
    ) -> Result<()> {
        // The tokenizer and template first: the model's manifest, written last, then covers
        // them too.
        self.write_whole(|dir| {
            tokenizer.save(dir.join(TOKENIZER_FILE))?;
            write_template(dir, template)?;
            save_model(model, dir)?;
            Ok(())
        })
    }

    /// Saves a reward model, its normalisation and its tokenizer, replacing what the folder
    /// held.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn save_reward<B: Backend>(
        &self,
        model: &RewardModel<B>,
        normalization: Normalization,
        template: &ChatTemplate,
    ) -> Result<()> {
        self.write_whole(|dir| {
            template.tokenizer().save(dir.join(TOKENIZER_FILE))?;
            write_template(dir, template.spec())?;
            save_reward_model(model, normalization, dir)?;
            Ok(())
        })
    }

    /// Writes the files into a hidden sibling folder, then puts it in the folder's place.
    fn write_whole(&self, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let name = self
            .path
            .file_name()
            .ok_or_else(|| Error::Config(format!("{}: not a folder name", self.path.display())))?
            .to_string_lossy();
        let parent = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let partial = parent.join(format!(".{name}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        write(&partial)?;
        if self.path.exists() {
            std::fs::remove_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?;
        }
        std::fs::rename(&partial, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

/// Writes `template.json`, unless the template is Ember's (a folder without one has it).
fn write_template(dir: &Path, template: &TemplateSpec) -> Result<()> {
    if *template == TemplateSpec::ember() {
        return Ok(());
    }
    let path = dir.join(TEMPLATE_FILE);
    let text = serde_json::to_string_pretty(template).expect("a template serialises");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use ember_tokenizer::BpeConfig;

    #[test]
    fn a_saved_folder_loads_back_and_a_partial_one_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("corpus.txt");
        std::fs::write(&text, "the cat sat on the mat. ".repeat(50)).unwrap();
        let bpe = BpeConfig {
            vocab_size: 300,
            ..Default::default()
        };
        let tokenizer = Tokenizer::train(&[text], &bpe).unwrap();
        let mut config = DecoderConfig::tiny();
        config.vocab_size = tokenizer.vocab_size();
        config.d_model = 32;
        config.n_layers = 1;
        config.n_heads = 2;
        let model = config.init::<Flex>(&Default::default()).unwrap();
        let folder = ModelFolder::new(dir.path().join("run/model"));
        assert!(!folder.exists());
        folder.save(&model, &tokenizer).unwrap();
        assert!(folder.exists() && !folder.holds_reward_model());
        assert_eq!(folder.config().unwrap(), config);
        assert_eq!(
            folder.tokenizer().unwrap().vocab_size(),
            tokenizer.vocab_size()
        );
        let loaded = folder.load::<Flex>(&Default::default()).unwrap();
        assert_eq!(loaded.config(), &config);
        // The manifest covers every file, the tokenizer included.
        let manifest = ember_train::integrity::verify(folder.path())
            .unwrap()
            .unwrap();
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            ["model.json", "model.mpk", TOKENIZER_FILE]
        );
        // Saving again replaces the folder whole and leaves no partial folder behind.
        folder.save(&loaded, &tokenizer).unwrap();
        let names = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        assert_eq!(names, vec!["model".to_string()]);
        // A folder with weights but no tokenizer (a save cut short) is not a model.
        std::fs::remove_file(dir.path().join("run/model/tokenizer.json")).unwrap();
        assert!(!folder.exists());
        assert!(folder.tokenizer().is_err());
    }
}
