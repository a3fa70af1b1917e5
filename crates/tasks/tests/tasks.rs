//! The built-in tasks: deterministic, fairly judged, and split so training never sees a
//! held-out prompt.

use std::collections::HashSet;

use ember_tasks::{split_of, Split, Task, TaskSet};
use rand::rngs::StdRng;
use rand::Rng;

#[test]
fn examples_are_deterministic_per_seed() {
    let tasks = TaskSet::builtin();
    assert_eq!(
        tasks.examples(Split::Train, 20, 1),
        tasks.examples(Split::Train, 20, 1)
    );
    assert_ne!(
        tasks.examples(Split::Train, 20, 1),
        tasks.examples(Split::Train, 20, 2)
    );
    assert_eq!(tasks.corpus(50, 3), tasks.corpus(50, 3));
}

#[test]
fn every_family_has_examples_in_both_splits() {
    let tasks = TaskSet::builtin();
    for (split, wanted) in [(Split::Train, 50), (Split::HeldOut, 8)] {
        let examples = tasks.examples(split, wanted, 0);
        for name in tasks.names() {
            let n = examples.iter().filter(|e| e.family == name).count();
            assert_eq!(n, wanted, "{name} has {n} {split:?} examples");
        }
    }
}

#[test]
fn held_out_prompts_never_reach_training() {
    let tasks = TaskSet::builtin();
    let held = tasks
        .examples(Split::HeldOut, 30, 5)
        .into_iter()
        .map(|e| e.prompt)
        .collect::<HashSet<_>>();
    for seed in 0..5 {
        for example in tasks.examples(Split::Train, 200, seed) {
            assert!(!held.contains(&example.prompt), "{}", example.prompt);
            assert_eq!(split_of(&example.prompt), Split::Train);
        }
    }
}

/// A wrong answer for each family: the reference answer with its content changed.
fn wrong(answer: &str) -> String {
    if let Ok(n) = answer.parse::<i64>() {
        return (n + 1).to_string();
    }
    if answer.contains(", ") {
        let mut parts = answer.split(", ").collect::<Vec<_>>();
        parts.reverse();
        return parts.join(", ");
    }
    format!("zz{}", answer.trim_end_matches('.'))
}

#[test]
fn every_judge_gives_the_reference_full_marks_and_a_wrong_answer_less() {
    let tasks = TaskSet::builtin();
    for example in tasks
        .examples(Split::Train, 25, 9)
        .into_iter()
        .chain(tasks.examples(Split::HeldOut, 5, 9))
    {
        let reference = tasks
            .score(&example.family, &example.prompt, &example.answer)
            .unwrap();
        assert_eq!(reference, 1.0, "{example:?}");
        if example.family == "describe" {
            let rambling = "it it it it it it it it and and and and and and";
            assert!(
                tasks
                    .score(&example.family, &example.prompt, rambling)
                    .unwrap()
                    < 1.0
            );
            continue;
        }
        let bad = wrong(&example.answer);
        if bad != example.answer {
            let score = tasks.score(&example.family, &example.prompt, &bad).unwrap();
            assert!(score < 0.5, "{example:?} scored {score} for {bad:?}");
        }
        // Correct but not ending cleanly is better than wrong, worse than clean.
        let chatty = format!("{} I hope this helps you today.", example.answer);
        let score = tasks
            .score(&example.family, &example.prompt, &chatty)
            .unwrap();
        assert!((0.5..1.0).contains(&score), "{example:?}: {score}");
    }
}

#[test]
fn judges_know_their_own_prompts_only() {
    let tasks = TaskSet::builtin();
    assert_eq!(
        tasks.score(
            "arithmetic",
            "Translate into French: cat. Translation:",
            "chat."
        ),
        None
    );
    assert_eq!(tasks.score("no such family", "What is 1 + 1?", "2"), None);
    assert_eq!(
        tasks.score("arithmetic", "What is 17 + 25?", "42"),
        Some(1.0)
    );
    assert_eq!(
        tasks.score(
            "translate",
            "Translate into English: Hund. Translation:",
            "dog."
        ),
        Some(1.0)
    );
    assert_eq!(
        tasks.score("sort", "Sort from smallest to largest: 5, 2, 9", "2, 5, 9"),
        Some(1.0)
    );
}

