//! `ember tasks export`: the built-in tasks' data as files the other commands read.

use std::path::PathBuf;

use ember_pipeline::{export_tasks, TasksSettings};

/// Arguments of `ember tasks export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The folder to write `corpus.txt`, `sft.jsonl` and `heldout.jsonl` into.
    #[arg(long, default_value = "data/tasks")]
    pub out: PathBuf,
    /// Sentences of pretraining text.
    #[arg(long, default_value_t = 60_000)]
    pub corpus_sentences: usize,
    /// Training conversations per task family.
    #[arg(long, default_value_t = 400)]
    pub train_per_family: usize,
    /// Held-out examples per task family.
    #[arg(long, default_value_t = 20)]
    pub heldout_per_family: usize,
    /// Seed of everything drawn.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Writes the corpus, the SFT conversations (messages JSONL) and the held-out examples.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let settings = TasksSettings {
        corpus_sentences: args.corpus_sentences,
        train_per_family: args.train_per_family,
        seed: args.seed,
    };
    println!(
        "{}",
        export_tasks(&args.out, &settings, args.heldout_per_family)?
    );
    Ok(())
}
