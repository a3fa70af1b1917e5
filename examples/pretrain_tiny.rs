//! cargo run --release --example pretrain_tiny -- [TEXT_FILES_OR_FOLDERS...]
//!
//! Stage 1 through the library API, piece by piece: train a tokenizer, shard a corpus,
//! pretrain a small decoder with the shared loop, then sample from it with the KV cache
//! (`ember::pipeline::pretrain` does all of it in one call).
//!
//! Without arguments it trains on this repository's own docs and READMEs, which takes about a
//! minute on a CPU; give it `data/shakespeare` (see `scripts/fetch-shakespeare.sh`) for more text.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use ember::pipeline::ModelFolder;
use ember::tokenizer::{corpus_files, write_shards, BpeConfig, ShardConfig, Special, Tokenizer};
use ember::train::{
    fit, keep_freed_memory, OptimizerConfig, PretrainConfig, Pretraining, RunDir, TrainConfig,
};
use ember::transformer::{generate, DecoderConfig, GenerateConfig, Sampling};

type B = Autodiff<Flex>;

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let mut inputs = std::env::args()
        .skip(1)
        .map(PathBuf::from)
        .collect::<Vec<_>>();
    if inputs.is_empty() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        inputs = vec![
            root.join("docs"),
            root.join("README.md"),
            root.join("crates"),
        ];
        // Only the prose: READMEs and docs, not the sources.
        inputs = corpus_files(&inputs)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
    }
    let run = PathBuf::from("runs/example-pretrain");

    // 1. Tokenizer.
    let files = corpus_files(&inputs)?;
    let tokenizer = Tokenizer::train(
        &files,
        &BpeConfig {
            vocab_size: 1024,
            ..Default::default()
        },
    )?;
    println!(
        "tokenizer: {} tokens from {} file(s)",
        tokenizer.vocab_size(),
        files.len()
    );

    // 2. Token shards with a held-out split.
    let shards = run.join("shards");
    let meta = write_shards(
        &tokenizer,
        &files,
        &shards,
        &ShardConfig {
            block_bytes: 2048,
            ..Default::default()
        },
    )?;
    println!(
        "shards: {} train / {} validation tokens",
        meta.train_tokens, meta.val_tokens
    );

    // 3. Model and objective.
    let device = Default::default();
    B::seed(&device, 0);
    let model = DecoderConfig::new(tokenizer.vocab_size(), 96, 3, 4, 64).init::<B>(&device)?;
    let batch = PretrainConfig {
        batch_size: 16,
        seq_len: 64,
        seed: 0,
        eval_windows: 32,
    };
    let mut objective = Pretraining::<B>::open(&shards, batch, &device)?;

    // 4. The shared loop: warm-up + cosine, clipping, checkpoints, metrics, progress bar.
    let config = TrainConfig {
        steps: 150,
        eval_every: NonZeroUsize::new(50),
        checkpoint_every: NonZeroUsize::new(50),
        optimizer: OptimizerConfig {
            lr: 2e-3,
            warmup_steps: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let (model, summary) = fit(model, &mut objective, &config, &RunDir::new(&run))?;
    println!(
        "validation {:?} at {:.0} tokens/s",
        summary.validation, summary.tokens_per_second
    );

    // 5. Save, and sample.
    let model = model.valid();
    ModelFolder::new(run.join("model")).save(&model, &tokenizer)?;
    let prompt = tokenizer.encode("The model")?;
    let config = GenerateConfig {
        max_new_tokens: 40,
        sampling: Sampling::TopK {
            k: 20,
            temperature: 0.8,
        },
        stop_tokens: vec![tokenizer.special(Special::Eos)?],
        pad_token: tokenizer.special(Special::Pad)?,
        seed: 1,
    };
    let out = generate(&model, std::slice::from_ref(&prompt), &config)?;
    println!(
        "sample: {}",
        tokenizer.decode(&[prompt, out[0].tokens.clone()].concat())?
    );
    Ok(())
}
