//! The order in which a stage visits its examples: epochs of a shuffled order, each epoch's
//! order a function of the seed and the epoch alone, so that a resumed run sees the same
//! examples as an uninterrupted one.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Shuffled epochs over `n` examples.
#[derive(Debug, Clone)]
pub struct EpochOrder {
    n: usize,
    seed: u64,
    /// The current epoch's number and order.
    current: Option<(usize, Vec<usize>)>,
}

impl EpochOrder {
    /// Epochs over `n` examples (at least one), shuffled by `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n: n.max(1),
            seed,
            current: None,
        }
    }

    /// The example at `position` of the endless sequence of epochs.
    pub fn at(&mut self, position: usize) -> usize {
        let (epoch, offset) = (position / self.n, position % self.n);
        if self.current.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order = (0..self.n).collect::<Vec<_>>();
            let seed = self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut StdRng::seed_from_u64(seed));
            self.current = Some((epoch, order));
        }
        self.current.as_ref().expect("just set").1[offset]
    }

    /// The `size` examples of batch `index`.
    pub fn batch(&mut self, index: usize, size: usize) -> Vec<usize> {
        (0..size).map(|i| self.at(index * size + i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_is_a_permutation_and_reproducible() {
        let mut order = EpochOrder::new(7, 3);
        let first: Vec<usize> = (0..7).map(|p| order.at(p)).collect();
        let second: Vec<usize> = (7..14).map(|p| order.at(p)).collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
        let mut sorted = second.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
        assert_ne!(first, second, "epochs are shuffled differently");
        // Asking out of order (as a resumed run does) gives the same answers.
        let mut fresh = EpochOrder::new(7, 3);
        assert_eq!(fresh.at(9), second[2]);
        assert_eq!(fresh.at(1), first[1]);
        assert_eq!(fresh.batch(1, 7), second);
    }
}
