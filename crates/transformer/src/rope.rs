//! Rotary position embeddings (RoFormer), in the rotate-half layout of HF Llama.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

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

    /// Rotates queries or keys.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]` → same
    pub fn apply(&self, x: Tensor<B, 4>, positions: &Positions<B>) -> Tensor<B, 4> {
        let [batch, _, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let (cos, sin) = match positions {
            Positions::Contiguous { start } => (
                self.cos
                    .clone()
                    .narrow(0, *start, seq)
                    .reshape([1, 1, seq, half]),
                self.sin
                    .clone()
                    .narrow(0, *start, seq)
                    .reshape([1, 1, seq, half]),
            ),
            Positions::PerToken(ids) => {
                let flat = ids.clone().reshape([batch * seq]);
                (
                    self.cos
                        .clone()
                        .select(0, flat.clone())
                        .reshape([batch, 1, seq, half]),
                    self.sin
                        .clone()
                        .select(0, flat)
                        .reshape([batch, 1, seq, half]),
                )
            }
        };
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let first = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let second = x2 * cos + x1 * sin;
        Tensor::cat(vec![first, second], 3)
    }
}
