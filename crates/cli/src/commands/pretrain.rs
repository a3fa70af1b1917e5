//! `ember pretrain`: tokenizer, token shards, training and a sample, in one run folder that
//! an interrupted run resumes from.

use std::path::{Path, PathBuf};

use anyhow::bail;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_tokenizer::{corpus_files, write_shards, ShardMeta, Special, TokenShard, Tokenizer};
use ember_train::{fit, save_model, Pretraining, RunDir};
use ember_transformer::{generate, GenerateConfig, Sampling};

use crate::config::{self, Preset, PretrainFile};
use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember pretrain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Text files or folders to train on. Not needed to resume a run whose shards exist.
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// An existing `tokenizer.json` to use instead of training one on the data.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The run folder: tokenizer, shards, checkpoints, metrics and the final model go here.
    /// Running again with the same folder resumes from its last checkpoint.
    #[arg(long, default_value = "runs/pretrain")]
    pub run: PathBuf,
    /// A TOML file with `[model]`, `[tokenizer]`, `[shards]`, `[batch]` and `[train]` tables;
    /// without one, the run folder's own `config.toml` (when resuming) or the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which backend trains.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the model preset.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
}

/// Runs `ember pretrain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = config::for_run(
        &args.run,
        args.config.as_deref(),
        |config: &mut PretrainFile| {
            if let Some(steps) = args.steps {
                config.train.steps = steps;
            }
            if let Some(preset) = args.preset {
                config.model.preset = preset;
            }
        },
    )?;

    let tokenizer = prepare_tokenizer(&args, &config)?;
    let shards = args.run.join("shards");
    let meta = prepare_shards(&args, &config, &tokenizer, &shards)?;
    println!(
        "data: {} train and {} validation tokens ({:.2} tokens per byte) from {} file(s)",
        meta.train_tokens,
        meta.val_tokens,
        meta.val_tokens_per_byte(),
        meta.files.len()
    );
    with_backend!(args.device, |B, AD, device| train::<AD>(
        &args.run, &config, &tokenizer, &shards, &device
    ))
}

fn prepare_tokenizer(args: &Args, config: &PretrainFile) -> anyhow::Result<Tokenizer> {
    let path = args.run.join("tokenizer.json");
    if let Some(given) = &args.tokenizer {
        let mut tokenizer = Tokenizer::from_file(given)?;
        let added = tokenizer.add_missing_special_tokens();
        if added > 0 {
            println!(
                "added {added} of Ember's special tokens to {}",
                given.display()
            );
        }
        tokenizer.save(&path)?;
        return Ok(tokenizer);
    }
    if path.exists() {
        return Ok(Tokenizer::from_file(&path)?);
    }
    if args.data.is_empty() {
        bail!(
            "--data is required: the run folder {} has no tokenizer yet",
            args.run.display()
        );
    }
    println!(
        "training a {}-token BPE tokenizer",
        config.tokenizer.vocab_size
    );
    let mut bpe = config.tokenizer.clone();
    bpe.show_progress = config.train.progress;
    let tokenizer = Tokenizer::train(&corpus_files(&args.data)?, &bpe)?;
    tokenizer.save(&path)?;
    Ok(tokenizer)
}

fn prepare_shards(
    args: &Args,
    config: &PretrainFile,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> anyhow::Result<ShardMeta> {
    if dir.join("meta.json").exists() {
        let meta = ShardMeta::load(dir)?;
        if meta.vocab_size == tokenizer.vocab_size() {
            return Ok(meta);
        }
        println!("the shards were made with another tokenizer; re-encoding");
    }
    if args.data.is_empty() {
        bail!(
            "--data is required: the run folder {} has no token shards yet",
            args.run.display()
        );
    }
    println!("encoding the corpus into token shards");
    Ok(write_shards(tokenizer, &args.data, dir, &config.shards)?)
}

fn train<B: AutodiffBackend>(
    run: &Path,
    config: &PretrainFile,
    tokenizer: &Tokenizer,
    shards: &Path,
    device: &B::Device,
) -> anyhow::Result<()> {
    let model_config = config
        .model
        .resolve(tokenizer.vocab_size(), config.batch.seq_len);
    println!(
        "model: {:?}-shaped, {} layers × {} wide, {} heads, {:.2}M parameters",
        model_config.architecture,
        model_config.n_layers,
        model_config.d_model,
        model_config.n_heads,
        model_config.num_params() as f64 / 1e6
    );
    B::seed(device, config.batch.seed);
    let model = model_config.init::<B>(device)?;
    let mut objective = Pretraining::<B>::open(shards, config.batch.clone(), device)?;
    let (model, summary) = fit(model, &mut objective, &config.train, &RunDir::new(run))?;
    if let Some(step) = summary.resumed_from {
        println!("resumed from step {step}");
    }
    let shown = summary
        .validation
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>();
    println!(
        "validation: {}   ({:.0} tokens/s)",
        shown.join("  "),
        summary.tokens_per_second
    );

    let model = model.valid();
    let out = run.join("model");
    save_model(&model, &out)?;
    tokenizer.save(out.join("tokenizer.json"))?;
    println!(
        "wrote the model to {} (metrics: {})",
        out.display(),
        run.join("metrics.jsonl").display()
    );

    // A sample, continuing the start of the validation text.
    let val = TokenShard::open(&shards.join("val.bin"))?;
    let prompt = val.window(0, val.len().min(8));
    let generation = GenerateConfig {
        max_new_tokens: 80,
        sampling: Sampling::TopK {
            k: 40,
            temperature: 0.8,
        },
        stop_tokens: vec![tokenizer.special(Special::Eos)?],
        pad_token: tokenizer.special(Special::Pad)?,
        seed: 0,
    };
    let sample = generate(&model, std::slice::from_ref(&prompt), &generation)?;
    let text = tokenizer.decode(&[prompt, sample[0].tokens.clone()].concat())?;
    println!("sample:\n{text}");
    Ok(())
}
