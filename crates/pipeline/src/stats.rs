//! Statistics a reader can trust: paired bootstrap confidence intervals over prompts.
//!
//! A gain of one model over another is measured prompt by prompt (the same held-out prompts
//! on both sides); the interval resamples prompts with replacement, so it says how much the
//! mean gain could move with another draw of prompts of the same kind. Several runs (seeds)
//! pool by resampling each run's prompts within that run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Resamples per interval.
pub const RESAMPLES: usize = 10_000;

/// A mean with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Interval {
    /// The estimate on the data itself.
    pub mean: f64,
    /// The 2.5th percentile of the bootstrap distribution.
    pub low: f64,
    /// The 97.5th percentile.
    pub high: f64,
}

impl Interval {
    /// Whether the whole interval lies above 0: a gain outside the noise.
    pub fn above_zero(&self) -> bool {
        self.low > 0.0
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:+.3} [{:+.3}, {:+.3}]", self.mean, self.low, self.high)
    }
}

/// The `q`-quantile of sorted values, interpolating linearly between neighbours (numpy's
/// default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (below, above) = (position.floor() as usize, position.ceil() as usize);
    let weight = position - below as f64;
    sorted[below] + weight * (sorted[above] - sorted[below])
}

/// The percentile bootstrap of a statistic of groups of paired rows: each resample draws, in
/// every group, as many rows as it has with replacement, and computes `statistic` of the
/// drawn rows; the interval is the 2.5th and 97.5th percentile of `resamples` of them.
/// `statistic` sees the rows of every group (resampled) in one slice.
pub fn bootstrap<T: Copy>(
    groups: &[&[T]],
    statistic: impl Fn(&[T]) -> f64,
    resamples: usize,
    seed: u64,
) -> Interval {
    let all = groups
        .iter()
        .flat_map(|g| g.iter().copied())
        .collect::<Vec<_>>();
    let mean = statistic(&all);
    if all.is_empty() || resamples == 0 {
        return Interval {
            mean,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut drawn = Vec::with_capacity(all.len());
    let mut values = (0..resamples)
        .map(|_| {
            drawn.clear();
            for group in groups.iter().filter(|g| !g.is_empty()) {
                drawn.extend((0..group.len()).map(|_| group[rng.random_range(0..group.len())]));
            }
            statistic(&drawn)
        })
        .collect::<Vec<_>>();
    values.sort_by(f64::total_cmp);
    Interval {
        mean,
        low: quantile(&values, 0.025),
        high: quantile(&values, 0.975),
    }
}

/// The mean of per-prompt differences with its paired bootstrap interval: `groups` holds one
/// slice of differences per run, resampled within the run.
pub fn mean_difference(groups: &[&[f64]], seed: u64) -> Interval {
    bootstrap(groups, mean, RESAMPLES, seed)
}

/// The arithmetic mean (0 for nothing).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `src/fixtures/bootstrap.py` enumerates all 6^6 equally likely resamples of these six
    /// differences and prints the exact percentiles of their mean (numpy's linear
    /// quantiles over the 46 656 resample means).
    const DIFFERENCES: [f64; 6] = [0.9, -0.1, 0.0, 0.4, 0.25, -0.3];
    const EXACT_LOW: f64 = -0.1;
    const EXACT_HIGH: f64 = 0.516_666_666_666_666_7;
    const EXACT_RATIO_LOW: f64 = -0.136_363_636_363_636_38;
    const EXACT_RATIO_HIGH: f64 = 0.496_503_496_503_496_6;

    #[test]
    fn the_bootstrap_matches_the_exact_enumeration() {
        let interval = bootstrap(&[&DIFFERENCES], mean, 200_000, 3);
        assert!((interval.mean - 0.191_666_666_666_666_66).abs() < 1e-12);
        // Monte Carlo over 200 000 resamples against the exact distribution: the atoms
        // near the tails are about 0.017 apart.
        assert!((interval.low - EXACT_LOW).abs() < 0.02, "{interval:?}");
        assert!((interval.high - EXACT_HIGH).abs() < 0.02, "{interval:?}");
        assert!(!interval.above_zero());
    }

    #[test]
    fn a_ratio_of_paired_means_is_bootstrapped_over_the_same_rows() {
        // Pairs (gain, gap): the share of the gap closed is mean(gain) / mean(gap).
        let pairs = DIFFERENCES.map(|d| (d, 0.5 + d.abs()));
        let ratio = |rows: &[(f64, f64)]| {
            rows.iter().map(|r| r.0).sum::<f64>() / rows.iter().map(|r| r.1).sum::<f64>()
        };
        let interval = bootstrap(&[&pairs], ratio, 200_000, 5);
        assert!(
            (interval.low - EXACT_RATIO_LOW).abs() < 0.03,
            "{interval:?}"
        );
        assert!(
            (interval.high - EXACT_RATIO_HIGH).abs() < 0.03,
            "{interval:?}"
        );
    }

    #[test]
    fn groups_resample_within_themselves_and_a_clear_gain_is_above_zero() {
        // Two runs whose differences are all positive: every resample is positive.
        let a = [0.2, 0.3, 0.1, 0.4];
        let b = [0.5, 0.6];
        let interval = mean_difference(&[&a, &b], 1);
        assert!((interval.mean - 2.1 / 6.0).abs() < 1e-12);
        assert!(interval.above_zero());
        // Resampling within groups keeps each run's share of the rows: the smallest
        // possible pooled mean is (4 × 0.1 + 2 × 0.5) / 6.
        assert!(interval.low >= (0.4 + 1.0) / 6.0 - 1e-12, "{interval:?}");
        // The same seed, the same interval.
        assert_eq!(interval, mean_difference(&[&a, &b], 1));
        // Constant differences: a point.
        let flat = mean_difference(&[&[0.25; 5]], 0);
        assert_eq!((flat.low, flat.high), (0.25, 0.25));
        assert!(mean_difference(&[&[]], 0).low.is_nan());
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let sorted = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile(&sorted, 0.0), 1.0);
        assert_eq!(quantile(&sorted, 1.0), 8.0);
        // Position 0.5 × 3 = 1.5: halfway between 2 and 4.
        assert_eq!(quantile(&sorted, 0.5), 3.0);
        assert!((quantile(&sorted, 0.025) - 1.075).abs() < 1e-12);
    }
}
