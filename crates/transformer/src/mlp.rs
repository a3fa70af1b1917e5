//! The feed-forward block: SwiGLU (Llama) or tanh-GELU (GPT-2).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::init::{linear, linear_rows};
use crate::{Architecture, DecoderConfig};

/// `gelu_tanh(x) = x · σ(A·x + B·x³)`: `A = 2·√(2/π)`, `B = A · 0.044715`.
pub(crate) const GELU_A: f64 = 2.0 * 0.797_884_560_802_865_4;
/// See [`GELU_A`].
pub(crate) const GELU_B: f64 = GELU_A * 0.044_715;

/// GPT-2's tanh-approximated GELU, `x/2 · (1 + tanh(u))` with `u = √(2/π)(x + 0.044715 x³)`,
/// computed as `x · σ(2u)` (the same function: `(1 + tanh u)/2 = σ(2u)`) with `x³` as two
/// products. burn's `gelu_approximate` spends most of a CPU training step's elementwise time
/// in `powf` and `tanh` (eight ops, each with its own backward); here the one transcendental
/// is the backend's fused sigmoid, which has a fused backward too.
///
/// With the `flex` feature, on flex, one vectorised kernel computes it (and, under autodiff,
/// its local linearisation: the backward pass is one multiplication).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::kernels::flex::gelu(&x) {
        return y;
    }
    let square = x.clone() * x.clone();
    let u2 = x.clone() * (square * GELU_B + GELU_A);
    x * sigmoid(u2)
}

/// `silu(g) · u`: with the `flex` feature, on flex, one vectorised kernel (and under autodiff
/// its local linearisation); elsewhere burn's ops.
fn swiglu<B: Backend, const D: usize>(g: Tensor<B, D>, u: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::kernels::flex::swiglu(&g, &u) {
        return y;
    }
    silu(g) * u
}

/// `down(silu(gate(x)) * up(x))` (Shazeer, "GLU variants improve transformer").
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    /// Gate projection, d → hidden.
    gate: Linear<B>,
    /// Up projection, d → hidden.
    up: Linear<B>,
    /// Down projection, hidden → d (a residual projection).
    down: Linear<B>,
}

/// `down(gelu_tanh(up(x)))`, GPT-2's MLP.
#[derive(Module, Debug)]
pub struct GeluMlp<B: Backend> {
    /// Up projection, d → 4d.
    up: Linear<B>,
    /// Down projection, 4d → d (a residual projection).
    down: Linear<B>,
}

/// A feed-forward block of either shape.
// One per block, built once: boxing the larger variant would save nothing that matters, and
// burn's Module derive wants its modules inline.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Mlp<B: Backend> {
    /// Llama's.
    SwiGlu(SwiGlu<B>),
    /// GPT-2's.
    Gelu(GeluMlp<B>),
}

impl<B: Backend> Mlp<B> {
    /// The MLP of `config`'s architecture.
    pub fn init(config: &DecoderConfig, device: &B::Device) -> Self {
        let d = config.d_model;
        let hidden = config.mlp_hidden();
        let std = config.init_std;
        let residual_std = std / (2.0 * config.n_layers as f64).sqrt();
        match config.architecture {
            Architecture::Llama => Mlp::SwiGlu(SwiGlu {
                gate: linear(d, hidden, false, std, device),
                up: linear(d, hidden, false, std, device),
                down: linear(hidden, d, false, residual_std, device),
            }),
            Architecture::Gpt2 => Mlp::Gelu(GeluMlp {
                up: linear(d, hidden, true, std, device),
                down: linear(hidden, d, true, residual_std, device),
            }),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Mlp::SwiGlu(m) => linear_rows(
                &m.down,
                swiglu(linear_rows(&m.gate, x.clone()), linear_rows(&m.up, x)),
            ),
            Mlp::Gelu(m) => linear_rows(&m.down, gelu_tanh(linear_rows(&m.up, x))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::activation::gelu_approximate;

    #[test]
    fn gelu_tanh_is_burns_gelu_approximate_in_value_and_gradient() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let values = (-40..=40).map(|i| i as f32 * 0.2).collect::<Vec<_>>();
        let run = |f: fn(Tensor<A, 1>) -> Tensor<A, 1>| {
            let x = Tensor::<A, 1>::from_floats(values.as_slice(), &device).require_grad();
            let y = f(x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            let grad = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
            (y.into_data().to_vec::<f32>().unwrap(), grad)
        };
        let (ours, our_grad) = run(gelu_tanh);
        let (burns, burn_grad) = run(gelu_approximate);
        for (i, x) in values.iter().enumerate() {
            assert!(
                (ours[i] - burns[i]).abs() < 1e-5,
                "gelu({x}): {} vs {}",
                ours[i],
                burns[i]
            );
            assert!(
                (our_grad[i] - burn_grad[i]).abs() < 1e-4,
                "gelu'({x}): {} vs {}",
                our_grad[i],
                burn_grad[i]
            );
        }
        // GELU(1) by hand: 0.5 · (1 + tanh(√(2/π) · 1.044715)) = 0.841192.
        assert!((ours[45] - 0.841_192).abs() < 1e-5, "{}", ours[45]);
    }
}
