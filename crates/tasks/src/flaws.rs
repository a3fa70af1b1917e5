//! Imperfect demonstrations: the experts who write SFT answers are human. A configurable share
//! of them carries a flaw the labeler dislikes, so that rankings of the SFT model's answers
//! teach what the demonstrations did not (docs/tasks.md).

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Example, TaskSet};

/// Pleasantries a rambling expert might add after the answer; [`Flaws::default`] uses the
/// first alone (one verbal habit, as one team of experts might share).
pub const PLEASANTRIES: &[&str] = &[
    "I hope this helps.",
    "Let me know if you need anything else.",
    "Happy to help!",
    "Glad I could help.",
];

/// A flaw of a demonstration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flaw {
    /// The right answer, then a pleasantry: it does not end cleanly (the judge's 0.6 instead
    /// of 1 for one-answer families, one form check lost for `describe`).
    Ramble,
    /// A plausible wrong answer (a near miss: a number off by one or two, two letters or
    /// items swapped, a description of another thing).
    Wrong,
}

impl Flaw {
    /// Its name in settings and reports.
    pub fn name(self) -> &'static str {
        match self {
            Flaw::Ramble => "ramble",
            Flaw::Wrong => "wrong",
        }
    }
}

/// Which share of the demonstrations is flawed, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Flaws {
    /// Share of the demonstrations with a flaw, in [0, 1]: exactly this share of them
    /// (rounded to the nearest whole demonstration), chosen at random.
    pub share: f64,
    /// The flaws, one drawn uniformly for each flawed demonstration.
    pub kinds: Vec<Flaw>,
    /// What a rambling expert adds after the answer, one drawn uniformly per rambling
    /// demonstration.
    pub pleasantries: Vec<String>,
}

impl Default for Flaws {
    fn default() -> Self {
        Self {
            share: 0.6,
            kinds: vec![Flaw::Ramble],
            pleasantries: vec![PLEASANTRIES[0].to_string()],
        }
    }
}

impl Flaws {
    /// No flaw: every demonstration is the expert's ideal answer.
    pub fn none() -> Self {
        Self {
            share: 0.0,
            kinds: Vec::new(),
            pleasantries: Vec::new(),
        }
    }

    /// Checks the share and the kinds.
    ///
    /// # Errors
    /// A share outside [0, 1], or a share above 0 with no kind of flaw.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.share) {
            return Err(format!(
                "the flawed share must be in [0, 1], got {}",
                self.share
            ));
        }
        if self.share > 0.0 && self.kinds.is_empty() {
            return Err("a flawed share above 0 needs at least one kind of flaw".into());
        }
        if self.kinds.contains(&Flaw::Ramble)
            && self.pleasantries.iter().all(|p| p.trim().is_empty())
        {
            return Err("rambling needs at least one pleasantry".into());
        }
        Ok(())
    }

    /// How many of `n` demonstrations get a flaw.
    pub fn count(&self, n: usize) -> usize {
        ((self.share * n as f64).round() as usize).min(n)
    }
}

/// A demonstration as the expert gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demonstration {
    /// The example: its prompt and the ideal answer.
    pub example: Example,
    /// The answer the expert gave: the ideal one, or a flawed one.
    pub given: String,
    /// Its flaw, if it has one.
    pub flaw: Option<Flaw>,
}

impl TaskSet {
    /// The demonstrations of `examples` as imperfect experts give them: [`Flaws::count`] of
    /// them, chosen with `seed`, carry a flaw drawn from `flaws.kinds`; the others are the
    /// ideal answers. A flaw that cannot change an answer (no near miss of it exists) leaves
    /// it ideal and unflawed.
    ///
    /// # Panics
    /// Never for flaws that pass [`Flaws::validate`]; a share above 0 with no kinds flaws
    /// nothing.
    pub fn demonstrations(
        &self,
        examples: &[Example],
        flaws: &Flaws,
        seed: u64,
    ) -> Vec<Demonstration> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xF1A3_5EED);
        let mut order = (0..examples.len()).collect::<Vec<_>>();
        order.shuffle(&mut rng);
        let mut flawed = vec![None; examples.len()];
        if !flaws.kinds.is_empty() {
            for &i in &order[..flaws.count(examples.len())] {
                flawed[i] = flaws.kinds.choose(&mut rng).copied();
            }
        }
        examples
            .iter()
            .zip(flawed)
            .map(|(example, flaw)| {
                let given = flaw.and_then(|flaw| self.flawed(example, flaw, flaws, &mut rng));
                Demonstration {
                    example: example.clone(),
                    flaw: given.as_ref().and(flaw),
                    given: given.unwrap_or_else(|| example.answer.clone()),
                }
            })
            .collect()
    }

    /// `example`'s answer with `flaw`; `None` when there is no such answer.
    /// (A pleasantry from `flaws.pleasantries` for [`Flaw::Ramble`].)
    pub fn flawed(
        &self,
        example: &Example,
        flaw: Flaw,
        flaws: &Flaws,
        rng: &mut StdRng,
    ) -> Option<String> {
        match flaw {
            Flaw::Ramble => {
                let pleasantry = flaws.pleasantries.choose(rng)?;
                Some(format!("{} {}", example.answer, pleasantry.trim()))
            }
            Flaw::Wrong => {
                let task = self.task(&example.family)?;
                task.near_miss(&example.prompt, &example.answer, rng)
                    .filter(|wrong| wrong != &example.answer)
            }
        }
    }
}

/// A plausible wrong answer of the same shape as `answer`: an integer off by one or two, two
/// neighbouring items of a list swapped, or two neighbouring letters of its longest word
/// swapped (a letter changed when they are the same).
pub fn near_miss(answer: &str, rng: &mut StdRng) -> Option<String> {
    if let Ok(n) = answer.parse::<i64>() {
        let step = rng.random_range(1..=2);
        return Some(
            if rng.random_bool(0.5) {
                n + step
            } else {
                n - step
            }
            .to_string(),
        );
    }
    if answer.contains(", ") {
        let mut items = answer.split(", ").collect::<Vec<_>>();
        let pairs = (0..items.len() - 1)
            .filter(|&i| items[i] != items[i + 1])
            .collect::<Vec<_>>();
        let &i = pairs.choose(rng)?;
        items.swap(i, i + 1);
        return Some(items.join(", "));
    }
    // The longest run of letters, with a neighbouring pair of its letters swapped.
    let chars = answer.chars().collect::<Vec<_>>();
    let letters = chars
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_alphabetic())
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    if letters.len() < 2 {
        return None;
    }
    let pairs = letters
        .windows(2)
        .filter(|w| chars[w[0]] != chars[w[1]])
        .map(|w| (w[0], w[1]))
        .collect::<Vec<_>>();
    let mut out = chars.clone();
    match pairs.choose(rng) {
        Some(&(a, b)) => out.swap(a, b),
        None => {
            let i = letters[0];
            out[i] = if out[i] == 'z' { 'y' } else { 'z' };
        }
    }
    Some(out.into_iter().collect())
}
