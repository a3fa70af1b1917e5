//! Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the next token is drawn. An enum, so that no invalid combination can be written (and a
/// settings table with a key its kind does not have is refused, not ignored — `greedy`
/// included, which serde's internally tagged enums would let take any key).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "SamplingTable")]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sample from softmax(logits / temperature).
    Temperature {
        /// Above 0; 1 is the model's own distribution.
        temperature: f32,
    },
    /// Sample among the `k` most likely tokens.
    TopK {
        /// At least 1.
        k: usize,
        /// Above 0.
        temperature: f32,
    },
    /// Sample among the fewest most likely tokens whose probabilities add up to `p`
    /// (nucleus sampling).
    TopP {
        /// In (0, 1].
        p: f32,
        /// Above 0.
        temperature: f32,
    },
}

/// A `[sampling]` table as written: every key any kind has, each checked against the kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplingTable {
    kind: SamplingKind,
    temperature: Option<f32>,
    k: Option<usize>,
    p: Option<f32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SamplingKind {
    Greedy,
    Temperature,
    TopK,
    TopP,
}

impl std::fmt::Display for SamplingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Greedy => "greedy",
            Self::Temperature => "temperature",
            Self::TopK => "top_k",
            Self::TopP => "top_p",
        })
    }
}

impl TryFrom<SamplingTable> for Sampling {
    type Error = String;

    fn try_from(table: SamplingTable) -> std::result::Result<Self, String> {
        let SamplingTable {
            kind,
            temperature,
            k,
            p,
        } = table;
        let extra = |name: &str, present: bool| {
            if present {
                Err(format!("sampling kind `{kind}` has no `{name}`"))
            } else {
                Ok(())
            }
        };
        let need = |name: &str| format!("sampling kind `{kind}` needs `{name}`");
        Ok(match kind {
            SamplingKind::Greedy => {
                extra("temperature", temperature.is_some())?;
                extra("k", k.is_some())?;
                extra("p", p.is_some())?;
                Sampling::Greedy
            }
            SamplingKind::Temperature => {
                extra("k", k.is_some())?;
                extra("p", p.is_some())?;
                Sampling::Temperature {
                    temperature: temperature.ok_or_else(|| need("temperature"))?,
                }
            }
            SamplingKind::TopK => {
                extra("p", p.is_some())?;
                Sampling::TopK {
                    k: k.ok_or_else(|| need("k"))?,
                    temperature: temperature.ok_or_else(|| need("temperature"))?,
                }
            }
            SamplingKind::TopP => {
                extra("k", k.is_some())?;
                Sampling::TopP {
                    p: p.ok_or_else(|| need("p"))?,
                    temperature: temperature.ok_or_else(|| need("temperature"))?,
                }
            }
        })
    }
}

impl Sampling {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`Error::Config`] for a temperature ≤ 0, k = 0 or p outside (0, 1].
    pub fn validate(&self) -> Result<()> {
        let temperature = match *self {
            Sampling::Greedy => return Ok(()),
            Sampling::Temperature { temperature } => temperature,
            Sampling::TopK { k, temperature } => {
                if k == 0 {
                    return Err(Error::Config("top-k needs k >= 1".into()));
                }
                temperature
            }
            Sampling::TopP { p, temperature } => {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(Error::Config(format!("top-p needs p in (0, 1], got {p}")));
                }
                temperature
            }
        };
        if temperature.is_nan() || temperature <= 0.0 {
            return Err(Error::Config(format!(
                "temperature must be above 0, got {temperature}"
            )));
        }
        Ok(())
    }

    /// The temperature that divides the logits (1 for greedy).
    pub fn temperature(&self) -> f32 {
        match *self {
            Sampling::Greedy => 1.0,
            Sampling::Temperature { temperature }
            | Sampling::TopK { temperature, .. }
            | Sampling::TopP { temperature, .. } => temperature,
        }
    }
}

