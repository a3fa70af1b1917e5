//! Evaluation on the built-in tasks: a model answers held-out prompts (greedily, or several
//! sampled answers each) through the chat template, each family's judge scores the answers,
//! and the scores are summed up per family and compared prompt by prompt.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use ember_instruct::{ChatTemplate, Conversation, Message};
use ember_tasks::{Example, TaskSet};
use ember_transformer::{generate, Decoder, GenerateConfig, Sampling};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One scored answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The example.
    #[serde(flatten)]
    pub example: Example,
    /// What the model answered.
    pub output: String,
    /// The judge's score.
    pub score: f64,
}

/// How [`score_answers`] answers: greedily, or `samples` answers per prompt at `temperature`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answering {
    /// 0 for greedy answers, else the sampling temperature.
    pub temperature: f32,
    /// Answers per prompt (1 when greedy).
    pub samples: usize,
    /// Seed of the sampling.
    pub seed: u64,
    /// New tokens per answer, at most.
    pub max_new_tokens: usize,
    /// Rows per generation batch.
    pub batch_size: usize,
}

impl Answering {
    /// One greedy answer per prompt, of at most `max_new_tokens`, 32 prompts per batch.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            samples: 1,
            seed: 0,
            max_new_tokens,
            batch_size: 32,
        }
    }

    /// Checks the settings: a temperature ≥ 0, at least one answer, one answer when greedy.
    ///
    /// # Errors
    /// [`Error::Config`] saying which.
    pub fn validate(&self) -> Result<()> {
        let problem = if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            Some(format!(
                "the temperature must be 0 (greedy) or above, got {}",
                self.temperature
            ))
        } else if self.samples == 0 {
            Some("at least one sample per prompt is needed".into())
        } else if self.temperature == 0.0 && self.samples > 1 {
            Some(format!(
                "greedy answers are all the same: {} samples need a temperature above 0",
                self.samples
            ))
        } else if self.batch_size == 0 {
            Some("the batch size must be at least 1".into())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::Config(p)))
    }

    fn sampling(&self) -> Sampling {
        if self.temperature > 0.0 {
            Sampling::Temperature {
                temperature: self.temperature,
            }
        } else {
            Sampling::Greedy
        }
    }
}

/// Answers `examples` through the chat template as `answering` says and scores each answer
/// with its judge: `answering.samples` rows per example, in the examples' order.
///
/// # Errors
/// Invalid `answering`, or a generation error.
pub fn score_answers<B: Backend>(
    model: &Decoder<B>,
    template: &ChatTemplate,
    tasks: &TaskSet,
    examples: &[Example],
    answering: &Answering,
) -> Result<Vec<Scored>> {
    answering.validate()?;
    let tokenizer = template.tokenizer();
    let mut config = GenerateConfig {
        max_new_tokens: answering.max_new_tokens,
        sampling: answering.sampling(),
        stop_tokens: vec![template.stop_token(), template.eos_token()],
        pad_token: template.pad_token(),
        seed: answering.seed,
    };
    let repeated = examples
        .iter()
        .flat_map(|e| std::iter::repeat_n(e, answering.samples))
        .collect::<Vec<_>>();
    let mut scored = Vec::with_capacity(repeated.len());
    for (batch, chunk) in repeated.chunks(answering.batch_size).enumerate() {
        config.seed = answering.seed.wrapping_add(batch as u64);
        let prompts = chunk
            .iter()
            .map(|e| template.render_prompt(&Conversation::new(vec![Message::user(&e.prompt)])))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for (example, output) in chunk.iter().zip(generate(model, &prompts, &config)?) {
            let output = tokenizer.decode_skip_special(output.content())?;
            let score = tasks
                .score(&example.family, &example.prompt, &output)
                .unwrap_or(0.0);
            scored.push(Scored {
                example: (*example).clone(),
                output,
                score,
            });
        }
    }
    Ok(scored)
}

/// The judge's scores of one task family's answers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FamilyScore {
    /// The mean score.
    pub mean: f64,
    /// The share of answers scored 1 (right).
    pub accuracy: f64,
    /// Answers scored.
    pub n: usize,
}

/// The judge's scores of a set of answers, per family and over all of them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JudgeScores {
    /// Per task family.
    pub families: BTreeMap<String, FamilyScore>,
    /// The mean score over every answer.
    pub mean: f64,
    /// Answers scored.
    pub n: usize,
}

