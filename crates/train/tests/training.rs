//! The shared training loop: it learns, it clips, it saves, and it resumes exactly.

use std::num::NonZeroUsize;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use ember_tokenizer::{write_shards, BpeConfig, ShardConfig, Tokenizer};
use ember_train::{
    clip_global_norm, fit, global_grad_norm, load_model, save_model, DecayGroups, Error, Loss,
    MicroBatch, Objective, OptimizerConfig, PretrainConfig, Pretraining, RunDir, TrainConfig,
};
use ember_transformer::{Architecture, Decoder, DecoderConfig, TokenBatch};

type B = Autodiff<Flex>;
type Inner = Flex;

fn tiny_config(vocab: usize) -> DecoderConfig {
    DecoderConfig::new(vocab, 32, 2, 4, 32)
}

fn quiet(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        progress: false,
        eval_every: NonZeroUsize::new(steps),
        checkpoint_every: NonZeroUsize::new(3),
        optimizer: OptimizerConfig {
            lr: 3e-3,
            warmup_steps: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The same batch every step.
struct OneBatch {
    rows: Vec<Vec<u32>>,
}

impl Objective<B, Decoder<B>> for OneBatch {
    fn loss(&mut self, model: &Decoder<B>, _batch: MicroBatch) -> ember_train::Result<Loss<B>> {
        let batch = TokenBatch::from_rows(&self.rows, &Default::default())?;
        Ok(Loss::new(model.loss(&batch)?, batch.n_targets))
    }

    fn validate(&mut self, model: &Decoder<Inner>) -> ember_train::Result<Vec<(String, f64)>> {
        let batch = TokenBatch::<Inner>::from_rows(&self.rows, &Default::default())?;
        Ok(vec![(
            "loss".into(),
            f64::from(model.loss(&batch)?.into_scalar().elem::<f32>()),
        )])
    }
}

#[test]
fn a_tiny_model_overfits_one_batch() {
    for architecture in [Architecture::Llama, Architecture::Gpt2] {
        let device = Default::default();
        B::seed(&device, 1);
        let model = tiny_config(64)
            .with_architecture(architecture)
            .init::<B>(&device)
            .unwrap();
        let rows = (0..4)
            .map(|r| (0..17).map(|i| ((i * 7 + r * 13) % 64) as u32).collect())
            .collect();
        let mut objective = OneBatch { rows };
        let dir = tempfile::tempdir().unwrap();
        let config = TrainConfig {
            checkpoint_every: None,
            ..quiet(200)
        };
        let (_, summary) = fit(model, &mut objective, &config, &RunDir::new(dir.path())).unwrap();
        let first = summary.train_losses[0];
        let last = summary.validation[0].1;
        // ln 64 = 4.16 at the start; memorised at the end.
        assert!(
            (first - 64f64.ln()).abs() < 0.3,
            "{architecture:?}: first loss {first}"
        );
        assert!(
            last < 0.05,
            "{architecture:?}: still {last} after 200 steps"
        );
    }
}

fn write_corpus(dir: &Path) -> std::path::PathBuf {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house",
    ];
    let mut text = String::new();
    let mut state = 12345u64;
    for line in 0..400 {
        for _ in 0..(6 + line % 5) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(state >> 33) as usize % words.len()]);
            text.push(' ');
        }
        text.push_str(".\n");
    }
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, &text).unwrap();
    let tokenizer = Tokenizer::train_from_texts(
        &[text],
        &BpeConfig {
            vocab_size: 300,
            ..Default::default()
        },
    )
    .unwrap();
    let shards = dir.join("shards");
    write_shards(
        &tokenizer,
        &[corpus],
        &shards,
        &ShardConfig {
            block_bytes: 512,
            ..Default::default()
        },
    )
    .unwrap();
    shards
}

fn pretraining(shards: &Path) -> Pretraining<B> {
    let config = PretrainConfig {
        batch_size: 4,
        seq_len: 16,
        seed: 9,
        eval_windows: 8,
    };
    Pretraining::open(shards, config, &Default::default()).unwrap()
}

/// Fails at a chosen step, as a crash would.
struct CrashAt {
    inner: Pretraining<B>,
    step: usize,
}

impl Objective<B, Decoder<B>> for CrashAt {
    fn loss(&mut self, model: &Decoder<B>, batch: MicroBatch) -> ember_train::Result<Loss<B>> {
        if batch.step == self.step {
            return Err(Error::Config("simulated crash".into()));
        }
        self.inner.loss(model, batch)
    }

    fn validate(&mut self, model: &Decoder<Inner>) -> ember_train::Result<Vec<(String, f64)>> {
        self.inner.validate(model)
    }
}

