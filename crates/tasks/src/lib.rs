#![doc = include_str!("../README.md")]

mod families;
mod flaws;
mod judge;
mod words;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

pub use families::{
    Arithmetic, Compare, CountLetters, Describe, Reverse, SortNumbers, Spell, Translate,
};
pub use flaws::{near_miss, Demonstration, Flaw, Flaws, PLEASANTRIES};
pub use judge::{closeness, grade, repeats};
pub use words::{FACTS, WORDS};

/// One prompt of a task family and the expert's answer to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The family's name.
    pub family: String,
    /// The instruction.
    pub prompt: String,
    /// The reference ("expert") answer.
    pub answer: String,
}

/// A family of tasks with checkable answers. Implement it to add a family of your own.
pub trait Task: Send + Sync {
    /// A short name, used in reports.
    fn name(&self) -> &'static str;

    /// A prompt and its reference answer, drawn with `rng`.
    fn generate(&self, rng: &mut StdRng) -> (String, String);

    /// The one right answer to `prompt`, recovered from the prompt alone; `None` if the
    /// prompt is not one of this family's, or the family is open-ended.
    fn reference(&self, prompt: &str) -> Option<String>;

    /// The labeler's score of `answer` to `prompt`, in [0, 1]: the reference answer gets 1,
    /// a wrong one less ([`grade`] against [`Task::reference`] unless the family says
    /// otherwise). `None` if the prompt is not one of this family's.
    fn score(&self, prompt: &str, answer: &str) -> Option<f64> {
        Some(grade(answer, &self.reference(prompt)?))
    }

    /// A plausible wrong answer to `prompt` whose right answer is `answer`, for flawed
    /// demonstrations ([`Flaw::Wrong`]): by default [`near_miss`] of the answer; `None` if
    /// there is none.
    fn near_miss(&self, prompt: &str, answer: &str, rng: &mut StdRng) -> Option<String> {
        let _ = prompt;
        near_miss(answer, rng)
    }

    /// Sentences in the same world, for the pretraining corpus: the facts and words the
    /// family's answers need, in varied phrasings.
    fn corpus_sentence(&self, rng: &mut StdRng) -> String;
}

/// Which prompts: those training may see, or the held-out ones it never sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// About 90% of each family's prompts.
    Train,
    /// The other 10%, for evaluation only.
    HeldOut,
}

/// FNV-1a, stable across Rust versions.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The split a prompt belongs to: a function of its text alone, so no seed or order can leak
/// a held-out prompt into training.
pub fn split_of(prompt: &str) -> Split {
    if fnv1a(prompt).is_multiple_of(10) {
        Split::HeldOut
    } else {
        Split::Train
    }
}

/// A set of task families.
pub struct TaskSet {
    tasks: Vec<Box<dyn Task>>,
}

impl std::fmt::Debug for TaskSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tasks.iter().map(|t| t.name()))
            .finish()
    }
}

impl TaskSet {
    /// Ember's built-in families.
    pub fn builtin() -> Self {
        Self {
            tasks: vec![
                Box::new(Translate),
                Box::new(Arithmetic),
                Box::new(Reverse),
                Box::new(Spell),
                Box::new(CountLetters),
                Box::new(SortNumbers),
                Box::new(Compare),
                Box::new(Describe),
            ],
        }
    }

    /// Adds a family.
    pub fn with(mut self, task: Box<dyn Task>) -> Self {
        self.tasks.push(task);
        self
    }

    /// The families' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|t| t.name()).collect()
    }

    /// `per_family` examples of each family from `split`, the same for the same seed.
    pub fn examples(&self, split: Split, per_family: usize, seed: u64) -> Vec<Example> {
        let mut out = Vec::new();
        for (index, task) in self.tasks.iter().enumerate() {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut found = 0;
            // Small families may not have `per_family` prompts in a split: give up after a while.
            for _ in 0..per_family * 200 {
                if found == per_family {
                    break;
                }
                let (prompt, answer) = task.generate(&mut rng);
                if split_of(&prompt) == split {
                    out.push(Example {
                        family: task.name().to_owned(),
                        prompt,
                        answer,
                    });
                    found += 1;
                }
            }
        }
        out
    }

    /// The family named `name`.
    pub fn task(&self, name: &str) -> Option<&dyn Task> {
        self.tasks
            .iter()
            .find(|t| t.name() == name)
            .map(|t| t.as_ref())
    }

    /// The score of `answer` to `prompt` by the family named `family`; `None` for an unknown
    /// family or a prompt it does not recognise.
    pub fn score(&self, family: &str, prompt: &str, answer: &str) -> Option<f64> {
        self.tasks
            .iter()
            .find(|t| t.name() == family)?
            .score(prompt, answer)
    }

    /// The labeler's score of `answer` with its ties broken by closeness to the reference:
    /// `score + weight × closeness`, where [`closeness`] is in [0, 1]. With `weight` below
    /// the smallest step between the judge's levels (0.1 for the built-in judges) it never
    /// reverses the judge's order; it only ranks wrong answers by how near they come ("s-t-a-e"
    /// above "c-a-r-d" for "star"). Open-ended families have no reference and keep their
    /// score. `None` as for [`TaskSet::score`].
    pub fn label(&self, family: &str, prompt: &str, answer: &str, weight: f64) -> Option<f64> {
        let task = self.tasks.iter().find(|t| t.name() == family)?;
        let score = task.score(prompt, answer)?;
        let near = task
            .reference(prompt)
            .map_or(0.0, |r| closeness(answer, &r));
        Some(score + weight * near)
    }

    /// A pretraining corpus of `sentences` sentences, one per line, drawn from every family.
    pub fn corpus(&self, sentences: usize, seed: u64) -> String {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut text = String::new();
        for i in 0..sentences {
            text.push_str(&self.tasks[i % self.tasks.len()].corpus_sentence(&mut rng));
            text.push('\n');
        }
        text
    }
}
