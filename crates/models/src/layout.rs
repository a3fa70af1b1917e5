//! How Hugging Face's tensors map onto Ember's decoder, both ways.
//!
//! | Ember (burn, `Linear` weights `[in, out]`) | HF Llama (`[out, in]`) | HF GPT-2 (`Conv1D`, `[in, out]`) |
//! |---|---|---|
//! | `token_embedding.weight` | `model.embed_tokens.weight` | `transformer.wte.weight` |
//! | `position_embedding.weight` | — | `transformer.wpe.weight` |
//! | `blocks.i.attention.qkv.weight` | `q_proj`, `k_proj`, `v_proj` stacked, transposed | `attn.c_attn.weight` |
//! | `blocks.i.attention.proj.weight` | `self_attn.o_proj.weight`ᵀ | `attn.c_proj.weight` |
//! | `blocks.i.attention_norm.*` | `input_layernorm.weight` | `ln_1.weight`, `ln_1.bias` |
//! | `blocks.i.mlp.SwiGlu.{gate,up,down}.weight` | `mlp.{gate,up,down}_proj.weight`ᵀ | — |
//! | `blocks.i.mlp.Gelu.{up,down}.*` | — | `mlp.c_fc.*`, `mlp.c_proj.*` |
//! | `blocks.i.mlp_norm.*` | `post_attention_layernorm.weight` | `ln_2.*` |
//! | `final_norm.*` | `model.norm.weight` | `transformer.ln_f.*` |
//! | `lm_head` (`[vocab, d]`, untied only) | `lm_head.weight` | — (tied) |
//!
//! Ember's rotary embedding is HF's rotate-half layout, so Llama's query and key rows need no
//! permutation here (GGUF's do; see [`crate::gguf_layout`]).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ember_transformer::{Architecture, Decoder, DecoderConfig};

use crate::{Error, Result};

/// A tensor in host memory: its shape (outermost first) and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `values`.
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Self { shape, values }
    }

    /// The transpose of a matrix.
    pub fn transposed(&self) -> Self {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let mut values = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                values[c * rows + r] = self.values[r * cols + c];
            }
        }
        Self::new(vec![cols, rows], values)
    }

    /// Matrices with the same number of columns, one on top of another.
    pub fn stack_rows(parts: &[&HostTensor]) -> Self {
        let cols = parts[0].shape[1];
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        let values = parts
            .iter()
            .flat_map(|p| p.values.iter().copied())
            .collect();
        Self::new(vec![rows, cols], values)
    }

    /// Rows `start..start + n` of a matrix.
    pub fn rows(&self, start: usize, n: usize) -> Self {
        let cols = self.shape[1];
        Self::new(
            vec![n, cols],
            self.values[start * cols..(start + n) * cols].to_vec(),
        )
    }
}

/// Named tensors in one format's names and layouts.
pub type Weights = BTreeMap<String, HostTensor>;

/// Takes a tensor out of `weights`, checking its shape.
pub(crate) fn take(
    weights: &mut Weights,
    name: &str,
    shape: &[usize],
    origin: &Path,
) -> Result<HostTensor> {
    let tensor = weights.remove(name).ok_or_else(|| Error::MissingTensor {
        path: origin.to_path_buf(),
        tensor: name.to_string(),
    })?;
    if tensor.shape != shape {
        return Err(Error::Shape {
            path: origin.to_path_buf(),
            tensor: name.to_string(),
            expected: shape.to_vec(),
            found: tensor.shape,
        });
    }
    Ok(tensor)
}

/// Llama's matrices besides the fused query/key/value projection, per block: (HF name,
/// Ember name). HF stores them `[out, in]`, Ember `[in, out]`.
const LLAMA_LINEARS: [(&str, &str); 4] = [
    ("self_attn.o_proj.weight", "attention.proj.weight"),
    ("mlp.gate_proj.weight", "mlp.SwiGlu.gate.weight"),
    ("mlp.up_proj.weight", "mlp.SwiGlu.up.weight"),
    ("mlp.down_proj.weight", "mlp.SwiGlu.down.weight"),
];