/// A family a user adds: doubling a number.
struct Double;

impl Task for Double {
    fn name(&self) -> &'static str {
        "double"
    }
    fn generate(&self, rng: &mut StdRng) -> (String, String) {
        let n: i64 = rng.random_range(0..50);
        (format!("Double {n}."), (2 * n).to_string())
    }
    fn reference(&self, prompt: &str) -> Option<String> {
        let n: i64 = prompt
            .strip_prefix("Double ")?
            .strip_suffix('.')?
            .parse()
            .ok()?;
        Some((2 * n).to_string())
    }
    fn corpus_sentence(&self, rng: &mut StdRng) -> String {
        let n: i64 = rng.random_range(0..50);
        format!("Twice {n} is {}.", 2 * n)
    }
}

#[test]
fn a_user_can_add_a_family() {
    let tasks = TaskSet::builtin().with(Box::new(Double));
    let examples = tasks.examples(Split::Train, 5, 0);
    assert_eq!(examples.iter().filter(|e| e.family == "double").count(), 5);
    assert_eq!(tasks.score("double", "Double 21.", "42"), Some(1.0));
    assert_eq!(tasks.score("double", "Double 21.", "41"), Some(0.1));
    assert!(tasks.corpus(90, 0).contains("Twice "));
}

#[test]
fn the_label_breaks_ties_by_closeness_and_keeps_the_judges_order() {
    let tasks = TaskSet::builtin();
    let prompt = "Spell the word: star";
    let label = |answer: &str| tasks.label("spell", prompt, answer, 0.05).unwrap();
    // The judge ties the two wrong answers at 0.1; the label prefers the nearer one.
    assert_eq!(tasks.score("spell", prompt, "s-t-a-e"), Some(0.1));
    assert_eq!(tasks.score("spell", prompt, "c-a-r-d"), Some(0.1));
    // "s-t-a-e" is one edit away from "s-t-a-r", in 7 characters.
    let near = ember_tasks::closeness("s-t-a-e", "s-t-a-r");
    assert!((label("s-t-a-e") - (0.1 + 0.05 * near)).abs() < 1e-12);
    assert!((near - 6.0 / 7.0).abs() < 1e-12);
    assert!(label("s-t-a-e") > label("c-a-r-d"));
    // Never across the judge's levels: the answer beats every wrong answer, a clean wrong
    // answer beats an empty one, whatever their closeness.
    assert!((label("s-t-a-r") - 1.05).abs() < 1e-12);
    assert!(label("s-t-a-r. And then more words") < label("s-t-a-r"));
    assert!(label("s-t-a-r. And then more words") > label("s-t-a-e"));
    assert!(label("") < label("x"));
    // An open-ended family keeps its score.
    let describe = "Describe a cat in one sentence.";
    let answer = "A cat is a small animal.";
    assert_eq!(
        tasks.label("describe", describe, answer, 0.05),
        tasks.score("describe", describe, answer)
    );
    assert_eq!(tasks.label("nope", prompt, "x", 0.05), None);
}

#[test]
fn the_corpus_carries_the_tasks_vocabulary() {
    let corpus = TaskSet::builtin().corpus(2000, 0);
    for needle in [
        " word for ",
        " plus ",
        "backwards",
        " is spelled ",
        " letters.",
        "In order,",
        "larger than",
        "chat",
        "Hund",
        "gato",
    ] {
        assert!(corpus.contains(needle), "{needle}");
    }
    // Small numbers (arithmetic below 20, sorting below 20) repeat some sentences.
    let lines = corpus.lines().collect::<HashSet<_>>();
    assert!(lines.len() > 800, "only {} distinct sentences", lines.len());
}

