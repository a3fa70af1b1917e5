//! `tokenizer.json` in HF's own format, both ways. The golden ids come from Python's
//! `tokenizers` (`fixtures/hf/make_expected.py`, which says how each file was made).

use std::path::PathBuf;

use ember_tokenizer::{Special, Tokenizer};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn check_ids(tokenizer: &Tokenizer, cases: &Value) {
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect::<Vec<_>>();
        assert_eq!(tokenizer.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
}

#[test]
fn a_file_ember_wrote_gives_the_ids_python_gives() {
    let tokenizer = Tokenizer::from_file(fixture("ember-tokenizer.json")).unwrap();
    check_ids(&tokenizer, &expected()["ember"]);
    assert_eq!(tokenizer.special(Special::Eos).unwrap(), 1);
}

#[test]
fn ember_still_writes_that_format() {
    // Saving the loaded file again gives the same JSON: Ember writes what it reads.
    let tokenizer = Tokenizer::from_file(fixture("ember-tokenizer.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    tokenizer.save(dir.path().join("again.json")).unwrap();
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("ember-tokenizer.json")).unwrap())
            .unwrap();
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("again.json")).unwrap())
            .unwrap();
    assert_eq!(original, again);
    assert_eq!(again["pre_tokenizer"]["type"], "ByteLevel");
    assert_eq!(again["model"]["type"], "BPE");
}

#[test]
fn a_gpt2_layout_file_loads_and_gets_embers_special_tokens() {
    let mut tokenizer = Tokenizer::from_file(fixture("gpt2-layout-tokenizer.json")).unwrap();
    let expected = expected();
    check_ids(&tokenizer, &expected["gpt2_layout"]);
    let vocab = expected["gpt2_layout_vocab_size"].as_u64().unwrap() as usize;
    assert_eq!(tokenizer.vocab_size(), vocab);
    assert!(matches!(
        tokenizer.special(Special::Pad),
        Err(ember_tokenizer::Error::UnknownSpecialToken { .. })
    ));
    assert_eq!(tokenizer.add_missing_special_tokens(), Special::ALL.len());
    // Added after the existing ids, which keep their meaning.
    assert_eq!(tokenizer.special(Special::Bos).unwrap() as usize, vocab);
    assert_eq!(tokenizer.vocab_size(), vocab + Special::ALL.len());
    // Its string in text stays text; the id is there for the code that inserts it.
    let pad = tokenizer.special(Special::Pad).unwrap();
    assert_eq!(tokenizer.token_id("<|pad|>").unwrap(), pad);
    assert!(!tokenizer.encode("<|pad|>").unwrap().contains(&pad));
    assert!(!tokenizer.encode("<|endoftext|>").unwrap().contains(&0));
    assert_eq!(tokenizer.token_id("<|endoftext|>").unwrap(), 0);
    assert_eq!(tokenizer.add_missing_special_tokens(), 0);
}

#[test]
fn a_damaged_file_is_a_typed_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, ember_tokenizer::Error::Tokenizer { .. }));
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
