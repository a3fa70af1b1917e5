//! Scoring answers with a reward model and measuring it against rankings: pairwise accuracy
//! and margin (overall, by K, by task family) and the rank correlation with the labeler.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::{EncodedRanking, Padding, Ranking, Result, RewardModel, ScoreBatch};

/// Raw scores of `rows`, `batch_size` rows per forward pass (right-padded with `pad`).
///
/// # Errors
/// An empty row.
pub fn score_rows<B: Backend>(
    model: &RewardModel<B>,
    rows: &[Vec<u32>],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let device = model
        .trunk()
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let heads = model.trunk().config().n_heads;
    let mut scores = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = ScoreBatch::<B>::new(chunk, pad, Padding::Right, heads, &device)?;
        let values = model.score(&batch).into_data();
        scores.extend(values.iter::<f32>().map(f64::from));
    }
    Ok(scores)
}

/// Pairwise accuracy and margin over some rankings.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PairStats {
    /// Rankings counted.
    pub rankings: usize,
    /// Strictly ordered pairs counted.
    pub pairs: usize,
    /// The fraction of pairs in which the better answer scores strictly higher.
    pub accuracy: f64,
    /// The mean of r_better − r_worse over the pairs.
    pub mean_margin: f64,
}

/// A reward model's agreement with held-out rankings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Over every pair.
    pub overall: PairStats,
    /// Per number of answers K.
    pub by_k: BTreeMap<usize, PairStats>,
    /// The mean ranking loss (each prompt weighing the same), without margin.
    pub loss: f64,
    /// Spearman's rank correlation between the model's scores and the labeler's, pooled over
    /// every answer that has a labeler's score; `None` without any. Pooling compares answers
    /// to different prompts, which the ranking loss never does.
    pub spearman: Option<f64>,
    /// The same correlation within each prompt's answers, averaged over the prompts whose
    /// labeler's scores are not all equal; `None` without any.
    pub spearman_within: Option<f64>,
}

impl Evaluation {
    /// Evaluates `scores[i]`, the model's scores of ranking `i`'s answers.
    pub fn new(rankings: &[EncodedRanking], scores: &[Vec<f64>]) -> Self {
        let mut sums: BTreeMap<usize, (usize, usize, usize, f64)> = BTreeMap::new();
        let (mut loss, mut counted) = (0.0, 0usize);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut within = Vec::new();
        for (ranking, scores) in rankings.iter().zip(scores) {
            let entry = sums.entry(ranking.k()).or_default();
            entry.0 += 1;
            let mut group_loss = 0.0;
            for &(better, worse) in &ranking.pairs {
                let margin = scores[better] - scores[worse];
                entry.1 += 1;
                entry.2 += usize::from(margin > 0.0);
                entry.3 += margin;
                group_loss += (1.0 + (-margin).exp()).ln();
            }
            if !ranking.pairs.is_empty() {
                loss += group_loss / ranking.pairs.len() as f64;
                counted += 1;
            }
            if let Some(labels) = &ranking.scores {
                ours.extend_from_slice(scores);
                theirs.extend_from_slice(labels);
                if labels.iter().any(|l| *l != labels[0]) {
                    within.push(spearman(scores, labels));
                }
            }
        }
        let stats = |(rankings, pairs, right, margin): (usize, usize, usize, f64)| PairStats {
            rankings,
            pairs,
            accuracy: right as f64 / pairs.max(1) as f64,
            mean_margin: margin / pairs.max(1) as f64,
        };
        let total = sums.values().fold((0, 0, 0, 0.0), |a, b| {
            (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3)
        });
        Self {
            overall: stats(total),
            by_k: sums.into_iter().map(|(k, s)| (k, stats(s))).collect(),
            loss: loss / counted.max(1) as f64,
            spearman: (ours.len() >= 2).then(|| spearman(&ours, &theirs)),
            spearman_within: (!within.is_empty())
                .then(|| within.iter().sum::<f64>() / within.len() as f64),
        }
    }
}

