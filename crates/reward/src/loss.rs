//! InstructGPT's ranking loss: every strictly ordered pair of one prompt's K answers is a
//! Bradley–Terry comparison, −log σ(r_better − r_worse − margin), averaged over that prompt's
//! pairs and then over prompts, so that a prompt with a large K weighs as much as one with K = 2.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::{Error, Result};

/// The ranking loss of a batch of prompts whose answers' `rewards` come from one forward pass.
/// `groups[g]` holds prompt `g`'s pairs `(better, worse)` as indices into `rewards`; a group
/// without pairs (every answer tied) is left out.
///
/// # Shapes
/// - `rewards`: `[answers]` → `[1]`
///
/// # Errors
/// No group with a pair, or an index outside `rewards`.
pub fn ranking_loss<B: Backend>(
    rewards: Tensor<B, 1>,
    groups: &[Vec<(usize, usize)>],
    margin: f64,
) -> Result<Tensor<B, 1>> {
    let [n] = rewards.dims();
    let counted = groups.iter().filter(|g| !g.is_empty()).count();
    if counted == 0 {
        return Err(Error::Config(
            "no strictly ordered pair in the batch: every answer is tied".into(),
        ));
    }
    let (mut better, mut worse, mut weight) = (Vec::new(), Vec::new(), Vec::new());
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let w = 1.0 / (group.len() * counted) as f32;
        for &(b, l) in group {
            if b >= n || l >= n {
                return Err(Error::Config(format!(
                    "pair ({b}, {l}) indexes past the {n} rewards"
                )));
            }
            better.push(b as i64);
            worse.push(l as i64);
            weight.push(w);
        }
    }
    let device = rewards.device();
    let pairs = better.len();
    let index =
        |ids: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [pairs]), &device);
    let weight = Tensor::<B, 1>::from_data(TensorData::new(weight, [pairs]), &device);
    let difference = rewards.clone().select(0, index(better)) - rewards.select(0, index(worse));
    let per_pair = log_sigmoid(difference.sub_scalar(margin)).neg();
    Ok((per_pair * weight).sum())
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    type B = Flex;

    fn loss(rewards: &[f32], groups: &[Vec<(usize, usize)>], margin: f64) -> f64 {
        let device = Default::default();
        let rewards = Tensor::<B, 1>::from_floats(rewards, &device);
        f64::from(ranking_loss(rewards, groups, margin).unwrap().into_scalar())
    }

    fn neg_log_sigmoid(x: f64) -> f64 {
        (1.0 + (-x).exp()).ln()
    }

    #[test]
    fn three_way_ranking_by_hand() {
        // Answers 0 > 1 > 2 with rewards 1.0, 0.5, -1.0: the pairs' differences are
        // 0.5, 2.0 and 1.5, and the loss is the mean of −log σ over them.
        let expected = (0.474_076_984 + 0.126_928_011 + 0.201_413_278) / 3.0;
        let got = loss(&[1.0, 0.5, -1.0], &[vec![(0, 1), (0, 2), (1, 2)]], 0.0);
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        let by_formula = (neg_log_sigmoid(0.5) + neg_log_sigmoid(2.0) + neg_log_sigmoid(1.5)) / 3.0;
        assert!((expected - by_formula).abs() < 1e-8);
    }

    #[test]
    fn the_order_of_answers_does_not_matter() {
        // The same ranking with the answers listed in another order.
        let a = loss(&[1.0, 0.5, -1.0], &[vec![(0, 1), (0, 2), (1, 2)]], 0.0);
        let b = loss(&[-1.0, 1.0, 0.5], &[vec![(1, 2), (1, 0), (2, 0)]], 0.0);
        assert!((a - b).abs() < 1e-7);
    }

    #[test]
    fn with_two_answers_it_is_the_pairwise_loss() {
        let got = loss(&[0.3, -0.4], &[vec![(0, 1)]], 0.0);
        assert!((got - neg_log_sigmoid(0.7)).abs() < 1e-6);
        let with_margin = loss(&[0.3, -0.4], &[vec![(0, 1)]], 0.5);
        assert!((with_margin - neg_log_sigmoid(0.2)).abs() < 1e-6);
    }

    #[test]
    fn each_prompt_weighs_the_same_whatever_its_k() {
        // One prompt with 6 pairs (K = 4) and one with 1 pair (K = 2): the mean of the two
        // prompts' means, not of the 7 pairs.
        let four = vec![(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];
        let rewards = [2.0, 1.0, 0.0, -1.0, 0.0, 3.0];
        let big = four
            .iter()
            .map(|&(b, w)| neg_log_sigmoid(f64::from(rewards[b] - rewards[w])))
            .sum::<f64>()
            / 6.0;
        let small = neg_log_sigmoid(-3.0);
        let got = loss(&rewards, &[four, vec![(4, 5)]], 0.0);
        assert!((got - (big + small) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_batch_of_ties_is_an_error() {
        let device = Default::default();
        let rewards = Tensor::<B, 1>::from_floats([0.0, 1.0], &device);
        assert!(ranking_loss(rewards, &[vec![]], 0.0).is_err());
    }
}