/// A [`Sampling`] rule with its own seeded random number generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose draws depend only on `seed` and the logits it is given.
    ///
    /// # Errors
    /// Invalid sampling parameters.
    pub fn new(sampling: Sampling, seed: u64) -> Result<Self> {
        sampling.validate()?;
        Ok(Self {
            sampling,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next token given one row of logits.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "no logits to sample from");
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .expect("non-empty")
        };
        let (k, p) = match self.sampling {
            Sampling::Greedy => return argmax(),
            Sampling::Temperature { .. } => (logits.len(), 1.0),
            Sampling::TopK { k, .. } => (k.min(logits.len()), 1.0),
            Sampling::TopP { p, .. } => (logits.len(), p),
        };
        let temperature = self.sampling.temperature();
        let mut order = (0..logits.len()).collect::<Vec<_>>();
        if k < logits.len() {
            order.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
            order.truncate(k);
        }
        sort_by_logit(&mut order, logits);
        let max = logits[order[0]];
        let mut weights = order
            .iter()
            .map(|&i| ((logits[i] - max) / temperature).exp())
            .collect::<Vec<_>>();
        let total: f32 = weights.iter().sum();
        if p < 1.0 {
            // Keep the smallest prefix whose mass reaches p (at least one token).
            let mut mass = 0.0;
            let mut keep = 0;
            while keep < weights.len() {
                mass += weights[keep] / total;
                keep += 1;
                if mass >= p {
                    break;
                }
            }
            weights.truncate(keep);
            order.truncate(keep);
        }
        let total: f32 = weights.iter().sum();
        let mut draw = self.rng.random::<f32>() * total;
        for (&token, &weight) in order.iter().zip(&weights) {
            if draw < weight {
                return token as u32;
            }
            draw -= weight;
        }
        order[order.len() - 1] as u32
    }
}

/// Sorts token ids by logit, highest first, ties by id: the order of
/// `logits[b].total_cmp(&logits[a]).then(a.cmp(&b))`, a total order, so any correct sort gives
/// the same permutation. Sorted as one integer key per token (the logit's bits mapped to
/// `total_cmp`'s order, then the id), which is several times faster than comparing through
/// the logits (a 49k-token vocabulary per drawn token). A whole vocabulary in id order (every
/// draw without top-k) goes through a radix sort of the logits' keys instead, which being
/// stable keeps ties in id order: a few passes over the keys, not a comparison sort's
/// `log n` (SmolLM2's 49k tokens: about 7× faster).
fn sort_by_logit(order: &mut [usize], logits: &[f32]) {
    // `f32::total_cmp`'s key: flip the magnitude bits of negatives, then the sign; inverted,
    // so that ascending keys are descending logits.
    let key = |i: usize| {
        let bits = logits[i].to_bits();
        !(bits ^ ((((bits as i32) >> 31) as u32) >> 1) ^ 0x8000_0000)
    };
    if order.len() >= RADIX_MIN && order.windows(2).all(|w| w[0] < w[1]) {
        return radix_sort(order, key);
    }
    let mut keys = order
        .iter()
        .map(|&i| (u64::from(key(i)) << 32) | i as u64)
        .collect::<Vec<_>>();
    keys.sort_unstable();
    for (slot, key) in order.iter_mut().zip(keys) {
        *slot = (key & 0xffff_ffff) as usize;
    }
}

/// Ids from which [`sort_by_logit`] takes the radix sort.
const RADIX_MIN: usize = 1024;

