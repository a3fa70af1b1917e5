//! One model against another on the same held-out prompts: the mean gain of the judge's
//! score with its paired bootstrap interval, wins, ties and losses, per family — for one run
//! or pooled over several (seeds) — and the share of a gap one model closes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::{bootstrap, mean, Interval, RESAMPLES};
use crate::{Error, Result, WinTieLoss};

/// One prompt's scores for one model, as `eval/{model}.jsonl` holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptScore {
    /// The task family.
    pub family: String,
    /// The prompt.
    pub prompt: String,
    /// The judge's score of the greedy answer.
    #[serde(rename = "score")]
    pub greedy: f64,
    /// The mean judge score of the sampled answers, when there were any.
    #[serde(default)]
    pub sampled: Option<f64>,
}

/// A gain: the mean per-prompt difference with its interval, and the prompt-by-prompt count.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Gain {
    /// Mean of (first − second) over prompts, with its paired bootstrap 95 % interval.
    pub interval: Interval,
    /// Prompts where the first model scored higher, the same, lower.
    pub count: WinTieLoss,
}

/// A gain on greedy and on sampled answers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Gains {
    /// On the greedy answers.
    pub greedy: Gain,
    /// On the mean of the sampled answers, when both models have them.
    pub sampled: Option<Gain>,
}

/// One model against another.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Comparison {
    /// Over every prompt.
    pub all: Gains,
    /// Per task family.
    pub families: BTreeMap<String, Gains>,
}

/// The first model's scores against the second's on the same prompts, in one run.
pub type Paired<'a> = (&'a [PromptScore], &'a [PromptScore]);