#[test]
fn the_flawed_share_is_the_configured_one_and_each_flaw_costs_marks() {
    use ember_tasks::{Flaw, Flaws};
    let tasks = TaskSet::builtin();
    let examples = tasks.examples(Split::Train, 50, 4);
    for (share, kinds) in [
        (0.0, vec![Flaw::Ramble]),
        (0.3, vec![Flaw::Ramble]),
        (0.5, vec![Flaw::Ramble, Flaw::Wrong]),
        (1.0, vec![Flaw::Wrong]),
    ] {
        let flaws = Flaws {
            share,
            kinds,
            pleasantries: ember_tasks::PLEASANTRIES
                .iter()
                .map(|p| p.to_string())
                .collect(),
        };
        flaws.validate().unwrap();
        let given = tasks.demonstrations(&examples, &flaws, 4);
        assert_eq!(given.len(), examples.len());
        let flawed = given.iter().filter(|d| d.flaw.is_some()).count();
        // Every built-in answer has a near miss, so the share is exact (to one demonstration).
        assert_eq!(flawed, (share * examples.len() as f64).round() as usize);
        for d in &given {
            assert_eq!(
                d.example,
                examples[given.iter().position(|x| x == d).unwrap()]
            );
            let ideal = tasks
                .score(&d.example.family, &d.example.prompt, &d.example.answer)
                .unwrap();
            let score = tasks
                .score(&d.example.family, &d.example.prompt, &d.given)
                .unwrap();
            match d.flaw {
                None => assert_eq!(d.given, d.example.answer),
                Some(flaw) => {
                    assert!(flaws.kinds.contains(&flaw));
                    assert!(score < ideal, "{d:?} scored {score}");
                    if flaw == Flaw::Ramble {
                        assert!(score >= 0.5, "{d:?} scored {score}");
                    }
                }
            }
        }
        // The same seed, the same demonstrations.
        assert_eq!(given, tasks.demonstrations(&examples, &flaws, 4));
    }
    let flaws = |share, kinds, pleasantries: &[&str]| Flaws {
        share,
        kinds,
        pleasantries: pleasantries.iter().map(|p| p.to_string()).collect(),
    };
    assert!(flaws(1.5, vec![Flaw::Ramble], &["Bye."])
        .validate()
        .is_err());
    assert!(flaws(0.2, vec![], &["Bye."]).validate().is_err());
    assert!(flaws(0.2, vec![Flaw::Ramble], &[" "]).validate().is_err());
    assert!(flaws(0.2, vec![Flaw::Wrong], &[]).validate().is_ok());
}

#[test]
fn the_describe_judge_checks_content_not_only_form() {
    let tasks = TaskSet::builtin();
    let prompt = "Describe a water in one sentence.";
    let right = "A water is called eau in French and Wasser in German.";
    assert_eq!(tasks.score("describe", prompt, right), Some(1.0));
    // Fluent, one sentence, names the subject: wrong content is half marks.
    let gamed = "A water is called voiture in French and Auto in German.";
    assert_eq!(tasks.score("describe", prompt, gamed), Some(0.5));
    // Saying nothing about it is not content either.
    assert_eq!(
        tasks.score("describe", prompt, "A water is a nice thing to have."),
        Some(0.5)
    );
    // A fact from the world's list counts, and so does one translation.
    let cat = "Describe a cat in one sentence.";
    assert_eq!(
        tasks.score(
            "describe",
            cat,
            "A cat is a small animal that likes to sleep in the sun."
        ),
        Some(1.0)
    );
    assert_eq!(
        tasks.score("describe", cat, "A cat is called gato in Spanish."),
        Some(1.0)
    );
    assert_eq!(
        tasks.score("describe", cat, "A cat is called Hund in German."),
        Some(0.5)
    );
}

#[test]
fn every_judge_scores_a_fluent_wrong_answer_below_the_right_one() {
    let tasks = TaskSet::builtin();
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(11);
    for example in tasks.examples(Split::HeldOut, 10, 2) {
        let task = tasks.task(&example.family).unwrap();
        let wrong = task
            .near_miss(&example.prompt, &example.answer, &mut rng)
            .unwrap();
        assert_ne!(wrong, example.answer);
        let right = task.score(&example.prompt, &example.answer).unwrap();
        let score = task.score(&example.prompt, &wrong).unwrap();
        assert!(
            score <= right - 0.5,
            "{example:?}: {wrong:?} scored {score}"
        );
    }
}
