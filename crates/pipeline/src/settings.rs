//! Settings files: TOML laid over typed defaults key by key, written into a run folder for the
//! record, and the deterministic hold-out split the training stages share.

use std::path::Path;

use ember_transformer::{Architecture, DecoderConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A named model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// 4 layers × 128 wide, ~1M parameters besides the embedding: minutes on a CPU.
    Tiny,
    /// 6 layers × 256 wide.
    Small,
    /// GPT-2 small, 124M parameters: a GPU's job.
    #[serde(rename = "gpt2-small")]
    Gpt2Small,
}

impl Preset {
    /// The preset's model.
    pub fn config(self) -> DecoderConfig {
        match self {
            Preset::Tiny => DecoderConfig::tiny(),
            Preset::Small => DecoderConfig::small(),
            Preset::Gpt2Small => DecoderConfig::gpt2_small(),
        }
    }

    /// Its name in settings files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Gpt2Small => "gpt2-small",
        }
    }
}

/// The `[model]` table: a preset, with any field overridden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Starting point.
    pub preset: Preset,
    /// Llama-style or GPT-2-style.
    pub architecture: Option<Architecture>,
    /// Width of the residual stream.
    pub d_model: Option<usize>,
    /// Number of blocks.
    pub n_layers: Option<usize>,
    /// Number of heads.
    pub n_heads: Option<usize>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            preset: Preset::Tiny,
            architecture: None,
            d_model: None,
            n_layers: None,
            n_heads: None,
        }
    }
}

impl ModelSettings {
    /// The model config for a tokenizer of `vocab_size` and windows of `seq_len`.
    pub fn resolve(&self, vocab_size: usize, seq_len: usize) -> DecoderConfig {
        let mut config = self.preset.config();
        config.vocab_size = vocab_size;
        config.max_seq_len = config.max_seq_len.max(seq_len);
        if let Some(architecture) = self.architecture {
            config.architecture = architecture;
        }
        if let Some(d_model) = self.d_model {
            config.d_model = d_model;
        }
        if let Some(n_layers) = self.n_layers {
            config.n_layers = n_layers;
        }
        if let Some(n_heads) = self.n_heads {
            config.n_heads = n_heads;
        }
        config
    }
}

/// Reads a TOML file into `T`, or `T::default()` without a file.
///
/// The file is laid over `T::default()` key by key ([`merge`]), so a partial table keeps the
/// defaults of `T` for the keys it leaves out: a pipeline file with only
/// `[pretrain.tokenizer] vocab_size = 512` keeps the pipeline's 200 pretraining steps, not
/// `ember pretrain`'s own 300.
///
/// # Errors
/// A file that cannot be read, invalid TOML, an unknown key or a wrong type, with the file's
/// name and the line.
pub fn load<T>(path: Option<&Path>) -> Result<T>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, path)
}

/// [`load`] on text already read from `path` (named in the errors).
///
/// # Errors
/// Invalid TOML, an unknown key or a wrong type.
pub fn parse<T>(text: &str, path: &Path) -> Result<T>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    let invalid = |source| Error::Toml {
        path: path.to_path_buf(),
        source,
    };
    // Syntax, unknown keys and wrong types, reported against the file's own lines.
    toml::from_str::<T>(text).map_err(invalid)?;
    let given: toml::Table = toml::from_str(text).map_err(invalid)?;
    let toml::Value::Table(mut config) = to_toml_value(&T::default())? else {
        return Err(Error::Config(
            "settings must serialise to a TOML table".into(),
        ));
    };
    merge(&mut config, given);
    toml::Value::Table(config)
        .try_into()
        .map_err(|e: toml::de::Error| invalid(e))
}

fn to_toml_value<T: Serialize>(value: &T) -> Result<toml::Value> {
    toml::Value::try_from(value).map_err(|e| Error::Config(format!("unserialisable settings: {e}")))
}

/// Lays `given` over `base`: tables merge key by key and any other value replaces. A table
/// whose `kind` differs from the base's (another variant of a tagged enum, such as the KL
/// controller's `fixed` and `adaptive`) replaces the base's table whole, so that the old
/// variant's fields do not leak into the new one.
pub fn merge(base: &mut toml::Table, given: toml::Table) {
    for (key, value) in given {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new))
                if new.get("kind").is_none() || new.get("kind") == old.get("kind") =>
            {
                merge(old, new);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Writes `settings` as TOML to `path` (atomically), for the record: a run folder's
/// `config.toml` says how it was made. Nothing reads it to hand settings on.
///
/// # Errors
/// The file cannot be written.
pub fn record<T: Serialize>(path: &Path, settings: &T) -> Result<()> {
    let text = toml::to_string_pretty(settings)
        .map_err(|e| Error::Config(format!("unserialisable settings: {e}")))?;
    ember_tokenizer::write_atomically(path, text.as_bytes())?;
    Ok(())
}

/// Creates a stage's run folder and records its settings there as `config.toml`.
///
/// # Errors
/// The folder or the file cannot be written.
pub fn start_run<T: Serialize>(run: &Path, settings: &T) -> Result<()> {
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    record(&run.join("config.toml"), settings)
}

/// A command's settings for a run folder: `explicit` (a `--config` file), else the folder's
/// own `config.toml` (so a resumed run keeps its settings), else the defaults.
///
/// # Errors
/// As [`load`].
pub fn for_run<T>(run: &Path, explicit: Option<&Path>) -> Result<T>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    let saved = run.join("config.toml");
    let path = explicit
        .map(Path::to_path_buf)
        .or_else(|| saved.exists().then(|| saved.clone()));
    load(path.as_deref())
}

