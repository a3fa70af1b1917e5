//! Damaged model folders and checkpoints are named, never loaded: truncated, bit-flipped,
//! edited or shape-swapped files, a `model.json` that disagrees with the weights, NaN weights.

use std::num::NonZeroUsize;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use ember_train::integrity::{self, MANIFEST_FILE};
use ember_train::{
    fit, load_model, save_model, Error, Loss, MicroBatch, Objective, OptimizerConfig, RunDir,
    TrainConfig,
};
use ember_transformer::{Decoder, DecoderConfig, TokenBatch};

type B = Autodiff<Flex>;
type Inner = Flex;

fn saved(dir: &Path) -> Decoder<Inner> {
    let device = Default::default();
    Inner::seed(&device, 3);
    let model = DecoderConfig::new(50, 16, 2, 2, 16)
        .init::<Inner>(&device)
        .unwrap();
    save_model(&model, dir).unwrap();
    model
}

fn load(dir: &Path) -> ember_train::Result<Decoder<Inner>> {
    load_model::<Inner>(dir, &Default::default())
}

fn edit(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("model.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(config.get(key).is_some(), "model.json has no {key}");
    config[key] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[test]
fn a_saved_model_lists_its_files_and_tensors_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let model = saved(dir.path());
    let manifest = integrity::verify(dir.path()).unwrap().unwrap();
    assert_eq!(
        manifest.files.keys().collect::<Vec<_>>(),
        ["model.json", "model.mpk"]
    );
    let bytes = std::fs::metadata(dir.path().join("model.mpk"))
        .unwrap()
        .len();
    assert_eq!(manifest.files["model.mpk"].bytes, bytes);
    // SHA-256 of an empty file, the standard test vector, through the same code.
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    assert_eq!(
        integrity::FileDigest::of(&dir.path().join("empty"))
            .unwrap()
            .sha256,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    std::fs::remove_file(dir.path().join("empty")).unwrap();
    // Every parameter, with its shape: the embedding is vocab × width.
    let embedding = manifest
        .tensors
        .iter()
        .find(|(name, _)| name.contains("embed"))
        .unwrap();
    assert_eq!(embedding.1, &vec![50, 16], "{embedding:?}");
    let total = manifest
        .tensors
        .values()
        .map(|s| s.iter().product::<usize>())
        .sum::<usize>();
    assert_eq!(total, model.num_params());
    load(dir.path()).unwrap();
}

#[test]
fn a_truncated_or_bit_flipped_weights_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    let weights = dir.path().join("model.mpk");
    let original = std::fs::read(&weights).unwrap();

    edit(&weights, |b| b.truncate(b.len() / 2));
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(error, Error::Damaged { ref path, .. } if path == &weights),
        "{error}"
    );
    assert!(error.to_string().contains("truncated"), "{error}");

    std::fs::write(&weights, &original).unwrap();
    edit(&weights, |b| {
        let middle = b.len() / 2;
        b[middle] ^= 0x40;
    });
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(error, Error::Damaged { ref path, .. } if path == &weights),
        "{error}"
    );

    std::fs::remove_file(&weights).unwrap();
    let error = load(dir.path()).unwrap_err();
    assert!(error.to_string().contains("model.mpk"), "{error}");
}

#[test]
fn a_model_json_edited_after_saving_is_named() {
    // n_heads changes no tensor's shape: only the checksum tells the weights were not trained
    // with it (loading would run and print garbage).
    for (key, value) in [
        ("n_heads", 1),
        ("d_model", 32),
        ("n_layers", 3),
        ("vocab_size", 60),
    ] {
        let dir = tempfile::tempdir().unwrap();
        saved(dir.path());
        edit_config(dir.path(), key, value.into());
        let error = load(dir.path()).unwrap_err();
        let config = dir.path().join("model.json");
        assert!(
            matches!(error, Error::Damaged { ref path, .. } if path == &config),
            "{key}: {error}"
        );
    }
}

#[test]
fn shapes_that_disagree_are_named_tensor_by_tensor_not_a_panic() {
    // As a folder whose manifest was made anew after an edit (or a model.json copied from
    // another model): the check against the recorded shapes names the tensor.
    for (key, value) in [("d_model", 32), ("n_layers", 3), ("vocab_size", 60)] {
        let dir = tempfile::tempdir().unwrap();
        saved(dir.path());
        edit_config(dir.path(), key, value.into());
        integrity::seal(dir.path(), None).unwrap();
        let error = load(dir.path()).unwrap_err();
        match &error {
            Error::ShapeMismatch { config, tensor, .. } => {
                assert!(config.ends_with("model.json"));
                assert!(!tensor.is_empty());
            }
            other => panic!("{key}: {other}"),
        }
        // Without a manifest at all (a folder from before manifests): the loaded tensors are
        // checked against the config's all the same (and burn's own panic on a missing layer
        // is an error naming the file).
        std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
        let error = load(dir.path()).unwrap_err();
        assert!(
            matches!(error, Error::ShapeMismatch { .. } | Error::Record { .. }),
            "{key}: {error}"
        );
        assert!(error.to_string().contains("model."), "{key}: {error}");
    }
}