/// Sorts `order` by `key`, stably: least significant byte first, one counting pass per byte
/// (skipped when every key has the same byte there).
fn radix_sort(order: &mut [usize], key: impl Fn(usize) -> u32) {
    let mut items = order
        .iter()
        .map(|&i| (key(i), i as u32))
        .collect::<Vec<_>>();
    let mut spare = vec![(0, 0); items.len()];
    for shift in [0, 8, 16, 24] {
        let mut counts = [0usize; 256];
        for &(k, _) in &items {
            counts[(k >> shift) as usize & 255] += 1;
        }
        if counts.contains(&items.len()) {
            continue;
        }
        let mut next = 0;
        for count in counts.iter_mut() {
            let start = next;
            next += *count;
            *count = start;
        }
        for &item in &items {
            let bucket = (item.0 >> shift) as usize & 255;
            spare[counts[bucket]] = item;
            counts[bucket] += 1;
        }
        std::mem::swap(&mut items, &mut spare);
    }
    for (slot, (_, i)) in order.iter_mut().zip(items) {
        *slot = i as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integer_sort_is_the_comparison_sort() {
        let mut state = 9u64;
        let mut logits = (0..5000)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((state >> 40) as f32 / 1e5 - 50.0).round() / 4.0 // many ties
            })
            .collect::<Vec<_>>();
        logits.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN,
            f32::MAX,
            1e-42,
        ]);
        let mut expected = (0..logits.len()).collect::<Vec<_>>();
        expected.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        // Out of id order (the comparison sort) and in id order (the radix sort).
        let mut got = (0..logits.len()).collect::<Vec<_>>();
        got.reverse();
        sort_by_logit(&mut got, &logits);
        assert_eq!(got, expected);
        let mut got = (0..logits.len()).collect::<Vec<_>>();
        sort_by_logit(&mut got, &logits);
        assert_eq!(got, expected);
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut sampler = Sampler::new(Sampling::Greedy, 0).unwrap();
        assert_eq!(sampler.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let mut sampler = Sampler::new(
            Sampling::TopK {
                k: 2,
                temperature: 5.0,
            },
            7,
        )
        .unwrap();
        let logits = [1.0, 0.9, 0.8, 0.7, 5.0];
        for _ in 0..500 {
            let token = sampler.sample(&logits);
            assert!(token == 4 || token == 0, "{token}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ∝ [8, 4, 2, 1, 1]/16: p = 0.7 keeps the first two (0.5 + 0.25).
        let logits = [8f32.ln(), 4f32.ln(), 2f32.ln(), 0.0, 0.0];
        let mut sampler = Sampler::new(
            Sampling::TopP {
                p: 0.7,
                temperature: 1.0,
            },
            1,
        )
        .unwrap();
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[sampler.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3] + seen[4], 0, "{seen:?}");
        // Renormalised: 2/3 and 1/3.
        let share = seen[0] as f64 / 2000.0;
        assert!((share - 2.0 / 3.0).abs() < 0.05, "{share}");
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        let logits = [0.0, 2f32.ln()]; // 1/3, 2/3
        let mut sampler = Sampler::new(Sampling::Temperature { temperature: 1.0 }, 3).unwrap();
        let ones = (0..3000).filter(|_| sampler.sample(&logits) == 1).count();
        assert!((ones as f64 / 3000.0 - 2.0 / 3.0).abs() < 0.04, "{ones}");
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = [0.3, 0.1, 0.5, 0.2];
        let draw = |seed| {
            let mut s = Sampler::new(Sampling::Temperature { temperature: 1.0 }, seed).unwrap();
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(11), draw(11));
        assert_ne!(draw(11), draw(12));
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(Sampler::new(
            Sampling::TopK {
                k: 0,
                temperature: 1.0
            },
            0
        )
        .is_err());
        assert!(Sampler::new(
            Sampling::TopP {
                p: 1.5,
                temperature: 1.0
            },
            0
        )
        .is_err());
        assert!(Sampler::new(Sampling::Temperature { temperature: 0.0 }, 0).is_err());
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Table {
        sampling: Sampling,
    }

    #[test]
    fn tables_round_trip_and_a_key_the_kind_lacks_is_refused() {
        for sampling in [
            Sampling::Greedy,
            Sampling::Temperature { temperature: 0.5 },
            Sampling::TopK {
                k: 5,
                temperature: 1.0,
            },
            Sampling::TopP {
                p: 0.9,
                temperature: 0.7,
            },
        ] {
            let text = toml::to_string(&Table { sampling }).unwrap();
            let back: Table = toml::from_str(&text).unwrap();
            assert_eq!(back.sampling, sampling, "{text}");
        }
        for (text, complaint) in [
            (
                "kind = \"greedy\"\ntemperature = 0.5",
                "has no `temperature`",
            ),
            ("kind = \"greedy\"\nk = 3", "has no `k`"),
            (
                "kind = \"top_k\"\nk = 3\ntemperature = 1.0\np = 0.5",
                "has no `p`",
            ),
            ("kind = \"temperature\"\ntemperatur = 0.5", "unknown field"),
            ("kind = \"top_p\"\np = 0.5", "needs `temperature`"),
            ("kind = \"beam\"", "unknown variant"),
        ] {
            let error = toml::from_str::<Table>(&format!("[sampling]\n{text}")).unwrap_err();
            assert!(error.to_string().contains(complaint), "{text}: {error}");
        }
    }
}
