//! Fuzzing the rankings reader (K-way, pairs, TRL's messages variants, HH-RLHF): for any file
//! text it returns rankings or typed errors naming the file and a line, never panics; each
//! ranking it accepts is well formed and its prompt renders.

#[path = "../../instruct/tests/support/fuzz.rs"]
mod fuzz;

use std::path::Path;
use std::sync::OnceLock;

use ember_instruct::{ChatTemplate, OnError};
use ember_reward::{parse_rankings, Error};
use ember_tokenizer::{BpeConfig, Tokenizer};
use proptest::prelude::*;

fn template() -> &'static ChatTemplate {
    static TEMPLATE: OnceLock<ChatTemplate> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bpe = BpeConfig {
            vocab_size: 300,
            ..Default::default()
        };
        ChatTemplate::new(Tokenizer::train_from_texts(&["a b c 2 + 2 = 4"], &bpe).unwrap()).unwrap()
    })
}

/// A pair or a ranking, with HH-RLHF transcripts among them.
fn rankings_text() -> impl Strategy<Value = String> {
    let turn = prop_oneof![
        Just("\n\nHuman: hi"),
        Just("\n\nAssistant: yo"),
        Just("\n\nHuman: "),
        Just("\n\nAssistant:"),
        Just(" more"),
    ];
    let hh = prop::collection::vec(turn, 0..6).prop_map(|t| t.concat());
    let hh_pair = (hh.clone(), hh).prop_map(|(c, r)| {
        serde_json::to_string(&serde_json::json!({"chosen": c, "rejected": r})).unwrap() + "\n"
    });
    prop_oneof![
        4 => fuzz::records_text(),
        1 => prop::collection::vec(hh_pair, 0..4).prop_map(|l| l.concat()),
    ]
}

proptest! {
    #![proptest_config(fuzz::config())]

    #[test]
    fn rankings_never_panic_and_what_they_accept_is_well_formed(text in rankings_text()) {
        let path = Path::new("fuzz.jsonl");
        let lines = text.lines().count().max(1);
        if let Err(error) = parse_rankings(path, &text, OnError::Stop) {
            prop_assert!(error.to_string().contains("fuzz.jsonl"), "{error}");
        }
        if let Ok(parsed) = parse_rankings(path, &text, OnError::Skip) {
            for e in &parsed.skipped {
                match e {
                    Error::BadRecord { line, .. } => prop_assert!(*line >= 1 && *line <= lines + 1),
                    other => prop_assert!(false, "{other}"),
                }
            }
            for ranking in &parsed.rankings {
                let k = ranking.completions.len();
                prop_assert!(k >= 2);
                for (better, worse) in ranking.pairs() {
                    prop_assert!(better < k && worse < k && better != worse);
                }
                if let Some(scores) = &ranking.scores {
                    prop_assert_eq!(scores.len(), k);
                }
                prop_assert!(template().render_prompt(&ranking.prompt).is_ok());
            }
        }
    }
}
