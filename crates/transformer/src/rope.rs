//! Rotary position embeddings (RoFormer), in the rotate-half layout of HF Llama.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Positions of the tokens of a forward pass.
#[derive(Debug, Clone)]
pub enum Positions<B: Backend> {
    /// Every row holds positions `start, start + 1, …` (training, unpadded decoding).
    Contiguous {
        /// Position of the first token.
        start: usize,
    },
    /// One position per token, `[batch, seq]` (left-padded batches of prompts).
    PerToken(Tensor<B, 2, Int>),
}

/// Precomputed cosines and sines for every position up to the context length.
#[derive(Module, Debug)]
pub struct RotaryEmbedding<B: Backend> {
    /// `[max_seq_len, head_dim / 2]`
    cos: Tensor<B, 2>,
    /// `[max_seq_len, head_dim / 2]`
    sin: Tensor<B, 2>,
}

impl<B: Backend> RotaryEmbedding<B> {
    /// Tables for `max_seq_len` positions of heads of width `head_dim` (even).
    pub fn new(max_seq_len: usize, head_dim: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_seq_len * half);
        let mut sin = Vec::with_capacity(max_seq_len * half);
        for position in 0..max_seq_len {
            for i in 0..half {
                let frequency = theta.powf(-((2 * i) as f64) / head_dim as f64);
                let angle = position as f64 * frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |values: Vec<f32>| {
            Tensor::<B, 1>::from_floats(values.as_slice(), device).reshape([max_seq_len, half])
        };
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Rotates queries or keys, in the layout the projection produces them in (heads not yet
    /// moved before the sequence), so that every op runs on contiguous memory:
    /// `x · cos + rotate_half(x) · sin`, with `rotate_half(x) = [−x₂, x₁]` as a product with a
    /// signed permutation matrix rather than two slices and a concatenation.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, heads, head_dim]` → same
    pub fn apply(&self, x: Tensor<B, 4>, positions: &Positions<B>) -> Tensor<B, 4> {
        let [batch, seq, _, head_dim] = x.dims();
        let half = head_dim / 2;
        let device = x.device();
        #[cfg(feature = "flex")]
        if crate::kernels::flex::is_plain_flex::<B>() {
            let rotated = match positions {
                Positions::Contiguous { start } => {
                    crate::kernels::flex::rope_rows(&x, &self.cos, &self.sin, |_, token| {
                        start + token
                    })
                }
                Positions::PerToken(ids) => ids
                    .to_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .ok()
                    .filter(|ids| ids.iter().all(|&p| p >= 0))
                    .and_then(|ids| {
                        crate::kernels::flex::rope_rows(&x, &self.cos, &self.sin, |item, token| {
                            ids[item * seq + token] as usize
                        })
                    }),
            };
            if let Some(rotated) = rotated {
                return rotated;
            }
        }
        let (cos, sin, rows) = match positions {
            Positions::Contiguous { start } => (
                self.cos.clone().narrow(0, *start, seq),
                self.sin.clone().narrow(0, *start, seq),
                1,
            ),
            Positions::PerToken(ids) => {
                let flat = ids.clone().reshape([batch * seq]);
                (
                    self.cos.clone().select(0, flat.clone()),
                    self.sin.clone().select(0, flat),
                    batch,
                )
            }
        };
        // Both halves of a pair turn by the same angle: [cos, cos] and [sin, sin].
        let full =
            |t: Tensor<B, 2>| Tensor::cat(vec![t.clone(), t], 1).reshape([rows, seq, 1, head_dim]);
        let (cos, sin) = (full(cos), full(sin));
        let mut rotation = vec![0.0f32; head_dim * head_dim];
        for j in 0..half {
            // Column j of x · R is −x[j + half]; column j + half is x[j].
            rotation[(j + half) * head_dim + j] = -1.0;
            rotation[j * head_dim + j + half] = 1.0;
        }
        let rotation =
            Tensor::<B, 2>::from_data(TensorData::new(rotation, [head_dim, head_dim]), &device)
                .unsqueeze::<4>();
        x.clone() * cos + x.matmul(rotation) * sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn rotates_each_pair_by_position_times_frequency() {
        let device = Default::default();
        let rope = RotaryEmbedding::<Flex>::new(8, 4, 100.0, &device);
        // One row of 3 tokens from position 2, one head, x = [1, 2, 3, 4] at every position.
        let x = Tensor::<Flex, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &device)
            .reshape([1, 1, 1, 4])
            .repeat_dim(1, 3);
        let out = rope.apply(x, &Positions::Contiguous { start: 2 });
        let out = out.into_data().to_vec::<f32>().unwrap();
        // Pairs (x0, x2) = (1, 3) and (x1, x3) = (2, 4) turn at frequencies 1 and
        // 100^(-2/4) = 0.1 (rotate-half layout).
        for (t, position) in (2..5).enumerate() {
            for (i, (a, b), frequency) in [(0, (1.0f64, 3.0f64), 1.0f64), (1, (2.0, 4.0), 0.1)] {
                let angle = position as f64 * frequency;
                let first = a * angle.cos() - b * angle.sin();
                let second = b * angle.cos() + a * angle.sin();
                let got = (out[t * 4 + i], out[t * 4 + i + 2]);
                assert!(
                    (f64::from(got.0) - first).abs() < 1e-5,
                    "{got:?} vs {first}"
                );
                assert!(
                    (f64::from(got.1) - second).abs() < 1e-5,
                    "{got:?} vs {second}"
                );
            }
        }
    }

    /// On flex the inference kernel gives burn's ops' values bit for bit (signed zeros
    /// included), from contiguous positions and from per-token ones.
    #[cfg(feature = "flex")]
    #[test]
    fn the_inference_kernel_gives_the_ops_values_bit_for_bit() {
        let device = Default::default();
        let rope = RotaryEmbedding::<Flex>::new(40, 16, 10_000.0, &device);
        let (batch, seq, heads, dim) = (3, 5, 2, 16);
        let mut state = 3u64;
        let values = (0..batch * seq * heads * dim)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                match i % 11 {
                    0 => 0.0,
                    1 => -0.0,
                    _ => ((state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0,
                }
            })
            .collect::<Vec<f32>>();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(values, [batch, seq, heads, dim]),
            &device,
        );
        let ids = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(
                (0..batch * seq)
                    .map(|i| ((i * 7) % 40) as i64)
                    .collect::<Vec<_>>(),
                [batch, seq],
            ),
            &device,
        );
        for positions in [Positions::Contiguous { start: 9 }, Positions::PerToken(ids)] {
            let bits = |kernels: bool| {
                crate::set_flex_kernels(kernels);
                let out = rope.apply(x.clone(), &positions);
                crate::set_flex_kernels(true);
                out.into_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(true), bits(false), "{positions:?}");
        }
    }
}