/// Llama's norms per block: (HF name, Ember name).
const LLAMA_NORMS: [(&str, &str); 2] = [
    ("input_layernorm.weight", "attention_norm.Rms.gamma"),
    ("post_attention_layernorm.weight", "mlp_norm.Rms.gamma"),
];

/// GPT-2's tensors per block: (HF name, Ember name), the same layout on both sides.
const GPT2_BLOCK: [(&str, &str); 12] = [
    ("ln_1.weight", "attention_norm.Layer.gamma"),
    ("ln_1.bias", "attention_norm.Layer.beta"),
    ("attn.c_attn.weight", "attention.qkv.weight"),
    ("attn.c_attn.bias", "attention.qkv.bias"),
    ("attn.c_proj.weight", "attention.proj.weight"),
    ("attn.c_proj.bias", "attention.proj.bias"),
    ("ln_2.weight", "mlp_norm.Layer.gamma"),
    ("ln_2.bias", "mlp_norm.Layer.beta"),
    ("mlp.c_fc.weight", "mlp.Gelu.up.weight"),
    ("mlp.c_fc.bias", "mlp.Gelu.up.bias"),
    ("mlp.c_proj.weight", "mlp.Gelu.down.weight"),
    ("mlp.c_proj.bias", "mlp.Gelu.down.bias"),
];

/// The tensors outside the blocks: (HF name, Ember name), the same layout on both sides.
fn outer(config: &DecoderConfig) -> Vec<(&'static str, &'static str)> {
    match config.architecture {
        Architecture::Llama => {
            let mut names = vec![
                ("model.embed_tokens.weight", "token_embedding.weight"),
                ("model.norm.weight", "final_norm.Rms.gamma"),
            ];
            if !config.tied() {
                names.push(("lm_head.weight", "lm_head"));
            }
            names
        }
        Architecture::Gpt2 => vec![
            ("transformer.wte.weight", "token_embedding.weight"),
            ("transformer.wpe.weight", "position_embedding.weight"),
            ("transformer.ln_f.weight", "final_norm.Layer.gamma"),
            ("transformer.ln_f.bias", "final_norm.Layer.beta"),
        ],
    }
}

/// The shape of an Ember parameter of `config` (in Ember's layout).
fn ember_shape(config: &DecoderConfig, ember: &str) -> Vec<usize> {
    let (d, v, hd) = (config.d_model, config.vocab_size, config.head_dim());
    let (heads, kv, ff) = (config.n_heads, config.kv_heads(), config.mlp_hidden());
    let qkv = (heads + 2 * kv) * hd;
    let name = ember.rsplit_once("blocks.").map_or(ember, |(_, rest)| {
        rest.split_once('.').map_or(rest, |(_, name)| name)
    });
    match name {
        "token_embedding.weight" | "lm_head" => vec![v, d],
        "position_embedding.weight" => vec![config.max_seq_len, d],
        "attention.qkv.weight" => vec![d, qkv],
        "attention.qkv.bias" => vec![qkv],
        "attention.proj.weight" => vec![heads * hd, d],
        "mlp.SwiGlu.gate.weight" | "mlp.SwiGlu.up.weight" | "mlp.Gelu.up.weight" => vec![d, ff],
        "mlp.SwiGlu.down.weight" | "mlp.Gelu.down.weight" => vec![ff, d],
        "mlp.Gelu.up.bias" => vec![ff],
        _ => vec![d],
    }
}

