//! Tiny random models written by `transformers` and the `gguf` package
//! (`fixtures/make_fixtures.py`): Ember's logits against `transformers`' own, round trips
//! through Ember's writers, and typed errors for damaged files.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use ember_models::{export_gguf, export_hf, import, Error, GgmlType, Imported};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids() -> Vec<i64> {
    reference()["ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn load(path: &Path) -> Imported<B> {
    import::<B>(path, &Default::default(), |_, _| {}).unwrap()
}

fn logits(model: &Imported<B>) -> Vec<f32> {
    let ids = ids();
    let tokens = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.clone(), [1, ids.len()]),
        &Default::default(),
    );
    model
        .decoder
        .forward(tokens)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn reference_logits(name: &str) -> Vec<f32> {
    reference()["models"][name]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

const MODELS: [&str; 8] = [
    "llama-gqa",
    "gpt2",
    "qwen2",
    "llama-gqa-f32.gguf",
    "llama-gqa-q8_0.gguf",
    "llama-gqa-q4_1.gguf",
    "qwen2-f32.gguf",
    "gpt2-f32.gguf",
];

#[test]
fn logits_match_transformers_on_every_fixture() {
    for name in MODELS {
        let model = load(&fixture(name));
        let difference = max_difference(&logits(&model), &reference_logits(name));
        // The reference is rounded to 6 significant digits of values below 1.
        assert!(difference < 2e-5, "{name}: logits differ by {difference}");
        assert_eq!(
            model.template.as_ref().map(|t| t.name.as_str()),
            Some("chatml"),
            "{name}"
        );
    }
    let gqa = load(&fixture("llama-gqa"));
    let config = gqa.decoder.config();
    assert_eq!((config.n_heads, config.kv_heads()), (4, 2));
    // transformers 5 writes the base in `rope_parameters`: 1e5, not the default 1e4.
    assert_eq!(config.rope_theta, 1e5);
    let qwen2 = load(&fixture("qwen2"));
    assert!(qwen2.decoder.config().has_qkv_bias());
    assert_eq!(qwen2.decoder.config().rope_theta, 1e6);
}

#[test]
fn the_gguf_tokenizer_is_the_folders() {
    let from_gguf = load(&fixture("llama-gqa-q4_1.gguf")).tokenizer;
    let from_folder = load(&fixture("gpt2")).tokenizer;
    for text in [
        "The capital of France is Paris.",
        "def add(a, b):\n    return a + b\n",
        "无监督训练 🦀 and   spaces\t\n",
        "<|im_start|>user\nnot a marker<|im_end|>",
    ] {
        let ids = from_gguf.encode(text).unwrap();
        assert_eq!(ids, from_folder.encode(text).unwrap(), "{text:?}");
        assert_eq!(from_gguf.decode(&ids).unwrap(), text);
    }
    assert_eq!(from_gguf.token_id("<|im_end|>").unwrap(), 2);
}

#[test]
fn export_then_import_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama-gqa", "gpt2", "qwen2"] {
        let model = load(&fixture(name));
        let before = logits(&model);
        let out = dir.path().join(name);
        export_hf(
            &model.decoder,
            &model.tokenizer,
            model.template.as_ref(),
            &out,
        )
        .unwrap();
        let again = load(&out);
        assert_eq!(
            logits(&again),
            before,
            "{name} through a Hugging Face folder"
        );
        assert_eq!(again.template, model.template);
        let gguf = dir.path().join(format!("{name}.gguf"));
        export_gguf(
            &model.decoder,
            &model.tokenizer,
            model.template.as_ref(),
            &gguf,
            GgmlType::F32,
        )
        .unwrap();
        let again = load(&gguf);
        assert_eq!(logits(&again), before, "{name} through an F32 GGUF");
        assert_eq!(again.template, model.template);
    }
    // Q8_0 values re-quantise to themselves: the blocks' scales are recovered exactly.
    let q8 = load(&fixture("llama-gqa-q8_0.gguf"));
    let path = dir.path().join("again-q8_0.gguf");
    export_gguf(
        &q8.decoder,
        &q8.tokenizer,
        q8.template.as_ref(),
        &path,
        GgmlType::Q8_0,
    )
    .unwrap();
    assert_eq!(logits(&load(&path)), logits(&q8));
    // F16 and Q8_0 of the F32 model stay close to it.
    let f32_model = load(&fixture("llama-gqa"));
    for kind in [GgmlType::F16, GgmlType::Q8_0] {
        let path = dir.path().join(format!("{kind:?}.gguf"));
        export_gguf(
            &f32_model.decoder,
            &f32_model.tokenizer,
            f32_model.template.as_ref(),
            &path,
            kind,
        )
        .unwrap();
        let difference = max_difference(&logits(&load(&path)), &logits(&f32_model));
        assert!(difference < 2e-2, "{kind:?}: {difference}");
    }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn import_error(path: &Path) -> Error {
    match import::<B>(path, &Default::default(), |_, _| {}) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn damaged_files_are_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A GGUF cut anywhere.
    let bytes = std::fs::read(fixture("llama-gqa-q4_1.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    for len in (4..bytes.len()).step_by(97) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let error = import_error(&cut);
        assert!(
            matches!(error, Error::Malformed { .. }),
            "{len} bytes: {error}"
        );
        assert!(error.to_string().contains("cut.gguf"), "{error}");
    }
    // A safetensors file cut short.
    let folder = dir.path().join("llama");
    copy_folder(&fixture("llama-gqa"), &folder);
    let weights = folder.join("model.safetensors");
    let full = std::fs::read(&weights).unwrap();
    for len in [0, 7, 100, full.len() / 2, full.len() - 1] {
        std::fs::write(&weights, &full[..len]).unwrap();
        let error = import_error(&folder);
        assert!(matches!(error, Error::Safetensors { .. }), "{len}: {error}");
        assert!(error.to_string().contains("model.safetensors"), "{error}");
    }
    std::fs::write(&weights, &full).unwrap();
    // A config whose shapes do not fit the weights.
    let config_path = folder.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let error = import_error(&folder);
    assert!(
        matches!(&error, Error::Shape { tensor, .. } if tensor.contains("gate_proj")),
        "{error}"
    );
    // A config that is not JSON: the line is named.
    std::fs::write(&config_path, "{\n  \"model_type\": \"llama\",\n  oops\n}").unwrap();
    let error = import_error(&folder);
    assert!(matches!(error, Error::Json { .. }), "{error}");
    assert!(error.to_string().contains("line 3"), "{error}");
    // A model type Ember does not build.
    std::fs::write(&config_path, config.replace("\"llama\"", "\"mamba\"")).unwrap();
    assert!(matches!(import_error(&folder), Error::Unsupported { .. }));
    // Neither a GGUF nor a folder.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    assert!(matches!(import_error(&text), Error::Unsupported { .. }));
    assert!(matches!(
        import_error(&dir.path().join("missing")),
        Error::Io { .. }
    ));
}

#[test]
fn a_k_quant_tensor_is_named_with_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("llama-gqa-q8_0.gguf")).unwrap();
    // Tensor "blk.0.attn_q.weight": name, then n_dims (u32), 2 dims (u64), then its type.
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let kind = at + 4 + 16;
    assert_eq!(
        bytes[kind..kind + 4],
        8u32.to_le_bytes(),
        "Q8_0 before the patch"
    );
    bytes[kind..kind + 4].copy_from_slice(&12u32.to_le_bytes());
    let path = dir.path().join("k-quant.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let error = import_error(&path);
    let text = error.to_string();
    assert!(matches!(error, Error::UnsupportedType { .. }), "{text}");
    assert!(
        text.contains("Q4_K") && text.contains("blk.0.attn_q.weight"),
        "{text}"
    );
}
