//! `ember tasks export`: the built-in tasks' data as files the other commands read.

use std::path::PathBuf;

use ember_instruct::{Conversation, Message};
use ember_tasks::{Split, TaskSet};
use ember_tokenizer::write_atomically;

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
    let tasks = TaskSet::builtin();
    std::fs::create_dir_all(&args.out)?;
    let corpus = tasks.corpus(args.corpus_sentences, args.seed);
    write_atomically(&args.out.join("corpus.txt"), corpus.as_bytes())?;
    let mut sft = String::new();
    for example in tasks.examples(Split::Train, args.train_per_family, args.seed) {
        let conversation = Conversation::new(vec![
            Message::user(example.prompt),
            Message::assistant(example.answer),
        ]);
        sft.push_str(&serde_json::to_string(&conversation)?);
        sft.push('\n');
    }
    write_atomically(&args.out.join("sft.jsonl"), sft.as_bytes())?;
    let mut held = String::new();
    for example in tasks.examples(Split::HeldOut, args.heldout_per_family, args.seed) {
        held.push_str(&serde_json::to_string(&example)?);
        held.push('\n');
    }
    write_atomically(&args.out.join("heldout.jsonl"), held.as_bytes())?;
    println!(
        "wrote corpus.txt ({} sentences), sft.jsonl ({} conversations) and heldout.jsonl ({} examples) to {}",
        args.corpus_sentences,
        sft.lines().count(),
        held.lines().count(),
        args.out.display()
    );
    Ok(())
}