/// Splits `items` into (kept, held out): every k-th item with k = round(1 / fraction), so
/// the split is the same on every run; a fraction of 0 holds nothing out.
pub fn hold_out<T>(items: Vec<T>, fraction: f64) -> (Vec<T>, Vec<T>) {
    if fraction <= 0.0 {
        return (items, Vec::new());
    }
    let every = (1.0 / fraction).round().max(2.0) as usize;
    let (held, kept): (Vec<_>, Vec<_>) = items
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % every == every - 1);
    (
        kept.into_iter().map(|(_, x)| x).collect(),
        held.into_iter().map(|(_, x)| x).collect(),
    )
}

/// Checks a validation share: in [0, 1).
pub(crate) fn check_fraction(val_fraction: f64) -> Result<()> {
    if (0.0..1.0).contains(&val_fraction) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "val_fraction must be in [0, 1), got {val_fraction}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PretrainSettings;
    use ember_train::TrainConfig;

    #[test]
    fn hold_out_takes_every_kth_item() {
        let (kept, held) = hold_out((0..10).collect::<Vec<_>>(), 0.25);
        assert_eq!(held, vec![3, 7]);
        assert_eq!(kept, vec![0, 1, 2, 4, 5, 6, 8, 9]);
        let (kept, held) = hold_out(vec![1, 2, 3], 0.0);
        assert_eq!((kept.len(), held.len()), (3, 0));
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = PretrainSettings::default();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<PretrainSettings>(&text).unwrap(), config);
    }

    #[test]
    fn partial_files_fill_in_defaults_and_unknown_keys_fail() {
        let config: PretrainSettings =
            toml::from_str("[train]\nsteps = 7\n[model]\npreset = \"small\"\n").unwrap();
        assert_eq!(config.train.steps, 7);
        assert_eq!(config.model.preset, Preset::Small);
        assert_eq!(config.batch, PretrainSettings::default().batch);
        assert!(toml::from_str::<PretrainSettings>("[train]\nstep = 7\n").is_err());
    }

    #[test]
    fn a_partial_table_keeps_the_defaults_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pretrain.toml");
        // PretrainSettings' default trains 300 steps; TrainConfig's own default is different.
        assert_ne!(TrainConfig::default().steps, 300);
        std::fs::write(&path, "[train.optimizer]\nlr = 0.01\n").unwrap();
        let config: PretrainSettings = load(Some(&path)).unwrap();
        assert_eq!(config.train.optimizer.lr, 0.01);
        assert_eq!(config.train.steps, 300);
        assert_eq!(
            config.train.eval_every,
            PretrainSettings::default().train.eval_every
        );
        assert_eq!(config.tokenizer, PretrainSettings::default().tokenizer);
    }

    #[test]
    fn a_bad_file_names_itself_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[train]\nsteps = 7\n\n[batch]\nseq_len = \"long\"\n").unwrap();
        let error = load::<PretrainSettings>(Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("bad.toml") && error.contains("line 5"),
            "{error}"
        );
        std::fs::write(&path, "[train]\nstep = 7\n").unwrap();
        let error = load::<PretrainSettings>(Some(&path))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `step`"), "{error}");
    }

    #[test]
    fn a_typo_in_a_sampling_table_is_refused() {
        #[derive(Debug, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        struct Generation {
            sampling: ember_transformer::Sampling,
        }
        impl Default for Generation {
            fn default() -> Self {
                Self {
                    sampling: ember_transformer::Sampling::Temperature { temperature: 0.8 },
                }
            }
        }
        let path = Path::new("generation.toml");
        let good: Generation = parse(
            "[sampling]\nkind = \"top_k\"\nk = 4\ntemperature = 0.5\n",
            path,
        )
        .unwrap();
        assert_eq!(
            good.sampling,
            ember_transformer::Sampling::TopK {
                k: 4,
                temperature: 0.5
            }
        );
        // A key the kind does not have (here top-p's `p` on a top-k table) is refused.
        let error = parse::<Generation>(
            "[sampling]\nkind = \"top_k\"\nk = 4\ntemperature = 0.5\np = 0.9\n",
            path,
        )
        .unwrap_err();
        assert!(error.to_string().contains("`top_k` has no `p`"), "{error}");
        // Greedy too: a unit variant's extra keys are refused (serde alone would not).
        let error = parse::<Generation>("[sampling]\nkind = \"greedy\"\ntemperature = 0.5\n", path)
            .unwrap_err();
        assert!(
            error.to_string().contains("`greedy` has no `temperature`"),
            "{error}"
        );
    }

    #[test]
    fn merging_keeps_untouched_keys_and_replaces_a_table_of_another_kind() {
        let mut base: toml::Table =
            toml::from_str("a = 1\n[t]\nx = 1\ny = 2\n[k]\nkind = \"fixed\"\nbeta = 0.1\n")
                .unwrap();
        let given: toml::Table =
            toml::from_str("[t]\ny = 3\n[k]\nkind = \"adaptive\"\ntarget = 6.0\n").unwrap();
        merge(&mut base, given);
        let expected: toml::Table =
            toml::from_str("a = 1\n[t]\nx = 1\ny = 3\n[k]\nkind = \"adaptive\"\ntarget = 6.0\n")
                .unwrap();
        assert_eq!(base, expected);
        let mut same_kind: toml::Table =
            toml::from_str("[k]\nkind = \"fixed\"\nbeta = 0.1\n").unwrap();
        merge(
            &mut same_kind,
            toml::from_str("[k]\nkind = \"fixed\"\n").unwrap(),
        );
        assert_eq!(same_kind["k"]["beta"].as_float(), Some(0.1));
    }
}
