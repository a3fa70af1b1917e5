//! GGUF's names, layouts and metadata for the `llama` and `gpt2` architectures, mapped to and
//! from Hugging Face's (which [`crate::layout`] maps to Ember's).
//!
//! Two layout differences matter. llama.cpp's converter permutes the rows of each query and
//! key head from HF's rotate-half order (`x₀…x₃₁ | x₃₂…x₆₃` paired across halves) to
//! interleaved pairs (`x₀x₁ | x₂x₃ …`): GGUF row `h·d + 2j + k` is HF row `h·d + k·d/2 + j`.
//! And for GPT-2 it transposes the `Conv1D` weights (`[in, out]`) to `[out, in]`.

use std::path::Path;

use ember_tokenizer::Tokenizer;
use ember_transformer::{Architecture, DecoderConfig};

use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::layout::{HostTensor, Weights};
use crate::quant::GgmlType;
use crate::{Error, Result};

/// HF's rotate-half rows of `heads` heads → GGUF's interleaved ones (`reverse` = false), or
/// back (`reverse` = true).
pub fn permute_rope_rows(t: &HostTensor, heads: usize, reverse: bool) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut values = vec![0.0; t.values.len()];
    for h in 0..heads {
        for j in 0..half {
            for k in 0..2 {
                let hf = h * head_dim + k * half + j;
                let gguf = h * head_dim + 2 * j + k;
                let (from, to) = if reverse { (gguf, hf) } else { (hf, gguf) };
                values[to * cols..(to + 1) * cols]
                    .copy_from_slice(&t.values[from * cols..(from + 1) * cols]);
            }
        }
    }
    HostTensor::new(t.shape.clone(), values)
}