/// HF tensors → Ember's parameters by module path, in Ember's layout. Every tensor the
/// config needs must be there with its shape; tensors HF keeps besides (GPT-2's attention
/// `bias` buffers, a tied `lm_head.weight`) are ignored.
///
/// # Errors
/// [`Error::MissingTensor`] or [`Error::Shape`], naming the HF tensor.
pub fn hf_to_ember(config: &DecoderConfig, mut hf: Weights, origin: &Path) -> Result<Weights> {
    let (d, hd) = (config.d_model, config.head_dim());
    let (heads, kv) = (config.n_heads, config.kv_heads());
    let mut out = Weights::new();
    // GPT2Model checkpoints (the original `gpt2` repository) name the trunk without the
    // `transformer.` prefix.
    let bare =
        config.architecture == Architecture::Gpt2 && !hf.contains_key("transformer.wte.weight");
    let key = |name: &str| match name.strip_prefix("transformer.") {
        Some(rest) if bare => rest.to_string(),
        _ => name.to_string(),
    };
    let hf = &mut hf;
    for (hf_name, ember) in outer(config) {
        let shape = ember_shape(config, ember);
        out.insert(ember.into(), take(hf, &key(hf_name), &shape, origin)?);
    }
    for i in 0..config.n_layers {
        let e = format!("blocks.{i}.");
        match config.architecture {
            Architecture::Llama => {
                let p = format!("model.layers.{i}.");
                let mut part = |name: &str, rows: usize| {
                    take(
                        hf,
                        &format!("{p}self_attn.{name}_proj.weight"),
                        &[rows, d],
                        origin,
                    )
                };
                let (q, k, v) = (
                    part("q", heads * hd)?,
                    part("k", kv * hd)?,
                    part("v", kv * hd)?,
                );
                out.insert(
                    format!("{e}attention.qkv.weight"),
                    HostTensor::stack_rows(&[&q, &k, &v]).transposed(),
                );
                if config.has_qkv_bias() {
                    let mut bias = |name: &str, n: usize| {
                        take(hf, &format!("{p}self_attn.{name}_proj.bias"), &[n], origin)
                    };
                    let parts = [
                        bias("q", heads * hd)?,
                        bias("k", kv * hd)?,
                        bias("v", kv * hd)?,
                    ];
                    let values = parts.into_iter().flat_map(|t| t.values).collect::<Vec<_>>();
                    let n = values.len();
                    out.insert(
                        format!("{e}attention.qkv.bias"),
                        HostTensor::new(vec![n], values),
                    );
                }
                for (hf_name, ember) in LLAMA_LINEARS {
                    let mut shape = ember_shape(config, ember);
                    shape.reverse();
                    let t = take(hf, &format!("{p}{hf_name}"), &shape, origin)?;
                    out.insert(format!("{e}{ember}"), t.transposed());
                }
                for (hf_name, ember) in LLAMA_NORMS {
                    let t = take(hf, &format!("{p}{hf_name}"), &[d], origin)?;
                    out.insert(format!("{e}{ember}"), t);
                }
            }
            Architecture::Gpt2 => {
                let p = key(&format!("transformer.h.{i}."));
                for (hf_name, ember) in GPT2_BLOCK {
                    let t = take(
                        hf,
                        &format!("{p}{hf_name}"),
                        &ember_shape(config, ember),
                        origin,
                    )?;
                    out.insert(format!("{e}{ember}"), t);
                }
            }
        }
    }
    Ok(out)
}

