//! The built-in families. Each judge recovers the right answer from the prompt alone.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::judge::repeats;
use crate::words::{FACTS, WORDS};
use crate::Task;

const LANGUAGES: [&str; 4] = ["English", "French", "German", "Spanish"];

fn word_in(
    entry: &(&'static str, &'static str, &'static str, &'static str),
    language: usize,
) -> &'static str {
    [entry.0, entry.1, entry.2, entry.3][language]
}

fn pick_word(rng: &mut StdRng) -> &'static str {
    WORDS.choose(rng).expect("words").0
}

/// Phrasings of one question: the text before and after its subject.
type Phrasings = [(&'static str, &'static str)];

fn phrase(phrasings: &Phrasings, subject: &str, rng: &mut StdRng) -> String {
    let (before, after) = phrasings.choose(rng).expect("phrasings");
    format!("{before}{subject}{after}")
}

/// The subject of a prompt in any of the phrasings.
fn subject<'a>(phrasings: &Phrasings, prompt: &'a str) -> Option<&'a str> {
    phrasings
        .iter()
        .find_map(|(before, after)| prompt.strip_prefix(before)?.strip_suffix(after))
}

const REVERSE: &Phrasings = &[
    ("Reverse the word: ", ""),
    ("Write the word ", " backwards."),
    ("Spell ", " in reverse order."),
];
const SPELL: &Phrasings = &[
    ("Spell the word: ", ""),
    ("How do you spell ", "?"),
    ("Spell out ", " letter by letter."),
];
const COUNT: &Phrasings = &[
    ("How many letters are in the word ", "?"),
    ("Count the letters in ", "."),
    ("How long is the word ", ", in letters?"),
];
const DESCRIBE: &Phrasings = &[
    ("Describe a ", " in one sentence."),
    ("In one sentence, describe a ", "."),
    ("Write one sentence about a ", "."),
];

/// Word translation between English and French, German or Spanish, both ways.
#[derive(Debug, Clone, Copy)]
pub struct Translate;

impl Task for Translate {
    fn name(&self) -> &'static str {
        "translate"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let entry = WORDS.choose(rng).expect("words");
        let other = rng.random_range(1..4);
        let (from, to) = if rng.random_bool(0.5) {
            (0, other)
        } else {
            (other, 0)
        };
        (
            format!(
                "Translate into {}: {}. Translation:",
                LANGUAGES[to],
                word_in(entry, from)
            ),
            format!("{}.", word_in(entry, to)),
        )
    }

    fn reference(&self, prompt: &str) -> Option<String> {
        let rest = prompt.strip_prefix("Translate into ")?;
        let (language, rest) = rest.split_once(": ")?;
        let word = rest.strip_suffix(". Translation:")?;
        let to = LANGUAGES.iter().position(|l| *l == language)?;
        let entry = WORDS
            .iter()
            .find(|e| (0..4).any(|l| word_in(e, l) == word))?;
        Some(format!("{}.", word_in(entry, to)))
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let entry = WORDS.choose(rng).expect("words");
        let l = rng.random_range(1..4);
        let (english, other) = (entry.0, word_in(entry, l));
        match rng.random_range(0..3) {
            0 => format!("The {} word for {english} is {other}.", LANGUAGES[l]),
            1 => format!("In {}, {english} is {other}.", LANGUAGES[l]),
            _ => format!("{other} means {english} in {}.", LANGUAGES[l]),
        }
    }
}

/// Addition and subtraction below 20 and multiplication up to 5 × 5.
#[derive(Debug, Clone, Copy)]
pub struct Arithmetic;

fn apply(a: i64, op: char, b: i64) -> Option<i64> {
    match op {
        '+' => Some(a + b),
        '-' => Some(a - b),
        '*' => Some(a * b),
        _ => None,
    }
}