/// Ranks from 1, ties getting the mean of the ranks they span.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order = (0..values.len()).collect::<Vec<_>>();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let mean = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = mean;
        }
        start = end;
    }
    ranks
}

/// Spearman's rank correlation of `x` and `y` (the Pearson correlation of their ranks, ties
/// at their mean rank); 0 when either is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len().min(ry.len()) as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// The model's raw score of every answer of every ranking, ranking by ranking.
///
/// # Errors
/// An empty row.
pub fn score_rankings<B: Backend>(
    model: &RewardModel<B>,
    rankings: &[EncodedRanking],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<Vec<f64>>> {
    let rows = rankings
        .iter()
        .flat_map(|r| r.rows.iter().cloned())
        .collect::<Vec<_>>();
    let flat = score_rows(model, &rows, pad, batch_size)?;
    let mut scores = Vec::with_capacity(rankings.len());
    let mut at = 0;
    for ranking in rankings {
        scores.push(flat[at..at + ranking.k()].to_vec());
        at += ranking.k();
    }
    Ok(scores)
}

/// Scores every answer of `rankings` and evaluates them.
///
/// # Errors
/// An empty row.
pub fn evaluate<B: Backend>(
    model: &RewardModel<B>,
    rankings: &[EncodedRanking],
    pad: u32,
    batch_size: usize,
) -> Result<Evaluation> {
    let scores = score_rankings(model, rankings, pad, batch_size)?;
    Ok(Evaluation::new(rankings, &scores))
}

/// The evaluation of `scores` (the model's scores of `encoded`, the encodings of
/// `rankings`) per task family, for the rankings that name one.
pub fn by_family(
    rankings: &[Ranking],
    encoded: &[EncodedRanking],
    scores: &[Vec<f64>],
) -> BTreeMap<String, Evaluation> {
    let mut groups: BTreeMap<&str, (Vec<EncodedRanking>, Vec<Vec<f64>>)> = BTreeMap::new();
    for ((ranking, encoded), scores) in rankings.iter().zip(encoded).zip(scores) {
        if let Some(family) = &ranking.family {
            let entry = groups.entry(family).or_default();
            entry.0.push(encoded.clone());
            entry.1.push(scores.clone());
        }
    }
    groups
        .into_iter()
        .map(|(family, (encoded, scores))| (family.to_string(), Evaluation::new(&encoded, &scores)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_by_hand() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // With a tie: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]; Pearson of those is
        // 4.5 / sqrt(4.5 * 5) = 0.948683.
        let r = spearman(&[0.0, 1.0, 1.0, 2.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((r - 0.948_683_298).abs() < 1e-8, "{r}");
        assert_eq!(spearman(&[1.0, 1.0], &[0.0, 1.0]), 0.0);
    }

    #[test]
    fn evaluation_counts_pairs_by_k() {
        let ranking = |k: usize, pairs: Vec<(usize, usize)>| EncodedRanking {
            rows: vec![vec![1]; k],
            pairs,
            scores: None,
        };
        let rankings = [
            ranking(3, vec![(0, 1), (0, 2), (1, 2)]),
            ranking(2, vec![(1, 0)]),
        ];
        let eval = Evaluation::new(&rankings, &[vec![2.0, 0.0, 1.0], vec![0.5, 0.0]]);
        assert_eq!(eval.overall.pairs, 4);
        // Right: (0,1) and (0,2); wrong: (1,2) and (1,0).
        assert!((eval.overall.accuracy - 0.5).abs() < 1e-12);
        assert!((eval.by_k[&3].accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(eval.by_k[&2].accuracy, 0.0);
        assert!((eval.by_k[&3].mean_margin - (2.0 + 1.0 - 1.0) / 3.0).abs() < 1e-12);
        assert!((eval.overall.mean_margin - (2.0 + 1.0 - 1.0 - 0.5) / 4.0).abs() < 1e-12);
    }
}