impl JudgeScores {
    /// Sums up `scored` per family.
    pub fn of(scored: &[Scored]) -> Self {
        let mut families: BTreeMap<String, FamilyScore> = BTreeMap::new();
        for s in scored {
            let entry = families.entry(s.example.family.clone()).or_default();
            entry.mean += s.score;
            entry.accuracy += f64::from(u8::from(s.score >= 1.0));
            entry.n += 1;
        }
        for entry in families.values_mut() {
            entry.mean /= entry.n as f64;
            entry.accuracy /= entry.n as f64;
        }
        let mean = scored.iter().map(|s| s.score).sum::<f64>() / scored.len().max(1) as f64;
        Self {
            families,
            mean,
            n: scored.len(),
        }
    }
}

/// One policy against another, prompt by prompt on the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WinTieLoss {
    /// Prompts where the first scored higher.
    pub wins: usize,
    /// Prompts where both scored the same.
    pub ties: usize,
    /// Prompts where the first scored lower.
    pub losses: usize,
}

impl WinTieLoss {
    /// Compares `first` with `second`, answer by answer (the same prompts in the same order).
    ///
    /// # Panics
    /// If the two answer different prompts.
    pub fn compare(first: &[Scored], second: &[Scored]) -> Self {
        assert_eq!(first.len(), second.len(), "the same prompts on both sides");
        Self::tally(first.iter().zip(second).map(|(a, b)| {
            assert_eq!(a.example, b.example, "the same prompts on both sides");
            (a.score, b.score)
        }))
    }

    /// Counts pairs of (first's score, second's score): a win when the first is higher, a
    /// loss when it is lower, a tie otherwise.
    pub fn tally(pairs: impl IntoIterator<Item = (f64, f64)>) -> Self {
        let mut count = Self::default();
        for (a, b) in pairs {
            match a.partial_cmp(&b) {
                Some(std::cmp::Ordering::Greater) => count.wins += 1,
                Some(std::cmp::Ordering::Less) => count.losses += 1,
                _ => count.ties += 1,
            }
        }
        count
    }

    /// Prompts compared.
    pub fn total(&self) -> usize {
        self.wins + self.ties + self.losses
    }

    /// The win rate, ties counted as half.
    pub fn win_rate(&self) -> f64 {
        (self.wins as f64 + 0.5 * self.ties as f64) / self.total().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(family: &str, prompt: &str, score: f64) -> Scored {
        Scored {
            example: Example {
                family: family.into(),
                prompt: prompt.into(),
                answer: "x".into(),
            },
            output: String::new(),
            score,
        }
    }

    #[test]
    fn scores_sum_up_per_family() {
        let answers = [
            scored("sort", "a", 1.0),
            scored("sort", "b", 0.1),
            scored("count", "c", 0.0),
            scored("sort", "d", 1.0),
        ];
        let scores = JudgeScores::of(&answers);
        assert_eq!(scores.n, 4);
        assert!((scores.mean - 2.1 / 4.0).abs() < 1e-12);
        let sort = scores.families["sort"];
        assert_eq!(sort.n, 3);
        assert!((sort.mean - 0.7).abs() < 1e-12);
        assert!((sort.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            scores.families["count"],
            FamilyScore {
                mean: 0.0,
                accuracy: 0.0,
                n: 1
            }
        );
        assert_eq!(JudgeScores::of(&[]).mean, 0.0);
    }

    #[test]
    fn wins_ties_and_losses_are_counted_prompt_by_prompt() {
        let first = [
            scored("f", "a", 1.0),
            scored("f", "b", 0.1),
            scored("f", "c", 0.1),
            scored("f", "d", 0.0),
        ];
        let second = [
            scored("f", "a", 0.1),
            scored("f", "b", 0.1),
            scored("f", "c", 1.0),
            scored("f", "d", 0.0),
        ];
        let count = WinTieLoss::compare(&first, &second);
        assert_eq!(
            count,
            WinTieLoss {
                wins: 1,
                ties: 2,
                losses: 1
            }
        );
        assert_eq!(count.win_rate(), 0.5);
        assert_eq!(WinTieLoss::compare(&second, &first).wins, 1);
    }

    #[test]
    fn answering_settings_are_checked() {
        assert!(Answering::greedy(8).validate().is_ok());
        let sampled = Answering {
            temperature: 1.0,
            samples: 4,
            ..Answering::greedy(8)
        };
        assert!(sampled.validate().is_ok());
        for bad in [
            Answering {
                samples: 2,
                ..Answering::greedy(8)
            },
            Answering {
                temperature: f32::NAN,
                ..sampled
            },
            Answering {
                samples: 0,
                ..sampled
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
