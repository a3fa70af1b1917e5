//! The feed-forward block: SwiGLU (Llama) or tanh-GELU (GPT-2).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::init::linear;
use crate::{Architecture, GptConfig};

/// A feed-forward block of either shape.
#[derive(Module, Debug)]
pub enum Mlp<B: Backend> {
    /// `down(silu(gate(x)) * up(x))`
    SwiGlu {
        /// Gate projection, d → hidden.
        gate: Linear<B>,
        /// Up projection, d → hidden.
        up: Linear<B>,
        /// Down projection, hidden → d (a residual projection).
        down: Linear<B>,
    },
    /// `down(gelu_tanh(up(x)))`
    Gelu {
        /// Up projection, d → 4d.
        up: Linear<B>,
        /// Down projection, 4d → d (a residual projection).
        down: Linear<B>,
    },
}

impl<B: Backend> Mlp<B> {
    /// The MLP of `config`'s architecture.
    pub fn init(config: &GptConfig, device: &B::Device) -> Self {
        let d = config.d_model;
        let hidden = config.mlp_hidden();
        let std = config.init_std;
        let residual_std = std / (2.0 * config.n_layers as f64).sqrt();
        match config.architecture {
            Architecture::Llama => Mlp::SwiGlu {
                gate: linear(d, hidden, false, std, device),
                up: linear(d, hidden, false, std, device),
                down: linear(hidden, d, false, residual_std, device),
            },
            Architecture::Gpt2 => Mlp::Gelu {
                up: linear(d, hidden, true, std, device),
                down: linear(hidden, d, true, residual_std, device),
            },
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Mlp::SwiGlu { gate, up, down } => down.forward(silu(gate.forward(x.clone())) * up.forward(x)),
            Mlp::Gelu { up, down } => down.forward(gelu_approximate(up.forward(x))),
        }
    }
}
