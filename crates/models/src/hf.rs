//! Hugging Face model folders: `config.json`, `model.safetensors` (or shards with
//! `model.safetensors.index.json`), `tokenizer.json` and `tokenizer_config.json`'s chat template.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ember_transformer::{Architecture, DecoderConfig};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::layout::{HostTensor, Weights};
use crate::{Error, Result};
use ember_tokenizer::write_atomically;

/// The config file of a folder.
pub const CONFIG_FILE: &str = "config.json";
/// The one-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer's settings, with the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The decoder config a `config.json` describes (Llama-family and GPT-2 models).
///
/// # Errors
/// [`Error::Unsupported`] for another model type or a feature Ember's decoder lacks (RoPE
/// scaling, attention biases, a head width other than `hidden_size / heads`);
/// [`Error::Metadata`] for a missing field.
pub fn read_config(path: &Path) -> Result<DecoderConfig> {
    let json = read_json(path)?;
    let field = |key: &str| -> Result<&Value> {
        json.get(key)
            .filter(|v| !v.is_null())
            .ok_or_else(|| Error::Metadata {
                path: path.to_path_buf(),
                key: key.into(),
                message: "missing".into(),
            })
    };
    let size = |key: &str| -> Result<usize> {
        field(key)?
            .as_u64()
            .map(|u| u as usize)
            .ok_or_else(|| Error::Metadata {
                path: path.to_path_buf(),
                key: key.into(),
                message: "not a non-negative integer".into(),
            })
    };
    let float = |key: &str, default: f64| -> Result<f64> {
        match json.get(key).filter(|v| !v.is_null()) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| Error::Metadata {
                path: path.to_path_buf(),
                key: key.into(),
                message: "not a number".into(),
            }),
        }
    };
    let unsupported = |message: String| Error::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    let model_type = field("model_type")?.as_str().unwrap_or_default();
    let config = match model_type {
        "llama" | "mistral" | "qwen2" => {
            let qwen2 = model_type == "qwen2";
            if qwen2 && json.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
                return Err(unsupported(
                    "use_sliding_window is true; Ember's attention has no sliding window".into(),
                ));
            }
            let (d, heads) = (size("hidden_size")?, size("num_attention_heads")?);
            if json.get("rope_scaling").is_some_and(|v| !v.is_null()) {
                return Err(unsupported(
                    "rope_scaling is set; Ember's RoPE has no scaling".into(),
                ));
            }
            // transformers 5 writes the RoPE settings as `rope_parameters`; earlier versions a
            // top-level `rope_theta` (and `rope_scaling`).
            let rope = json.get("rope_parameters").filter(|v| !v.is_null());
            if let Some(kind) = rope
                .and_then(|r| r.get("rope_type"))
                .and_then(Value::as_str)
            {
                if kind != "default" {
                    return Err(unsupported(format!(
                        "rope_parameters.rope_type {kind}; Ember's RoPE has no scaling"
                    )));
                }
            }
            let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
                Some(theta) => theta.as_f64().ok_or_else(|| Error::Metadata {
                    path: path.to_path_buf(),
                    key: "rope_parameters.rope_theta".into(),
                    message: "not a number".into(),
                })?,
                None => float("rope_theta", 10000.0)?,
            };
            // Qwen2's query/key/value projections always have biases (and nothing else does).
            for key in ["attention_bias", "mlp_bias"] {
                if json.get(key).and_then(Value::as_bool) == Some(true) {
                    return Err(unsupported(format!(
                        "{key} is true; Ember's Llama has no biases"
                    )));
                }
            }
            if let Some(act) = json.get("hidden_act").and_then(Value::as_str) {
                if act != "silu" {
                    return Err(unsupported(format!(
                        "hidden_act {act}; Ember's Llama uses silu"
                    )));
                }
            }
            if let Some(head_dim) = json.get("head_dim").and_then(Value::as_u64) {
                if head_dim as usize * heads != d {
                    return Err(unsupported(format!(
                        "head_dim {head_dim} × {heads} heads is not hidden_size {d}"
                    )));
                }
            }
            let kv = json
                .get("num_key_value_heads")
                .and_then(Value::as_u64)
                .map_or(heads, |k| k as usize);
            DecoderConfig::new(
                size("vocab_size")?,
                d,
                size("num_hidden_layers")?,
                heads,
                size("max_position_embeddings")?,
            )
            .with_d_ff(Some(size("intermediate_size")?))
            .with_n_kv_heads((kv != heads).then_some(kv))
            .with_norm_eps(float("rms_norm_eps", 1e-6)?)
            .with_rope_theta(rope_theta)
            .with_qkv_bias(Some(qwen2))
            .with_tie_embeddings(Some(
                json.get("tie_word_embeddings")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            ))
        }
        "gpt2" => {
            if let Some(act) = json.get("activation_function").and_then(Value::as_str) {
                if act != "gelu_new" && act != "gelu_pytorch_tanh" {
                    return Err(unsupported(format!(
                        "activation_function {act}; Ember's GPT-2 uses the tanh GELU (gelu_new)"
                    )));
                }
            }
            let d = size("n_embd")?;
            DecoderConfig::new(
                size("vocab_size")?,
                d,
                size("n_layer")?,
                size("n_head")?,
                size("n_positions")?,
            )
            .with_architecture(Architecture::Gpt2)
            .with_d_ff(Some(match json.get("n_inner").and_then(Value::as_u64) {
                Some(inner) => inner as usize,
                None => 4 * d,
            }))
            .with_norm_eps(float("layer_norm_epsilon", 1e-5)?)
        }
        other => {
            return Err(unsupported(format!(
            "model_type {other:?}: Ember builds llama (and mistral-style), qwen2 and gpt2 models"
        )))
        }
    };
    config
        .validate()
        .map_err(|e| unsupported(format!("the model it describes: {e}")))?;
    crate::check_size(&config, path)?;
    Ok(config)
}

