//! The model's hyper-parameters and presets.

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The two shapes of decoder Ember builds from one config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Llama-style: rotary positions, RMSNorm, SwiGLU MLP, no biases. Ember's default.
    Llama,
    /// GPT-2-style: learned absolute positions, LayerNorm, tanh-GELU MLP of width 4d, biases.
    /// The shape of HF GPT-2 checkpoints and of the PyTorch peer benchmark.
    Gpt2,
}

/// Configuration for [`crate::Decoder`].
#[derive(Config, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Vocabulary size: rows of the (tied) token embedding.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Number of attention heads; must divide `d_model`.
    pub n_heads: usize,
    /// Longest sequence the model sees: the size of the position table.
    pub max_seq_len: usize,
    /// Which shape of decoder.
    #[config(default = "Architecture::Llama")]
    pub architecture: Architecture,
    /// Hidden width of the MLP. `None` picks the shape's convention: 4d for GPT-2, and for
    /// SwiGLU 8d/3 rounded up to a multiple of 64, which keeps the parameter count of a 4d MLP.
    #[config(default = "None")]
    pub d_ff: Option<usize>,
    /// Epsilon of the norms; 1e-5 as in GPT-2 and Llama.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Base of the rotary frequencies; 10000 as in RoFormer and Llama 2.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Number of key/value heads (grouped-query attention, Ainslie et al. 2023): each serves
    /// `n_heads / n_kv_heads` query heads and the KV cache holds only these. `None` is one
    /// per query head (multi-head attention); it must divide `n_heads`.
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// Whether the language-model head is the token embedding's transpose (GPT-2, SmolLM2) or
    /// a matrix of its own (Llama 2 and 3 from 7B up); `None` is tied (and what a `model.json`
    /// written before the field existed has). See [`DecoderConfig::tied`].
    #[config(default = "None")]
    pub tie_embeddings: Option<bool>,
    /// Whether the query/key/value projection has a bias in a Llama-shaped model (Qwen2's
    /// attention; GPT-2's layers always have biases); `None` is no. See
    /// [`DecoderConfig::has_qkv_bias`].
    #[config(default = "None")]
    pub qkv_bias: Option<bool>,
    /// Standard deviation of the initial weights; 0.02 as in GPT-2. Residual projections are
    /// further scaled by 1/sqrt(2 n_layers) so the residual stream's variance does not grow
    /// with depth.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl DecoderConfig {
    /// The PyTorch peer's `tiny`: 4 layers of width 128, 4 heads, context 128, vocabulary
    /// 4096. Trains in seconds on a CPU.
    pub fn tiny() -> Self {
        Self::new(4096, 128, 4, 4, 128)
    }

    /// The PyTorch peer's `small`: 6 layers of width 256, 8 heads, context 256, vocabulary
    /// 8192.
    pub fn small() -> Self {
        Self::new(8192, 256, 6, 8, 256)
    }

    /// GPT-2 small, 124M parameters: 12 layers of width 768, 12 heads, context 1024, GPT-2's
    /// vocabulary of 50257, GPT-2-shaped.
    pub fn gpt2_small() -> Self {
        Self::new(50257, 768, 12, 12, 1024).with_architecture(Architecture::Gpt2)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Whether the head is the token embedding's transpose (see `tie_embeddings`).
    pub fn tied(&self) -> bool {
        self.tie_embeddings != Some(false)
    }

    /// Whether a Llama-shaped model's query/key/value projection has a bias (see `qkv_bias`).
    pub fn has_qkv_bias(&self) -> bool {
        self.qkv_bias == Some(true)
    }

    /// Number of key/value heads (see `n_kv_heads`).
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Hidden width of the MLP (see `d_ff`).
    pub fn mlp_hidden(&self) -> usize {
        self.d_ff.unwrap_or(match self.architecture {
            Architecture::Gpt2 => 4 * self.d_model,
            Architecture::Llama => (8 * self.d_model / 3).div_ceil(64) * 64,
        })
    }

    /// Checks that the shapes fit together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first problem.
    pub fn validate(&self) -> crate::Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.vocab_size == 0 || self.d_model == 0 || self.n_layers == 0 || self.n_heads == 0 {
            return fail("vocab_size, d_model, n_layers and n_heads must be positive".into());
        }
        if self.max_seq_len == 0 {
            return fail("max_seq_len must be positive".into());
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return fail(format!(
                "d_model {} is not divisible by n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        match self.n_kv_heads {
            Some(0) => return fail("n_kv_heads must be positive".into()),
            Some(kv) if !self.n_heads.is_multiple_of(kv) => {
                return fail(format!(
                    "n_heads {} is not divisible by n_kv_heads {kv}",
                    self.n_heads
                ))
            }
            _ => {}
        }
        if self.architecture == Architecture::Llama && !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "rotary embeddings need an even head width, got {}",
                self.head_dim()
            ));
        }
        if self.d_ff == Some(0) {
            return fail("d_ff must be positive".into());
        }
        // Written so that NaN fails each check (found by fuzzing model.json: a norm_eps of 0
        // passed here and panicked in burn's RmsNorm).
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return fail(format!(
                "norm_eps must be positive and finite, got {}",
                self.norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return fail(format!(
                "rope_theta must be positive and finite, got {}",
                self.rope_theta
            ));
        }
        if !(self.init_std >= 0.0 && self.init_std.is_finite()) {
            return fail(format!(
                "init_std must be finite and not negative, got {}",
                self.init_std
            ));
        }
        Ok(())
    }

    /// Parameters of the model built from this config (the tied head counted once).
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let hidden = self.mlp_hidden();
        let kv = self.kv_heads() * self.head_dim();
        let (attention, mlp, norms, positions) = match self.architecture {
            Architecture::Llama => (
                2 * d * d + 2 * d * kv + usize::from(self.has_qkv_bias()) * (d + 2 * kv),
                3 * d * hidden,
                2 * d,
                0,
            ),
            Architecture::Gpt2 => (
                2 * d * d + 2 * d * kv + 2 * d + 2 * kv,
                2 * d * hidden + hidden + d,
                4 * d,
                self.max_seq_len * d,
            ),
        };
        let final_norm = if self.architecture == Architecture::Gpt2 {
            2 * d
        } else {
            d
        };
        let head = if self.tied() { 0 } else { self.vocab_size * d };
        self.vocab_size * d
            + positions
            + self.n_layers * (attention + mlp + norms)
            + final_norm
            + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124m_parameters() {
        // HF's GPT2LMHeadModel reports 124,439,808 parameters (tied head counted once).
        assert_eq!(DecoderConfig::gpt2_small().num_params(), 124_439_808);
    }

    #[test]
    fn swiglu_width_keeps_a_4d_mlps_parameters_roughly() {
        let config = DecoderConfig::tiny();
        assert_eq!(config.mlp_hidden(), 384); // 8*128/3 = 341.3 → 384
    }

    #[test]
    fn smollm2_135m_has_134_5m_parameters() {
        // HF's LlamaForCausalLM for SmolLM2-135M reports 134,515,008 parameters: 30 blocks of
        // width 576, 9 query and 3 key/value heads, SwiGLU of 1536, tied head.
        let config = DecoderConfig::new(49152, 576, 30, 9, 8192)
            .with_n_kv_heads(Some(3))
            .with_d_ff(Some(1536));
        assert_eq!(config.num_params(), 134_515_008);
        let untied = config.clone().with_tie_embeddings(Some(false));
        assert_eq!(untied.num_params(), 134_515_008 + 49152 * 576);
    }

    #[test]
    fn qwen2_5_0_5b_has_494m_parameters() {
        // HF's Qwen2ForCausalLM for Qwen2.5-0.5B reports 494,032,768 parameters: 24 blocks of
        // width 896, 14 query and 2 key/value heads, biases on the query/key/value projections,
        // SwiGLU of 4864, tied head.
        let config = DecoderConfig::new(151_936, 896, 24, 14, 32_768)
            .with_n_kv_heads(Some(2))
            .with_d_ff(Some(4864))
            .with_qkv_bias(Some(true));
        assert_eq!(config.num_params(), 494_032_768);
    }

    #[test]
    fn a_model_json_from_before_the_new_fields_still_reads() {
        // What Ember wrote before grouped-query attention, untied heads and biases existed.
        let old = r#"{"vocab_size": 400, "d_model": 32, "n_layers": 2, "n_heads": 2,
            "max_seq_len": 128, "architecture": "llama", "d_ff": null, "norm_eps": 0.00001,
            "rope_theta": 10000.0, "init_std": 0.02}"#;
        let config: DecoderConfig = serde_json::from_str(old).unwrap();
        assert!(config.tied() && !config.has_qkv_bias());
        assert_eq!(config.kv_heads(), 2);
        assert_eq!(config, DecoderConfig::new(400, 32, 2, 2, 128));
    }

    #[test]
    fn key_value_heads_must_divide_heads() {
        let config = DecoderConfig::new(10, 64, 1, 4, 8);
        assert!(config.clone().with_n_kv_heads(Some(3)).validate().is_err());
        assert!(config.clone().with_n_kv_heads(Some(0)).validate().is_err());
        assert!(config.with_n_kv_heads(Some(2)).validate().is_ok());
    }

    #[test]
    fn heads_must_divide_width() {
        assert!(DecoderConfig::new(10, 130, 1, 4, 8).validate().is_err());
        assert!(DecoderConfig::tiny().validate().is_ok());
    }
}
