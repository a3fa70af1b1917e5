//! `ember tokenizer train`.

use std::path::PathBuf;

use anyhow::Context as _;
use ember_tokenizer::{corpus_files, BpeConfig, Tokenizer};

use ember_pipeline::settings;

/// Arguments of `ember tokenizer train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Text files, or folders of them (read recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Where to write the tokenizer.
    #[arg(long, short, default_value = "tokenizer.json")]
    pub output: PathBuf,
    /// Vocabulary size, special tokens included [default: 4096].
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// A TOML file with `vocab_size`, `min_frequency`, `show_progress`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replace `--output` if it exists (models trained with the old tokenizer then no longer
    /// read their ids right).
    #[arg(long)]
    pub force: bool,
}

/// Trains and saves a tokenizer.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    super::refuse_to_replace(&args.output, args.force)?;
    let mut config: BpeConfig = settings::load(args.config.as_deref())?;
    if let Some(v) = args.vocab_size {
        config.vocab_size = v;
    }
    config.show_progress = true;
    let files = corpus_files(&args.inputs)?;
    let tokenizer = Tokenizer::train(&files, &config)?;
    tokenizer
        .save(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "trained a {}-token BPE on {} file(s); wrote {}",
        tokenizer.vocab_size(),
        files.len(),
        args.output.display()
    );
    Ok(())
}
