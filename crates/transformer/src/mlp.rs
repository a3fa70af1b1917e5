//! The feed-forward block: SwiGLU (Llama) or tanh-GELU (GPT-2).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::init::linear;
use crate::{Architecture, GptConfig};

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
    pub fn init(config: &GptConfig, device: &B::Device) -> Self {
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
            Mlp::SwiGlu(m) => m
                .down
                .forward(silu(m.gate.forward(x.clone())) * m.up.forward(x)),
            Mlp::Gelu(m) => m.down.forward(gelu_approximate(m.up.forward(x))),
        }
    }
}