/// Ember's parameters → HF tensors (names and layouts of `LlamaForCausalLM` or
/// `GPT2LMHeadModel`); the inverse of [`hf_to_ember`].
pub fn ember_to_hf(config: &DecoderConfig, mut ember: Weights) -> Weights {
    let (heads, kv, hd) = (config.n_heads, config.kv_heads(), config.head_dim());
    let mut out = Weights::new();
    let mut take = |name: &str| {
        ember
            .remove(name)
            .expect("a parameter of the config's model")
    };
    for (hf_name, ember_name) in outer(config) {
        out.insert(hf_name.into(), take(ember_name));
    }
    for i in 0..config.n_layers {
        let e = format!("blocks.{i}.");
        match config.architecture {
            Architecture::Llama => {
                let p = format!("model.layers.{i}.");
                let qkv = take(&format!("{e}attention.qkv.weight")).transposed();
                let parts = [("q", 0, heads), ("k", heads, kv), ("v", heads + kv, kv)];
                for (name, start, n) in parts {
                    out.insert(
                        format!("{p}self_attn.{name}_proj.weight"),
                        qkv.rows(start * hd, n * hd),
                    );
                }
                if config.has_qkv_bias() {
                    let bias = take(&format!("{e}attention.qkv.bias"));
                    for (name, start, n) in parts {
                        let values = bias.values[start * hd..(start + n) * hd].to_vec();
                        out.insert(
                            format!("{p}self_attn.{name}_proj.bias"),
                            HostTensor::new(vec![n * hd], values),
                        );
                    }
                }
                for (hf_name, ember_name) in LLAMA_LINEARS {
                    let t = take(&format!("{e}{ember_name}")).transposed();
                    out.insert(format!("{p}{hf_name}"), t);
                }
                for (hf_name, ember_name) in LLAMA_NORMS {
                    out.insert(format!("{p}{hf_name}"), take(&format!("{e}{ember_name}")));
                }
            }
            Architecture::Gpt2 => {
                for (hf_name, ember_name) in GPT2_BLOCK {
                    out.insert(
                        format!("transformer.h.{i}.{hf_name}"),
                        take(&format!("{e}{ember_name}")),
                    );
                }
            }
        }
    }
    out
}

/// Builds the decoder of `config` holding `params` (Ember's paths and layout, as
/// [`hf_to_ember`] gives them).
///
/// # Errors
/// An invalid config; [`Error::MissingTensor`] or [`Error::Shape`] for a parameter the
/// model has that `params` lacks or shapes otherwise.
pub fn build_decoder<B: Backend>(
    config: &DecoderConfig,
    mut params: Weights,
    origin: &Path,
    device: &B::Device,
) -> Result<Decoder<B>> {
    let model = config.init_zeroed::<B>(device)?;
    struct Fill<'a, B: Backend> {
        path: Vec<String>,
        params: &'a mut Weights,
        device: B::Device,
        problem: Option<(String, Vec<usize>, Option<Vec<usize>>)>,
    }
    impl<B: Backend> ModuleMapper<B> for Fill<'_, B> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let name = self.path.join(".");
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.dims().to_vec();
            match self.params.remove(&name) {
                Some(host) if host.shape == shape => {
                    let data = TensorData::new(host.values, shape);
                    Param::from_mapped_value(id, Tensor::from_data(data, &self.device), mapper)
                }
                other => {
                    if self.problem.is_none() {
                        self.problem = Some((name, shape, other.map(|h| h.shape)));
                    }
                    Param::from_mapped_value(id, tensor, mapper)
                }
            }
        }
    }
    let mut fill = Fill::<B> {
        path: Vec::new(),
        params: &mut params,
        device: device.clone(),
        problem: None,
    };
    let model = model.map(&mut fill);
    match fill.problem {
        None => Ok(model),
        Some((tensor, expected, None)) => Err(Error::MissingTensor {
            path: origin.to_path_buf(),
            tensor: format!("{tensor} (Ember's {expected:?})"),
        }),
        Some((tensor, expected, Some(found))) => Err(Error::Shape {
            path: origin.to_path_buf(),
            tensor,
            expected,
            found,
        }),
    }
}

/// Every float parameter of a decoder, by module path, in Ember's layout.
pub fn decoder_params<B: Backend>(model: &Decoder<B>) -> Weights {
    struct Collect {
        path: Vec<String>,
        out: Weights,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            let shape = tensor.dims().to_vec();
            let values = tensor
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("float data");
            self.out
                .insert(self.path.join("."), HostTensor::new(shape, values));
        }
    }
    let mut collect = Collect {
        path: Vec::new(),
        out: Weights::new(),
    };
    model.visit(&mut collect);
    collect.out
}