impl Task for Arithmetic {
    fn name(&self) -> &'static str {
        "arithmetic"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        // Small numbers, so that the pipeline's 1M-parameter model can sometimes get them
        // right: what RL can improve is what the policy sometimes samples (docs/tasks.md).
        let op = *['+', '-', '*'].choose(rng).expect("ops");
        let (a, b) = match op {
            '*' => (rng.random_range(2..6), rng.random_range(2..6)),
            '-' => {
                let b = rng.random_range(1..10);
                (b + rng.random_range(0..10), b)
            }
            _ => (rng.random_range(1..10), rng.random_range(1..10)),
        };
        (
            format!("What is {a} {op} {b}?"),
            apply(a, op, b).expect("known op").to_string(),
        )
    }

    fn reference(&self, prompt: &str) -> Option<String> {
        let body = prompt.strip_prefix("What is ")?.strip_suffix('?')?;
        let mut parts = body.split(' ');
        let a = parts.next()?.parse().ok()?;
        let op = parts.next()?.chars().next()?;
        let b = parts.next()?.parse().ok()?;
        Some(apply(a, op, b)?.to_string())
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let (prompt, answer) = self.generate(rng);
        let body = prompt.trim_start_matches("What is ").trim_end_matches('?');
        let words = body
            .replace(" + ", " plus ")
            .replace(" - ", " minus ")
            .replace(" * ", " times ");
        match rng.random_range(0..2) {
            0 => format!("{words} is {answer}."),
            _ => format!("{body} = {answer}"),
        }
    }
}

/// Writing a word backwards.
#[derive(Debug, Clone, Copy)]
pub struct Reverse;

impl Task for Reverse {
    fn name(&self) -> &'static str {
        "reverse"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let word = pick_word(rng);
        (phrase(REVERSE, word, rng), word.chars().rev().collect())
    }

    fn reference(&self, prompt: &str) -> Option<String> {
        Some(subject(REVERSE, prompt)?.chars().rev().collect())
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let word = pick_word(rng);
        format!(
            "The word {word} written backwards is {}.",
            word.chars().rev().collect::<String>()
        )
    }
}

fn spelled(word: &str) -> String {
    word.chars().map(String::from).collect::<Vec<_>>().join("-")
}

/// Spelling a word letter by letter.
#[derive(Debug, Clone, Copy)]
pub struct Spell;

impl Task for Spell {
    fn name(&self) -> &'static str {
        "spell"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let word = pick_word(rng);
        (phrase(SPELL, word, rng), spelled(word))
    }

    fn reference(&self, prompt: &str) -> Option<String> {
        Some(spelled(subject(SPELL, prompt)?))
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let word = pick_word(rng);
        format!("{word} is spelled {}.", spelled(word))
    }
}

/// Counting the letters of a word.
#[derive(Debug, Clone, Copy)]
pub struct CountLetters;

impl Task for CountLetters {
    fn name(&self) -> &'static str {
        "count_letters"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let word = pick_word(rng);
        (phrase(COUNT, word, rng), word.chars().count().to_string())
    }

    fn reference(&self, prompt: &str) -> Option<String> {
        Some(subject(COUNT, prompt)?.chars().count().to_string())
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let word = pick_word(rng);
        format!("The word {word} has {} letters.", word.chars().count())
    }
}

fn join(numbers: &[i64]) -> String {
    numbers
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sorting three or four numbers below 20.
#[derive(Debug, Clone, Copy)]
pub struct SortNumbers;

impl Task for SortNumbers {
    fn name(&self) -> &'static str {
        "sort"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let n = rng.random_range(3..5);
        let mut numbers = (0..n)
            .map(|_| rng.random_range(0..20))
            .collect::<Vec<i64>>();
        let prompt = format!("Sort from smallest to largest: {}", join(&numbers));
        numbers.sort_unstable();
        (prompt, join(&numbers))
    }

    fn reference(&self, prompt: &str) -> Option<String> {
        let list = prompt.strip_prefix("Sort from smallest to largest: ")?;
        let mut numbers = list
            .split(", ")
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<i64>>>()?;
        numbers.sort_unstable();
        Some(join(&numbers))
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let (prompt, answer) = self.generate(rng);
        format!(
            "In order, {} becomes {answer}.",
            prompt.trim_start_matches("Sort from smallest to largest: ")
        )
    }
}

/// Which of two numbers below 100 is larger.
#[derive(Debug, Clone, Copy)]
pub struct Compare;

impl Task for Compare {
    fn name(&self) -> &'static str {
        "compare"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let a: i64 = rng.random_range(0..100);
        let mut b: i64 = rng.random_range(0..100);
        if b == a {
            b = (a + 1) % 100;
        }
        (
            format!("Which is larger, {a} or {b}?"),
            a.max(b).to_string(),
        )
    }

    fn reference(&self, prompt: &str) -> Option<String> {
        let body = prompt
            .strip_prefix("Which is larger, ")?
            .strip_suffix('?')?;
        let (a, b) = body.split_once(" or ")?;
        let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
        Some(a.max(b).to_string())
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let (prompt, answer) = self.generate(rng);
        let body = prompt
            .trim_start_matches("Which is larger, ")
            .trim_end_matches('?');
        let (a, b) = body.split_once(" or ").expect("generated");
        let smaller = if a == answer { b } else { a };
        format!("{answer} is larger than {smaller}.")
    }
}

