//! The data stage: the built-in tasks' pretraining corpus, SFT conversations and held-out
//! examples as files, and reading the held-out examples back for evaluation.

use std::path::{Path, PathBuf};

use ember_instruct::formats::read_records;
use ember_instruct::{Conversation, Message};
use ember_tasks::{Example, Flaw, Flaws, Split, TaskSet};
use ember_tokenizer::write_atomically;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the data stage draws from the built-in tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSettings {
    /// Sentences of pretraining text (60 000: about 1.6 MB, enough for 200 steps of 16 × 128
    /// tokens to see most of it once).
    pub corpus_sentences: usize,
    /// SFT conversations per family.
    pub train_per_family: usize,
    /// Seed of everything drawn.
    pub seed: u64,
    /// The share of the SFT demonstrations with a flaw the labeler dislikes, and which flaws:
    /// imperfect experts, so that rankings have something to teach (docs/tasks.md).
    pub flaws: Flaws,
}

impl Default for TasksSettings {
    fn default() -> Self {
        Self {
            corpus_sentences: 60_000,
            train_per_family: 400,
            seed: 0,
            flaws: Flaws::default(),
        }
    }
}

/// The files the data stage writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskData {
    /// Pretraining text.
    pub corpus: PathBuf,
    /// SFT conversations as the (imperfect) experts gave them, messages JSONL.
    pub sft: PathBuf,
    /// The same prompts with the ideal answers: what flawless experts would have given (the
    /// yardstick the report measures RLHF against).
    pub sft_flawless: PathBuf,
    /// How many demonstrations are flawed, and how ([`DemonstrationCounts`]).
    pub flaws: PathBuf,
    /// Held-out examples (family, prompt, answer), JSONL: what the evaluation answers.
    pub heldout: PathBuf,
}

impl TaskData {
    /// The files inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            corpus: dir.join("corpus.txt"),
            sft: dir.join("sft.jsonl"),
            sft_flawless: dir.join("sft_flawless.jsonl"),
            flaws: dir.join("flaws.json"),
            heldout: dir.join("heldout.jsonl"),
        }
    }

    /// Whether every file is there (the held-out file is written last).
    pub fn exists(&self) -> bool {
        self.corpus.is_file()
            && self.sft.is_file()
            && self.sft_flawless.is_file()
            && self.flaws.is_file()
            && self.heldout.is_file()
    }

    /// The counts of flawed demonstrations.
    ///
    /// # Errors
    /// A missing or damaged `flaws.json`.
    pub fn read_flaws(&self) -> Result<DemonstrationCounts> {
        let text = std::fs::read_to_string(&self.flaws).map_err(|e| Error::io(&self.flaws, e))?;
        serde_json::from_str(&text).map_err(|e| Error::json(&self.flaws, e))
    }
}

/// How many SFT demonstrations are flawed, and how.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DemonstrationCounts {
    /// Demonstrations.
    pub demonstrations: usize,
    /// Of which flawed.
    pub flawed: usize,
    /// Per flaw.
    pub by_flaw: std::collections::BTreeMap<Flaw, usize>,
}

impl DemonstrationCounts {
    /// The flawed share.
    pub fn share(&self) -> f64 {
        self.flawed as f64 / self.demonstrations.max(1) as f64
    }
}

/// What [`export_tasks`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Where.
    pub files: TaskData,
    /// Sentences in the corpus.
    pub sentences: usize,
    /// SFT conversations.
    pub conversations: usize,
    /// Flawed demonstrations among them.
    pub flawed: usize,
    /// Held-out examples.
    pub heldout: usize,
}

impl std::fmt::Display for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote corpus.txt ({} sentences), sft.jsonl ({} conversations, {} of them flawed), sft_flawless.jsonl and heldout.jsonl ({} examples) to {}",
            self.sentences,
            self.conversations,
            self.flawed,
            self.heldout,
            self.files
                .corpus
                .parent()
                .unwrap_or(Path::new("."))
                .display()
        )
    }
}