/// `config.json` for a decoder, as `transformers` writes it for `LlamaForCausalLM` or
/// `GPT2LMHeadModel`.
pub fn config_json(config: &DecoderConfig, bos: Option<u32>, eos: Option<u32>) -> Value {
    match config.architecture {
        Architecture::Llama => json!({
            "architectures": [if config.has_qkv_bias() { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": if config.has_qkv_bias() { "qwen2" } else { "llama" },
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "intermediate_size": config.mlp_hidden(),
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.kv_heads(),
            "head_dim": config.head_dim(),
            "max_position_embeddings": config.max_seq_len,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta,
            "rope_scaling": null,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": config.tied(),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        }),
        Architecture::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": config.vocab_size,
            "n_embd": config.d_model,
            "n_layer": config.n_layers,
            "n_head": config.n_heads,
            "n_positions": config.max_seq_len,
            "n_inner": config.mlp_hidden(),
            "layer_norm_epsilon": config.norm_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": true,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        }),
    }
}

fn decode(path: &Path, name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::UnsupportedType {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                kind: format!("{other:?}"),
                supported: "F32, F16 and BF16 are supported",
            })
        }
    })
}

/// Every floating-point tensor of one safetensors file, decoded to `f32`.
///
/// # Errors
/// [`Error::Io`], [`Error::Safetensors`] for a malformed file, [`Error::UnsupportedType`].
pub fn read_safetensors(path: &Path, out: &mut Weights) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    for (name, view) in tensors.tensors() {
        // Integer and boolean buffers (GPT-2's attention masks in old checkpoints) are not
        // parameters.
        if matches!(
            view.dtype(),
            Dtype::BOOL | Dtype::U8 | Dtype::I64 | Dtype::I32
        ) {
            continue;
        }
        let values = decode(path, &name, view.dtype(), view.data())?;
        out.insert(name, HostTensor::new(view.shape().to_vec(), values));
    }
    Ok(())
}

/// The weights of a folder: `model.safetensors`, or every shard its index names.
///
/// # Errors
/// A missing or malformed file.
pub fn read_weights(dir: &Path) -> Result<Weights> {
    let mut out = Weights::new();
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        read_safetensors(&single, &mut out)?;
        return Ok(out);
    }
    let index_path = dir.join(INDEX_FILE);
    if !index_path.is_file() {
        return Err(Error::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {WEIGHTS_FILE} and no {INDEX_FILE}"),
            ),
        ));
    }
    let index = read_json(&index_path)?;
    let map = index["weight_map"]
        .as_object()
        .ok_or_else(|| Error::Metadata {
            path: index_path.clone(),
            key: "weight_map".into(),
            message: "missing or not an object".into(),
        })?;
    let mut shards = map.values().filter_map(Value::as_str).collect::<Vec<_>>();
    shards.sort_unstable();
    shards.dedup();
    for shard in shards {
        if shard.contains('/') || shard.contains("..") {
            return Err(Error::Metadata {
                path: index_path.clone(),
                key: "weight_map".into(),
                message: format!("shard {shard:?} is outside the folder"),
            });
        }
        read_safetensors(&dir.join(shard), &mut out)?;
    }
    Ok(out)
}

/// Writes `weights` as one `model.safetensors` (F32), atomically.
///
/// # Errors
/// [`Error::Io`] or [`Error::Safetensors`].
pub fn write_safetensors(path: &Path, weights: &Weights) -> Result<()> {
    let bytes: BTreeMap<&str, Vec<u8>> = weights
        .iter()
        .map(|(name, t)| {
            (
                name.as_str(),
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = weights
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                t.shape.clone(),
                &bytes[name.as_str()],
            )
            .map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            Ok((name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let data = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(write_atomically(path, &data)?)
}

/// The chat template file `transformers` 5 writes beside `tokenizer_config.json`.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The folder's chat template: `chat_template.jinja` (`transformers` 5), else the
/// `chat_template` of `tokenizer_config.json` (earlier versions), if either is there.
///
/// # Errors
/// A file that is there but cannot be read, or is not JSON.
pub fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join(CHAT_TEMPLATE_FILE);
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(&jinja, e));
    }
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let json = read_json(&path)?;
    Ok(match &json["chat_template"] {
        Value::String(s) => Some(s.clone()),
        // A list of named templates: the default one.
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// Writes JSON atomically.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    Ok(write_atomically(path, text.as_bytes())?)
}
