//! TOML run configurations: every field optional, defaults that run on a CPU in minutes.

use std::path::Path;

use anyhow::Context as _;
use ember_tokenizer::{BpeConfig, ShardConfig};
use ember_train::{PretrainConfig, TrainConfig};
use ember_transformer::{Architecture, GptConfig};
use serde::{Deserialize, Serialize};

/// A named model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// 4 layers × 128 wide, ~1M parameters besides the embedding: minutes on a CPU.
    Tiny,
    /// 6 layers × 256 wide.
    Small,
    /// GPT-2 small, 124M parameters: a GPU's job.
    #[value(name = "gpt2-small")]
    Gpt2Small,
}

impl Preset {
    /// The preset's model.
    pub fn config(self) -> GptConfig {
        match self {
            Preset::Tiny => GptConfig::tiny(),
            Preset::Small => GptConfig::small(),
            Preset::Gpt2Small => GptConfig::gpt2_small(),
        }
    }

    /// Its name on the command line.
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
pub struct ModelSection {
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

impl Default for ModelSection {
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

impl ModelSection {
    /// The model config for a tokenizer of `vocab_size` and windows of `seq_len`.
    pub fn resolve(&self, vocab_size: usize, seq_len: usize) -> GptConfig {
        let mut config = self.preset.config();
        config.vocab_size = vocab_size;
        config.max_seq_len = config.max_seq_len.max(seq_len);
        if let Some(a) = self.architecture {
            config.architecture = a;
        }
        if let Some(d) = self.d_model {
            config.d_model = d;
        }
        if let Some(n) = self.n_layers {
            config.n_layers = n;
        }
        if let Some(n) = self.n_heads {
            config.n_heads = n;
        }
        config
    }
}

/// `ember pretrain`'s configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainFile {
    /// The model.
    pub model: ModelSection,
    /// The tokenizer trained when none is given.
    pub tokenizer: BpeConfig,
    /// The train/validation split.
    pub shards: ShardConfig,
    /// Micro-batches.
    pub batch: PretrainConfig,
    /// The loop.
    pub train: TrainConfig,
}

impl Default for PretrainFile {
    fn default() -> Self {
        let train = TrainConfig {
            // About five minutes on a 2-core CPU for the tiny preset.
            steps: 300,
            eval_every: std::num::NonZeroUsize::new(50),
            checkpoint_every: std::num::NonZeroUsize::new(100),
            ..Default::default()
        };
        Self {
            model: ModelSection::default(),
            tokenizer: BpeConfig {
                vocab_size: 4096,
                ..Default::default()
            },
            shards: ShardConfig::default(),
            batch: PretrainConfig {
                batch_size: 16,
                seq_len: 128,
                ..Default::default()
            },
            train,
        }
    }
}

/// A training command's configuration: `explicit` (`--config`), else the run folder's own
/// `config.toml` (so a resumed run keeps its settings), else the defaults; `adjust` applies
/// the command-line overrides; the result is written back into the run folder.
pub fn for_run<T>(
    run: &Path,
    explicit: Option<&Path>,
    adjust: impl FnOnce(&mut T),
) -> anyhow::Result<T>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let saved = run.join("config.toml");
    let path = explicit
        .map(Path::to_path_buf)
        .or_else(|| saved.exists().then(|| saved.clone()));
    let mut config: T = load(path.as_deref())?;
    adjust(&mut config);
    ember_tokenizer::write_atomically(&saved, toml::to_string_pretty(&config)?.as_bytes())?;
    Ok(config)
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
pub fn load<T>(path: Option<&Path>) -> anyhow::Result<T>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let invalid = || format!("{}: invalid configuration", path.display());
    // Syntax, unknown keys and wrong types, reported against the file's own lines.
    toml::from_str::<T>(&text).with_context(invalid)?;
    let given: toml::Table = toml::from_str(&text).with_context(invalid)?;
    let toml::Value::Table(mut config) = toml::Value::try_from(T::default())? else {
        anyhow::bail!("a configuration must serialise to a TOML table");
    };
    merge(&mut config, given);
    toml::Value::Table(config).try_into().with_context(invalid)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = PretrainFile::default();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<PretrainFile>(&text).unwrap(), config);
    }

    #[test]
    fn partial_files_fill_in_defaults_and_unknown_keys_fail() {
        let config: PretrainFile =
            toml::from_str("[train]\nsteps = 7\n[model]\npreset = \"small\"\n").unwrap();
        assert_eq!(config.train.steps, 7);
        assert_eq!(config.model.preset, Preset::Small);
        assert_eq!(config.batch, PretrainFile::default().batch);
        assert!(toml::from_str::<PretrainFile>("[train]\nstep = 7\n").is_err());
    }

    #[test]
    fn a_partial_table_keeps_the_defaults_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pretrain.toml");
        // PretrainFile's default trains 300 steps; TrainConfig's own default is different.
        assert_ne!(TrainConfig::default().steps, 300);
        std::fs::write(&path, "[train.optimizer]\nlr = 0.01\n").unwrap();
        let config: PretrainFile = load(Some(&path)).unwrap();
        assert_eq!(config.train.optimizer.lr, 0.01);
        assert_eq!(config.train.steps, 300);
        assert_eq!(
            config.train.eval_every,
            PretrainFile::default().train.eval_every
        );
        assert_eq!(config.tokenizer, PretrainFile::default().tokenizer);
    }

    #[test]
    fn a_bad_file_names_itself_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[train]\nsteps = 7\n\n[batch]\nseq_len = \"long\"\n").unwrap();
        let error = format!("{:#}", load::<PretrainFile>(Some(&path)).unwrap_err());
        assert!(
            error.contains("bad.toml") && error.contains("line 5"),
            "{error}"
        );
        std::fs::write(&path, "[train]\nstep = 7\n").unwrap();
        let error = format!("{:#}", load::<PretrainFile>(Some(&path)).unwrap_err());
        assert!(error.contains("unknown field `step`"), "{error}");
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