#[test]
fn weights_with_nan_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = saved(dir.path());
    // Poison one weight, save it as a well-formed folder.
    let mut poisoned = model.clone();
    struct Poison;
    impl burn::module::ModuleMapper<Inner> for Poison {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<Inner, D>>,
        ) -> Param<Tensor<Inner, D>> {
            param.map(|t| t.add_scalar(f32::NAN))
        }
    }
    poisoned = poisoned.map(&mut Poison);
    save_model(&poisoned, dir.path()).unwrap();
    let error = load(dir.path()).unwrap_err();
    assert!(matches!(error, Error::NonFinite { .. }), "{error}");
    assert!(error.to_string().contains("model.mpk"), "{error}");
}

/// The same batch every step.
struct OneBatch;

impl Objective<B, Decoder<B>> for OneBatch {
    fn loss(&mut self, model: &Decoder<B>, _batch: MicroBatch) -> ember_train::Result<Loss<B>> {
        let rows = vec![vec![1u32, 5, 9, 2, 7, 3]];
        let batch = TokenBatch::from_rows(&rows, &Default::default())?;
        Ok(Loss::new(model.loss(&batch)?, batch.n_targets))
    }

    fn validate(&mut self, _model: &Decoder<Inner>) -> ember_train::Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

#[test]
fn a_damaged_checkpoint_is_named_never_resumed_from() {
    let config = TrainConfig {
        steps: 2,
        progress: false,
        eval_every: None,
        checkpoint_every: NonZeroUsize::new(1),
        optimizer: OptimizerConfig {
            warmup_steps: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let device = Default::default();
    let init = || {
        DecoderConfig::new(50, 16, 2, 2, 16)
            .init::<B>(&device)
            .unwrap()
    };
    for damage in ["truncate", "flip", "swap"] {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        fit(init(), &mut OneBatch, &config, &run).unwrap();
        let newest = run.checkpoints().join("step-00000002");
        let weights = newest.join("model.mpk");
        match damage {
            "truncate" => edit(&weights, |b| b.truncate(b.len() - 7)),
            "flip" => edit(&weights, |b| b[100] ^= 1),
            _ => {
                // Another model's weights, manifest and all: every file checks out, but the
                // shapes are not the model's being trained.
                let other = tempfile::tempdir().unwrap();
                let wider = DecoderConfig::new(50, 32, 2, 2, 16)
                    .init::<B>(&device)
                    .unwrap();
                fit(wider, &mut OneBatch, &config, &RunDir::new(other.path())).unwrap();
                let theirs = other.path().join("checkpoints/step-00000002");
                for name in [
                    "model.mpk",
                    "optim-decay.mpk",
                    "optim-no-decay.mpk",
                    MANIFEST_FILE,
                ] {
                    std::fs::copy(theirs.join(name), newest.join(name)).unwrap();
                }
            }
        }
        let longer = TrainConfig {
            steps: 3,
            ..config.clone()
        };
        let error = fit(init(), &mut OneBatch, &longer, &run).unwrap_err();
        let named = error.to_string().contains("step-00000002");
        assert!(named, "{damage}: {error}");
        if damage == "swap" {
            assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
        } else {
            assert!(matches!(error, Error::Damaged { .. }), "{damage}: {error}");
        }
    }
}

/// A finite loss whose gradient is not: d√x/dx at x = 0 is infinite.
struct InfiniteGradient;

impl Objective<B, Decoder<B>> for InfiniteGradient {
    fn loss(&mut self, model: &Decoder<B>, _batch: MicroBatch) -> ember_train::Result<Loss<B>> {
        let rows = vec![vec![1u32, 5, 9, 2, 7, 3]];
        let batch = TokenBatch::from_rows(&rows, &Default::default())?;
        let loss = model.loss(&batch)?;
        let zero = loss.clone().mul_scalar(0.0).sqrt();
        Ok(Loss::new(loss.add(zero), batch.n_targets))
    }

    fn validate(&mut self, _model: &Decoder<Inner>) -> ember_train::Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

#[test]
fn non_finite_gradients_stop_training_before_the_weights_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let config = TrainConfig {
        steps: 2,
        progress: false,
        eval_every: None,
        checkpoint_every: NonZeroUsize::new(1),
        ..Default::default()
    };
    let device = Default::default();
    let model = DecoderConfig::new(50, 16, 2, 2, 16)
        .init::<B>(&device)
        .unwrap();
    let error = fit(model, &mut InfiniteGradient, &config, &run).unwrap_err();
    assert!(matches!(error, Error::Diverged { step: 0, .. }), "{error}");
    assert!(!run.checkpoints().exists());
}