fn check_paired(runs: &[Paired<'_>]) -> Result<()> {
    for (first, second) in runs {
        let same = first.len() == second.len()
            && first
                .iter()
                .zip(*second)
                .all(|(a, b)| a.prompt == b.prompt && a.family == b.family);
        if !same {
            return Err(Error::Config(
                "a comparison needs the same prompts, in the same order, on both sides".into(),
            ));
        }
    }
    Ok(())
}

fn gain(runs: &[Vec<(f64, f64)>], seed: u64) -> Gain {
    let differences = runs
        .iter()
        .map(|rows| rows.iter().map(|(a, b)| a - b).collect::<Vec<_>>())
        .collect::<Vec<_>>();
    let groups = differences.iter().map(Vec::as_slice).collect::<Vec<_>>();
    Gain {
        interval: bootstrap(&groups, mean, RESAMPLES, seed),
        count: WinTieLoss::tally(runs.iter().flatten().copied()),
    }
}

fn gains(runs: &[Paired<'_>], keep: impl Fn(&PromptScore) -> bool, seed: u64) -> Gains {
    let rows = |pick: &dyn Fn(&PromptScore) -> Option<f64>| {
        runs.iter()
            .map(|(first, second)| {
                first
                    .iter()
                    .zip(*second)
                    .filter(|(a, _)| keep(a))
                    .filter_map(|(a, b)| Some((pick(a)?, pick(b)?)))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let greedy = rows(&|p| Some(p.greedy));
    let sampled = rows(&|p| p.sampled);
    Gains {
        greedy: gain(&greedy, seed),
        sampled: sampled
            .iter()
            .any(|r| !r.is_empty())
            .then(|| gain(&sampled, seed.wrapping_add(1))),
    }
}

/// The first model against the second, prompt by prompt, pooled over `runs` (one pair of
/// score lists per run; the bootstrap resamples each run's prompts within it).
///
/// # Errors
/// A run whose two lists are not the same prompts in the same order.
pub fn compare(runs: &[Paired<'_>], seed: u64) -> Result<Comparison> {
    check_paired(runs)?;
    let families = runs
        .iter()
        .flat_map(|(first, _)| first.iter().map(|p| p.family.clone()))
        .collect::<std::collections::BTreeSet<_>>();
    Ok(Comparison {
        all: gains(runs, |_| true, seed),
        families: families
            .into_iter()
            .map(|family| {
                let g = gains(runs, |p| p.family == family, seed);
                (family, g)
            })
            .collect(),
    })
}

/// The share of the gap between a `low` model and a `high` one that a `tuned` model (which
/// started from `low`) closes: mean(tuned − low) / mean(high − low), on the sampled answers
/// (the greedy ones without them), with its paired bootstrap interval over prompts. One
/// triple of score lists per run; `None` without prompts.
///
/// # Errors
/// Lists that are not the same prompts in the same order.
pub fn gap_closed(
    runs: &[(&[PromptScore], &[PromptScore], &[PromptScore])],
    sampled: bool,
    seed: u64,
) -> Result<Option<Interval>> {
    let mut groups = Vec::new();
    for (low, high, tuned) in runs {
        check_paired(&[(low, high), (low, tuned)])?;
        let pick = |p: &PromptScore| if sampled { p.sampled } else { Some(p.greedy) };
        groups.push(
            low.iter()
                .zip(high.iter().zip(tuned.iter()))
                .filter_map(|(l, (h, t))| Some((pick(t)? - pick(l)?, pick(h)? - pick(l)?)))
                .collect::<Vec<_>>(),
        );
    }
    if groups.iter().all(Vec::is_empty) {
        return Ok(None);
    }
    let slices = groups.iter().map(Vec::as_slice).collect::<Vec<_>>();
    let ratio = |rows: &[(f64, f64)]| {
        rows.iter().map(|r| r.0).sum::<f64>() / rows.iter().map(|r| r.1).sum::<f64>()
    };
    Ok(Some(bootstrap(&slices, ratio, RESAMPLES, seed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(family: &str, values: &[(f64, f64)]) -> Vec<PromptScore> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(greedy, sampled))| PromptScore {
                family: family.into(),
                prompt: format!("{family} {i}"),
                greedy,
                sampled: Some(sampled),
            })
            .collect()
    }

    #[test]
    fn gains_are_paired_per_prompt_and_per_family() {
        let mut sft = scores("a", &[(0.1, 0.2), (1.0, 0.5), (0.6, 0.4)]);
        sft.extend(scores("b", &[(0.1, 0.1), (0.1, 0.3)]));
        let mut ppo = scores("a", &[(1.0, 0.6), (1.0, 0.9), (0.1, 0.4)]);
        ppo.extend(scores("b", &[(0.1, 0.2), (1.0, 0.5)]));
        let comparison = compare(&[(&ppo, &sft)], 0).unwrap();
        let all = comparison.all;
        // Greedy differences 0.9, 0, −0.5, 0, 0.9.
        assert!((all.greedy.interval.mean - 1.3 / 5.0).abs() < 1e-12);
        assert_eq!(
            all.greedy.count,
            WinTieLoss {
                wins: 2,
                ties: 2,
                losses: 1
            }
        );
        // Sampled differences 0.4, 0.4, 0, 0.1, 0.2.
        let sampled = all.sampled.unwrap();
        assert!((sampled.interval.mean - 1.1 / 5.0).abs() < 1e-12);
        assert!(sampled.interval.low >= 0.0 && sampled.interval.high <= 0.4 + 1e-12);
        let b = comparison.families["b"];
        assert!((b.greedy.interval.mean - 0.45).abs() < 1e-12);
        assert_eq!(b.greedy.count.total(), 2);
        // Other prompts on one side: refused.
        assert!(compare(&[(&ppo[..4], &sft[..3])], 0).is_err());
        assert!(compare(&[(&ppo[1..], &sft[..4])], 0).is_err());
    }

    #[test]
    fn the_share_of_the_gap_closed_is_the_ratio_of_the_mean_gains() {
        let low = scores("a", &[(0.0, 0.2), (0.0, 0.4), (0.0, 0.3), (0.0, 0.1)]);
        let high = scores("a", &[(0.0, 0.6), (0.0, 0.8), (0.0, 0.5), (0.0, 0.5)]);
        let tuned = scores("a", &[(0.0, 0.5), (0.0, 0.7), (0.0, 0.3), (0.0, 0.4)]);
        let closed = gap_closed(&[(&low, &high, &tuned)], true, 0)
            .unwrap()
            .unwrap();
        // Gains 0.3, 0.3, 0, 0.3 over gaps 0.4, 0.4, 0.2, 0.4.
        assert!((closed.mean - 0.9 / 1.4).abs() < 1e-12);
        assert!(closed.low <= closed.mean && closed.mean <= closed.high);
        assert!(
            closed.low >= 0.0 && closed.high <= 0.75 + 1e-12,
            "{closed:?}"
        );
    }
}
