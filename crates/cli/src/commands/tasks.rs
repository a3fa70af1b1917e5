//! `ember tasks export`: the built-in tasks' data as files the other commands read.

use std::path::PathBuf;

use ember_pipeline::{export_tasks, TasksSettings};
use ember_tasks::{Flaw, Flaws};

/// Arguments of `ember tasks export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The folder to write `corpus.txt`, `sft.jsonl` (the demonstrations as imperfect experts
    /// give them), `sft_flawless.jsonl` (the ideal answers), `flaws.json` and
    /// `heldout.jsonl` into.
    #[arg(long, default_value = "data/tasks")]
    pub out: PathBuf,
    /// Sentences of pretraining text.
    #[arg(long, default_value_t = 60_000)]
    pub corpus_sentences: usize,
    /// Training conversations per task family.
    #[arg(long, default_value_t = 400)]
    pub train_per_family: usize,
    /// Held-out examples per task family.
    #[arg(long, default_value_t = 25)]
    pub heldout_per_family: usize,
    /// Share of the SFT demonstrations with a flaw the labeler dislikes, in [0, 1].
    #[arg(long, default_value_t = 0.6)]
    pub flawed_share: f64,
    /// The flaws, one drawn per flawed demonstration.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ramble")]
    pub flaws: Vec<FlawArg>,
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
        flaws: Flaws {
            share: args.flawed_share,
            kinds: args.flaws.into_iter().map(Flaw::from).collect(),
            ..Flaws::default()
        },
    };
    println!(
        "{}",
        export_tasks(&args.out, &settings, args.heldout_per_family)?
    );
    Ok(())
}

/// A flaw of a demonstration.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FlawArg {
    /// The right answer, then a pleasantry ("… I hope this helps.").
    Ramble,
    /// A plausible wrong answer (a near miss).
    Wrong,
}

impl From<FlawArg> for Flaw {
    fn from(flaw: FlawArg) -> Self {
        match flaw {
            FlawArg::Ramble => Flaw::Ramble,
            FlawArg::Wrong => Flaw::Wrong,
        }
    }
}