/// Writes the built-in tasks' corpus, SFT conversations (messages JSONL) and
/// `heldout_per_family` held-out examples per family into `dir`, each file atomically.
///
/// # Errors
/// The files cannot be written.
pub fn export_tasks(
    dir: &Path,
    settings: &TasksSettings,
    heldout_per_family: usize,
) -> Result<Exported> {
    let tasks = TaskSet::builtin();
    let files = TaskData::in_dir(dir);
    let corpus = tasks.corpus(settings.corpus_sentences, settings.seed);
    write_atomically(&files.corpus, corpus.as_bytes())?;
    settings.flaws.validate().map_err(Error::Config)?;
    let train = tasks.examples(Split::Train, settings.train_per_family, settings.seed);
    let given = tasks.demonstrations(&train, &settings.flaws, settings.seed);
    let conversations = |answer: &dyn Fn(&ember_tasks::Demonstration) -> String| {
        let mut lines = String::new();
        for demonstration in &given {
            let conversation = Conversation::new(vec![
                Message::user(&demonstration.example.prompt),
                Message::assistant(answer(demonstration)),
            ]);
            lines.push_str(&serde_json::to_string(&conversation).expect("conversations serialise"));
            lines.push('\n');
        }
        lines
    };
    write_atomically(&files.sft, conversations(&|d| d.given.clone()).as_bytes())?;
    write_atomically(
        &files.sft_flawless,
        conversations(&|d| d.example.answer.clone()).as_bytes(),
    )?;
    let mut counts = DemonstrationCounts {
        demonstrations: given.len(),
        ..Default::default()
    };
    for flaw in given.iter().filter_map(|d| d.flaw) {
        counts.flawed += 1;
        *counts.by_flaw.entry(flaw).or_default() += 1;
    }
    let json = serde_json::to_string_pretty(&counts).expect("counts serialise");
    write_atomically(&files.flaws, json.as_bytes())?;
    let heldout = tasks.examples(Split::HeldOut, heldout_per_family, settings.seed);
    let mut held = String::new();
    for example in &heldout {
        held.push_str(&serde_json::to_string(example).expect("examples serialise"));
        held.push('\n');
    }
    write_atomically(&files.heldout, held.as_bytes())?;
    Ok(Exported {
        files,
        sentences: settings.corpus_sentences,
        conversations: train.len(),
        flawed: counts.flawed,
        heldout: heldout.len(),
    })
}

/// Reads examples written by [`export_tasks`] (`heldout.jsonl`), in order.
///
/// # Errors
/// A missing file, or a record that is not an example (named by its line).
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    read_jsonl(path)
}

/// Reads a JSONL file (or JSON array) of `T`s through `ember_instruct`'s record reader; a
/// record that is not a `T` is [`ember_instruct::Error::BadRecord`] with its line.
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    read_records(path)?
        .into_iter()
        .map(|(line, record)| {
            record
                .and_then(|map| {
                    serde_json::from_value(serde_json::Value::Object(map))
                        .map_err(|e| e.to_string())
                })
                .map_err(|reason| {
                    ember_instruct::Error::BadRecord {
                        path: path.to_path_buf(),
                        line,
                        reason,
                    }
                    .into()
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heldout_file_reads_back_as_the_tasks_draw() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TasksSettings {
            corpus_sentences: 20,
            train_per_family: 10,
            seed: 3,
            flaws: Flaws {
                share: 0.25,
                kinds: vec![Flaw::Ramble, Flaw::Wrong],
                ..Flaws::default()
            },
        };
        let exported = export_tasks(dir.path(), &settings, 2).unwrap();
        assert!(exported.files.exists());
        let counts = exported.files.read_flaws().unwrap();
        assert_eq!((counts.demonstrations, counts.flawed), (80, 20));
        assert_eq!(counts.by_flaw.values().sum::<usize>(), 20);
        assert_eq!(counts.share(), 0.25);
        let flawed = std::fs::read_to_string(&exported.files.sft).unwrap();
        let ideal = std::fs::read_to_string(&exported.files.sft_flawless).unwrap();
        let differ = flawed
            .lines()
            .zip(ideal.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 20);
        let read = read_examples(&exported.files.heldout).unwrap();
        assert_eq!(read, TaskSet::builtin().examples(Split::HeldOut, 2, 3));
        assert_eq!(read.len(), exported.heldout);
        let sft = std::fs::read_to_string(&exported.files.sft).unwrap();
        assert_eq!(sft.lines().count(), exported.conversations);
        std::fs::write(dir.path().join("bad.jsonl"), "{\"family\": 1}\n").unwrap();
        let error = read_examples(&dir.path().join("bad.jsonl")).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("bad.jsonl:1: invalid type: integer `1`, expected a string"),
            "{error}"
        );
    }
}