/// The decoder config a GGUF file's metadata describes.
///
/// # Errors
/// [`Error::Unsupported`] for an architecture other than `llama` and `gpt2`;
/// [`Error::Metadata`] for a missing or ill-typed key.
pub fn config(file: &GgufFile) -> Result<DecoderConfig> {
    let arch = file.str("general.architecture")?;
    let architecture = match arch {
        "llama" | "qwen2" => Architecture::Llama,
        "gpt2" => Architecture::Gpt2,
        other => {
            return Err(Error::Unsupported {
                path: file.path().to_path_buf(),
                message: format!(
                    "architecture {other}: Ember builds llama, qwen2 and gpt2 models (and their \
                     look-alikes converted as llama)"
                ),
            })
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let vocab_size = match file.get(&key("vocab_size")) {
        Some(_) => file.usize(&key("vocab_size"))?,
        None => file.strings("tokenizer.ggml.tokens")?.len(),
    };
    let n_heads = file.usize(&key("attention.head_count"))?;
    let mut config = DecoderConfig::new(
        vocab_size,
        file.usize(&key("embedding_length"))?,
        file.usize(&key("block_count"))?,
        n_heads,
        file.usize(&key("context_length"))?,
    )
    .with_architecture(architecture)
    .with_d_ff(Some(file.usize(&key("feed_forward_length"))?));
    match architecture {
        Architecture::Llama => {
            let kv = match file.get(&key("attention.head_count_kv")) {
                Some(_) => file.usize(&key("attention.head_count_kv"))?,
                None => n_heads,
            };
            config = config
                .with_n_kv_heads((kv != n_heads).then_some(kv))
                .with_norm_eps(file.f64(&key("attention.layer_norm_rms_epsilon"))?)
                .with_tie_embeddings(Some(file.info("output.weight").is_none()))
                .with_qkv_bias(Some(arch == "qwen2"));
            if file.get(&key("rope.freq_base")).is_some() {
                config = config.with_rope_theta(file.f64(&key("rope.freq_base"))?);
            }
        }
        Architecture::Gpt2 => {
            config = config.with_norm_eps(file.f64(&key("attention.layer_norm_epsilon"))?);
        }
    }
    config.validate().map_err(|e| Error::Unsupported {
        path: file.path().to_path_buf(),
        message: format!("the model its metadata describes: {e}"),
    })?;
    crate::check_size(&config, file.path())?;
    // Each block has several tensors: more blocks than tensors is a corrupt count.
    if config.n_layers > file.tensors.len() {
        return Err(Error::Metadata {
            path: file.path().to_path_buf(),
            key: key("block_count"),
            message: format!(
                "{} blocks, but the file holds {} tensors",
                config.n_layers,
                file.tensors.len()
            ),
        });
    }
    Ok(config)
}

/// One GGUF tensor, its HF name, and whether it is stored transposed (GPT-2's `Conv1D`s)
/// or with permuted RoPE rows (Llama's queries: query heads; keys: key/value heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    None,
    Transpose,
    RopeRows(usize),
}

fn names(config: &DecoderConfig) -> Vec<(String, String, Fix)> {
    let mut out = Vec::new();
    let mut add = |g: String, h: String, fix| out.push((g, h, fix));
    match config.architecture {
        Architecture::Llama => {
            add(
                "token_embd.weight".into(),
                "model.embed_tokens.weight".into(),
                Fix::None,
            );
            // llama.cpp permutes the query and key rows of `llama` models only; `qwen2` (the
            // Llama shape with query/key/value biases) keeps HF's rotate-half rows.
            let rope = |heads| {
                if config.has_qkv_bias() {
                    Fix::None
                } else {
                    Fix::RopeRows(heads)
                }
            };
            for i in 0..config.n_layers {
                let (g, h) = (format!("blk.{i}."), format!("model.layers.{i}."));
                if config.has_qkv_bias() {
                    for x in ["q", "k", "v"] {
                        add(
                            format!("{g}attn_{x}.bias"),
                            format!("{h}self_attn.{x}_proj.bias"),
                            Fix::None,
                        );
                    }
                }
                for (gn, hn, fix) in [
                    ("attn_norm.weight", "input_layernorm.weight", Fix::None),
                    (
                        "attn_q.weight",
                        "self_attn.q_proj.weight",
                        rope(config.n_heads),
                    ),
                    (
                        "attn_k.weight",
                        "self_attn.k_proj.weight",
                        rope(config.kv_heads()),
                    ),
                    ("attn_v.weight", "self_attn.v_proj.weight", Fix::None),
                    ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
                    (
                        "ffn_norm.weight",
                        "post_attention_layernorm.weight",
                        Fix::None,
                    ),
                    ("ffn_gate.weight", "mlp.gate_proj.weight", Fix::None),
                    ("ffn_up.weight", "mlp.up_proj.weight", Fix::None),
                    ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
                ] {
                    add(format!("{g}{gn}"), format!("{h}{hn}"), fix);
                }
            }
            add(
                "output_norm.weight".into(),
                "model.norm.weight".into(),
                Fix::None,
            );
            if !config.tied() {
                add("output.weight".into(), "lm_head.weight".into(), Fix::None);
            }
        }
        Architecture::Gpt2 => {
            add(
                "token_embd.weight".into(),
                "transformer.wte.weight".into(),
                Fix::None,
            );
            add(
                "position_embd.weight".into(),
                "transformer.wpe.weight".into(),
                Fix::None,
            );
            for i in 0..config.n_layers {
                let (g, h) = (format!("blk.{i}."), format!("transformer.h.{i}."));
                for (gn, hn, fix) in [
                    ("attn_norm.weight", "ln_1.weight", Fix::None),
                    ("attn_norm.bias", "ln_1.bias", Fix::None),
                    ("attn_qkv.weight", "attn.c_attn.weight", Fix::Transpose),
                    ("attn_qkv.bias", "attn.c_attn.bias", Fix::None),
                    ("attn_output.weight", "attn.c_proj.weight", Fix::Transpose),
                    ("attn_output.bias", "attn.c_proj.bias", Fix::None),
                    ("ffn_norm.weight", "ln_2.weight", Fix::None),
                    ("ffn_norm.bias", "ln_2.bias", Fix::None),
                    ("ffn_up.weight", "mlp.c_fc.weight", Fix::Transpose),
                    ("ffn_up.bias", "mlp.c_fc.bias", Fix::None),
                    ("ffn_down.weight", "mlp.c_proj.weight", Fix::Transpose),
                    ("ffn_down.bias", "mlp.c_proj.bias", Fix::None),
                ] {
                    add(format!("{g}{gn}"), format!("{h}{hn}"), fix);
                }
            }
            add(
                "output_norm.weight".into(),
                "transformer.ln_f.weight".into(),
                Fix::None,
            );
            add(
                "output_norm.bias".into(),
                "transformer.ln_f.bias".into(),
                Fix::None,
            );
        }
    }
    out
}

/// The file's tensors under HF's names and in HF's layouts, decoded to `f32`. `progress`
/// is called after each tensor with (done, total).
///
/// # Errors
/// A tensor the config needs that is missing or of a type Ember cannot decode.
pub fn weights(
    file: &GgufFile,
    config: &DecoderConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Weights> {
    let names = names(config);
    let mut out = Weights::new();
    for (done, (gguf, hf, fix)) in names.iter().enumerate() {
        let (shape, values) = file.tensor(gguf)?;
        let tensor = HostTensor::new(shape, values);
        let tensor = match *fix {
            Fix::None => tensor,
            _ if tensor.shape.len() != 2 => {
                return Err(Error::Malformed {
                    path: file.path().to_path_buf(),
                    offset: 0,
                    message: format!("tensor {gguf} is {:?}, not a matrix", tensor.shape),
                })
            }
            Fix::Transpose => tensor.transposed(),
            Fix::RopeRows(heads) => {
                if !tensor.shape[0].is_multiple_of(2 * heads) {
                    return Err(Error::Shape {
                        path: file.path().to_path_buf(),
                        tensor: gguf.clone(),
                        expected: vec![heads * config.head_dim(), config.d_model],
                        found: tensor.shape,
                    });
                }
                permute_rope_rows(&tensor, heads, true)
            }
        };
        out.insert(hf.clone(), tensor);
        progress(done + 1, names.len());
    }
    Ok(out)
}

/// The tokenizer HF `transformers` builds from a GGUF file's `gpt2`-model metadata (its
/// GGUF converter): byte-level BPE over `tokenizer.ggml.tokens` and `.merges`, GPT-2's
/// pre-tokenizer without a prefix space, byte-level decoding, control and user-defined tokens
/// as special added tokens.
///
/// # Errors
/// [`Error::Unsupported`] for a tokenizer model other than `gpt2` (SentencePiece `llama`
/// vocabularies are not built yet); [`Error::Metadata`] for missing arrays.
pub fn tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let model = file.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::Unsupported {
            path: file.path().to_path_buf(),
            message: format!(
                "tokenizer model {model}: Ember builds byte-level BPE (gpt2) tokenizers from GGUF; \
                 import the Hugging Face folder instead"
            ),
        });
    }
    let tokens = file.strings("tokenizer.ggml.tokens")?;
    let merges = file.strings("tokenizer.ggml.merges")?;
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(values)) => values.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), serde_json::Value::from(id)))
        .collect::<serde_json::Map<_, _>>();
    // llama.cpp's types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let added = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| matches!(types.get(*id), Some(3 | 4)))
        .map(|(id, t)| {
            serde_json::json!({
                "id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            })
        })
        .collect::<Vec<_>>();
    let byte_level = |prefix: bool| serde_json::json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level(false),
        "post_processor": null,
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    Ok(Tokenizer::from_json(&json.to_string(), file.path())?)
}

/// Writes an Ember model (as HF tensors, see [`crate::layout::ember_to_hf`]) to a GGUF file
/// in llama.cpp's conventions: 2-D weights as `kind` (F32, F16 or Q8_0), norms and biases as
/// F32, with the tokenizer and chat template in the metadata.
///
/// # Errors
/// [`Error::Io`]; [`Error::Unsupported`] for a tokenizer that is not byte-level BPE.
pub fn write(
    path: &Path,
    config: &DecoderConfig,
    mut hf: Weights,
    tokenizer: &Tokenizer,
    chat_template: &str,
    kind: GgmlType,
) -> Result<()> {
    let mut writer = GgufWriter::default();
    let arch = match config.architecture {
        Architecture::Llama if config.has_qkv_bias() => "qwen2",
        Architecture::Llama => "llama",
        Architecture::Gpt2 => "gpt2",
    };
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |u: usize| Value::UInt(u as u64);
    writer.set("general.architecture", Value::String(arch.into()));
    writer.set("general.name", Value::String("ember".into()));
    writer.set(key("context_length"), uint(config.max_seq_len));
    writer.set(key("embedding_length"), uint(config.d_model));
    writer.set(key("block_count"), uint(config.n_layers));
    writer.set(key("feed_forward_length"), uint(config.mlp_hidden()));
    writer.set(key("attention.head_count"), uint(config.n_heads));
    match config.architecture {
        Architecture::Llama => {
            writer.set(key("attention.head_count_kv"), uint(config.kv_heads()));
            writer.set(key("rope.freq_base"), Value::Float(config.rope_theta));
            writer.set(key("rope.dimension_count"), uint(config.head_dim()));
            writer.set(
                key("attention.layer_norm_rms_epsilon"),
                Value::Float(config.norm_eps),
            );
        }
        Architecture::Gpt2 => {
            writer.set(
                key("attention.layer_norm_epsilon"),
                Value::Float(config.norm_eps),
            );
        }
    }
    writer.set(key("vocab_size"), uint(config.vocab_size));
    // The tokenizer: GPT-2's byte-level BPE as llama.cpp stores it.
    let json: serde_json::Value =
        serde_json::from_str(&tokenizer.to_json()?).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            message: "only byte-level BPE tokenizers are written to GGUF".into(),
        });
    }
    let mut tokens = vec![String::new(); config.vocab_size];
    let mut types = vec![Value::Int(1); config.vocab_size];
    if let Some(vocab) = model["vocab"].as_object() {
        for (token, id) in vocab {
            if let Some(slot) = id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
                *slot = token.clone();
            }
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = content.to_string();
                types[id as usize] = Value::Int(3);
            }
        }
    }
    // Rows of the embedding beyond the vocabulary (padding) get placeholder names.
    for (id, token) in tokens.iter_mut().enumerate() {
        if token.is_empty() {
            *token = format!("[PAD{id}]");
            types[id] = Value::Int(5);
        }
    }
    let merges = match &model["merges"] {
        serde_json::Value::Array(merges) => merges
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(pair) => pair
                    .iter()
                    .filter_map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .map(Value::String)
            .collect(),
        _ => Vec::new(),
    };
    writer.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    writer.set("tokenizer.ggml.pre", Value::String("gpt-2".into()));
    writer.set(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    writer.set("tokenizer.ggml.token_type", Value::Array(types));
    writer.set("tokenizer.ggml.merges", Value::Array(merges));
    writer.set(
        "tokenizer.chat_template",
        Value::String(chat_template.into()),
    );
    for (gguf, hf_name, fix) in names(config) {
        let tensor = hf.remove(&hf_name).expect("every tensor of the config");
        let tensor = match fix {
            Fix::None => tensor,
            Fix::Transpose => tensor.transposed(),
            Fix::RopeRows(heads) => permute_rope_rows(&tensor, heads, false),
        };
        let kind = if tensor.shape.len() == 1 {
            GgmlType::F32
        } else {
            kind
        };
        writer.tensor(gguf, &tensor.shape, &tensor.values, kind);
    }
    writer.write(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_interleaves_the_halves_and_reverses() {
        // One head of width 4, one column: HF rows [a0 a1 | b0 b1] pair (a0, b0), (a1, b1).
        let t = HostTensor::new(vec![4, 1], vec![0.0, 1.0, 2.0, 3.0]);
        let gguf = permute_rope_rows(&t, 1, false);
        assert_eq!(gguf.values, [0.0, 2.0, 1.0, 3.0]);
        assert_eq!(permute_rope_rows(&gguf, 1, true), t);
        let two_heads = HostTensor::new(vec![8, 2], (0..16).map(|v| v as f32).collect());
        let back = permute_rope_rows(&permute_rope_rows(&two_heads, 2, false), 2, true);
        assert_eq!(back, two_heads);
    }
}