#[test]
fn resuming_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_corpus(dir.path());
    let device = Default::default();
    // One initialisation, cloned: the backend's seeded generator is global, and tests on other
    // threads draw from it between a seed and an init.
    B::seed(&device, 5);
    let initial = tiny_config(300).init::<B>(&device).unwrap();
    let fresh = || initial.clone();
    let config = TrainConfig {
        grad_accumulation: 2,
        ..quiet(8)
    };

    let whole = RunDir::new(dir.path().join("whole"));
    let (_, uninterrupted) = fit(fresh(), &mut pretraining(&shards), &config, &whole).unwrap();
    assert_eq!(uninterrupted.train_losses.len(), 8);

    let broken = RunDir::new(dir.path().join("broken"));
    let mut crashing = CrashAt {
        inner: pretraining(&shards),
        step: 4,
    };
    assert!(fit(fresh(), &mut crashing, &config, &broken).is_err());
    // A different initialisation: resuming must replace it with the checkpoint's weights.
    B::seed(&device, 99);
    let other = tiny_config(300).init::<B>(&device).unwrap();
    let (_, resumed) = fit(other, &mut pretraining(&shards), &config, &broken).unwrap();
    assert_eq!(resumed.resumed_from, Some(3));
    assert_eq!(
        resumed.train_losses,
        uninterrupted.train_losses[3..].to_vec()
    );
    assert_eq!(resumed.validation, uninterrupted.validation);

    // The metrics log holds each step once, in order.
    let log = std::fs::read_to_string(broken.metrics()).unwrap();
    let train_steps = log
        .lines()
        .filter(|l| l.contains("\"train\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect::<Vec<_>>();
    assert_eq!(train_steps, (1..=8).collect::<Vec<_>>());
    // Only the newest checkpoints are kept (keep_checkpoints = 2): steps 6 and 8.
    let mut kept = std::fs::read_dir(broken.checkpoints())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    kept.sort();
    assert_eq!(kept, ["step-00000006", "step-00000008"]);
}

#[test]
fn pretraining_lowers_validation_loss_and_reports_bits_per_byte() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_corpus(dir.path());
    let device = Default::default();
    B::seed(&device, 5);
    let model = tiny_config(300).init::<B>(&device).unwrap();
    let objective = pretraining(&shards);
    let (before, bpb_before) = objective.evaluate(&model.valid()).unwrap();
    let mut objective = objective;
    let (_, summary) = fit(
        model,
        &mut objective,
        &quiet(60),
        &RunDir::new(dir.path().join("run")),
    )
    .unwrap();
    let after = summary.validation[0].1;
    assert!(after < before * 0.7, "validation loss {before} → {after}");
    // Bits per byte is the loss in bits scaled by tokens per byte.
    let ratio = objective.meta().val_tokens_per_byte();
    assert!((bpb_before - before / std::f64::consts::LN_2 * ratio).abs() < 1e-9);
    assert!(summary.validation[1].0 == "bits_per_byte" && summary.validation[1].1 < bpb_before);
}

#[test]
fn save_then_load_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    for architecture in [Architecture::Llama, Architecture::Gpt2] {
        Inner::seed(&device, 3);
        let model = tiny_config(50)
            .with_architecture(architecture)
            .init::<Inner>(&device)
            .unwrap();
        let path = dir.path().join(format!("{architecture:?}"));
        save_model(&model, &path).unwrap();
        Inner::seed(&device, 4);
        let loaded = load_model::<Inner>(&path, &device).unwrap();
        assert_eq!(loaded.config(), model.config());
        let rows = vec![vec![1u32, 5, 9, 2, 7, 3]];
        let batch = TokenBatch::<Inner>::from_rows(&rows, &device).unwrap();
        let a = model.forward(batch.inputs.clone()).into_data();
        let b = loaded.forward(batch.inputs).into_data();
        assert_eq!(a, b, "{architecture:?}");
    }
    let missing = load_model::<Inner>(&dir.path().join("nothing"), &device).unwrap_err();
    assert!(missing.to_string().contains("model.json"), "{missing}");
}

#[test]
fn decay_groups_hold_matrices_outside_embeddings() {
    let device = Default::default();
    let llama = tiny_config(50).init::<Inner>(&device).unwrap();
    let groups = DecayGroups::of::<Inner, _>(&llama);
    // Per layer: qkv, proj, gate, up, down. Not decayed: the embedding, 2 norms per layer
    // and the final norm.
    assert_eq!(groups.decay.len(), 2 * 5);
    assert_eq!(groups.no_decay.len(), 1 + 2 * 2 + 1);
    let gpt2 = tiny_config(50)
        .with_architecture(Architecture::Gpt2)
        .init::<Inner>(&device)
        .unwrap();
    let groups = DecayGroups::of::<Inner, _>(&gpt2);
    // Per layer: qkv, proj, up, down. Not decayed: 2 embeddings, 4 biases and 2 LayerNorms
    // (gain and bias each) per layer, and the final LayerNorm's two.
    assert_eq!(groups.decay.len(), 2 * 4);
    assert_eq!(groups.no_decay.len(), 2 + 2 * (4 + 4) + 2);
}

#[test]
fn clipping_bounds_the_global_norm() {
    let device = Default::default();
    B::seed(&device, 2);
    let model = tiny_config(50).init::<B>(&device).unwrap();
    let batch = TokenBatch::<B>::from_rows(&[vec![1, 2, 3, 4, 5, 6, 7]], &device).unwrap();
    let grads = model.loss(&batch).unwrap().mul_scalar(1000.0).backward();
    let mut grads = GradientsParams::from_grads(grads, &model);
    let before = global_grad_norm::<B, _>(&model, &mut grads);
    assert!(before > 1.0, "{before}");
    let reported = clip_global_norm::<B, _>(&model, &mut grads, 1.0);
    assert!((reported - before).abs() < 1e-6 * before);
    let after = global_grad_norm::<B, _>(&model, &mut grads);
    assert!((after - 1.0).abs() < 1e-4, "{after}");
    // A norm already under the limit is left alone.
    assert!((clip_global_norm::<B, _>(&model, &mut grads, 10.0) - after).abs() < 1e-9);
    assert!((global_grad_norm::<B, _>(&model, &mut grads) - after).abs() < 1e-6);
}