/// "Describe X in one sentence": open-ended, judged on content and form.
#[derive(Debug, Clone, Copy)]
pub struct Describe;

impl Task for Describe {
    fn name(&self) -> &'static str {
        "describe"
    }

    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let entry = WORDS.choose(rng).expect("words");
        (phrase(DESCRIBE, entry.0, rng), describe(entry))
    }

    /// Open-ended: there is no one right answer.
    fn reference(&self, _prompt: &str) -> Option<String> {
        None
    }

    /// Half for content, half for form. Content: the answer says something true about the
    /// subject — it names one of the subject's translations or a word of its fact — and
    /// nothing of another word of the world (no other word's translation, no word of the
    /// world that neither the subject's names nor its fact hold). Form, a quarter each: one
    /// sentence ending with a period; it names the subject; 4 to 25 words; no repeated run
    /// of three words. A fluent sentence about the wrong thing gets half marks at most.
    fn score(&self, prompt: &str, answer: &str) -> Option<f64> {
        let subject = subject(DESCRIBE, prompt)?;
        let entry = WORDS.iter().find(|e| e.0 == subject)?;
        let answer = answer.trim();
        let lower = answer.to_lowercase();
        let tokens = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>();
        let one_sentence = answer.ends_with('.') && answer.matches(['.', '!', '?']).count() == 1;
        let names_it = tokens.contains(&subject);
        let words = answer.split_whitespace().count();
        let form = [
            one_sentence,
            names_it,
            (4..=25).contains(&words),
            !repeats(answer) && !answer.is_empty(),
        ];
        let form = form.iter().filter(|&&c| c).count() as f64 / form.len() as f64;
        let content = if true_of(entry, &tokens) { 1.0 } else { 0.0 };
        Some(0.5 * content + 0.5 * form)
    }

    /// Another word's description told of this one ("A water is called voiture in French
    /// and Auto in German."): fluent, and wrong.
    fn near_miss(&self, prompt: &str, _answer: &str, rng: &mut StdRng) -> Option<String> {
        let subject = subject(DESCRIBE, prompt)?;
        let others = WORDS.iter().filter(|e| e.0 != subject).collect::<Vec<_>>();
        let other = others.choose(rng)?;
        let told = format!(
            "A {subject} is called {} in French and {} in German.",
            other.1, other.2
        );
        Some(told)
    }

    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        describe(WORDS.choose(rng).expect("words"))
    }
}

/// Whether the lower-case `tokens` of a description say something true of `entry` and
/// nothing of another word: it names one of the subject's translations or a content word
/// (four letters or more) of its fact, and no word of the world (any entry, any language)
/// that is neither the subject's nor in its fact.
fn true_of(
    entry: &(&'static str, &'static str, &'static str, &'static str),
    tokens: &[&str],
) -> bool {
    let lower = |w: &str| w.to_lowercase();
    let names = [entry.1, entry.2, entry.3].map(lower);
    let fact = FACTS
        .iter()
        .find(|(word, _)| *word == entry.0)
        .map(|(_, fact)| fact.to_lowercase())
        .unwrap_or_default();
    let fact_words = fact
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>();
    let world = |token: &str| {
        WORDS
            .iter()
            .any(|e| [e.0, e.1, e.2, e.3].iter().any(|w| lower(w) == token))
    };
    let mut informative = false;
    for &token in tokens.iter().filter(|&&t| t != entry.0) {
        let named = names.iter().any(|n| n == token);
        let in_fact = fact_words.contains(&token);
        if world(token) && !named && !in_fact {
            return false;
        }
        informative |= named || (in_fact && token.chars().count() >= 4);
    }
    informative
}

/// The reference description of a word: its fact when the list has one, else its names in
/// the other languages.
fn describe(entry: &(&'static str, &'static str, &'static str, &'static str)) -> String {
    match FACTS.iter().find(|(word, _)| *word == entry.0) {
        Some((_, fact)) => (*fact).to_owned(),
        None => format!(
            "A {} is called {} in French and {} in German.",
            entry.0, entry.1, entry.2
        ),
    }
}
