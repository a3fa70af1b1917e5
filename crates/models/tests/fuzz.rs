//! Damaged model files, generated: random byte changes and cuts of the fixtures' GGUF files,
//! safetensors headers and `config.json`s. Each import ends in a model or a typed error —
//! never a panic, never a huge allocation. `EMBER_FUZZ_CASES` sets the cases per test
//! (default 64).

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cases() -> u32 {
    std::env::var("EMBER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Imports `path`; only a panic fails (an error or a model are both fine).
fn survives(path: &Path) {
    let _ = ember_models::import::<Flex>(path, &Default::default(), |_, _| {});
}

/// Byte changes biased to the header, where lengths, counts, types and offsets live.
fn mutations(len: usize, header: usize) -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec(
        (
            prop_oneof![3 => 0..header.min(len), 1 => 0..len],
            any::<u8>(),
        ),
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn damaged_gguf_files_never_panic(
        changes in mutations(37_280, 12_000),
        cut in prop::option::of(0usize..37_280),
    ) {
        let mut bytes = std::fs::read(fixture("llama-gqa-q8_0.gguf")).unwrap();
        let len = bytes.len();
        for (at, value) in changes {
            bytes[at % len] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        survives(&path);
    }

    #[test]
    fn damaged_hf_folders_never_panic(
        changes in mutations(114_808, 600),
        config_edit in (0usize..700, any::<u8>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            std::fs::copy(fixture("llama-gqa").join(name), dir.path().join(name)).unwrap();
        }
        let weights = dir.path().join("model.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap();
        let len = bytes.len();
        for (at, value) in changes {
            bytes[at % len] = value;
        }
        std::fs::write(&weights, &bytes).unwrap();
        let config = dir.path().join("config.json");
        let mut text = std::fs::read(&config).unwrap();
        let at = config_edit.0 % text.len();
        text[at] = config_edit.1;
        std::fs::write(&config, &text).unwrap();
        survives(dir.path());
    }
}
