//! Generated inputs for the parsers' fuzz tests (shared by the crates' `tests/fuzz.rs` through
//! `#[path]`): JSON records built from the keys and values the readers look for, then
//! serialised as JSONL or a JSON array and sometimes cut or corrupted, and TOML tables built
//! from a settings type's own keys. The number of cases per test is `EMBER_FUZZ_CASES`
//! (256 by default; the closing note of issue 16 ran 200 000 per test).

#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Cases per fuzz test.
pub fn cases() -> u32 {
    std::env::var("EMBER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The config of every fuzz test: `cases()` cases, no regression files, no shrinking spree.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

const KEYS: &[&str] = &[
    "messages",
    "role",
    "content",
    "conversations",
    "from",
    "value",
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "chosen",
    "rejected",
    "completions",
    "ranking",
    "scores",
    "family",
    "answer",
    "text",
    "system",
    "id",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "user",
    "assistant",
    "system",
    "human",
    "gpt",
    "User",
    "\n\nHuman: hi\n\nAssistant: yo",
    "\n\nHuman: ",
    "<|user_start|>",
    "<|assistant_start|>x<|assistant_end|>",
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "2 + 2",
    "4",
    "無監督",
    "🙂",
    "\u{0}",
    "\u{feff}",
    "\\",
    "\"",
    "a\nb",
    "\t",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-3i64..8).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(STRINGS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

/// A JSON value built from the readers' keys and values.
pub fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// A record that is close to valid more often than chance would make it: a messages
/// conversation, a ranking or a pair, with random parts.
pub fn near_record() -> impl Strategy<Value = Value> {
    let role = prop::sample::select(&["user", "assistant", "system", "tool", "USER"][..]);
    let text = prop_oneof![
        prop::sample::select(STRINGS).prop_map(str::to_string),
        ".{0,8}"
    ];
    let message =
        (role, text.clone()).prop_map(|(r, c)| serde_json::json!({"role": r, "content": c}));
    let messages = prop::collection::vec(message, 0..6);
    prop_oneof![
        messages
            .clone()
            .prop_map(|m| serde_json::json!({ "messages": m })),
        (text.clone(), text.clone())
            .prop_map(|(p, c)| serde_json::json!({"prompt": p, "completion": c})),
        (
            text.clone(),
            prop::collection::vec(text.clone(), 0..5),
            prop::collection::vec(json_value(), 0..5)
        )
            .prop_map(|(p, c, r)| serde_json::json!({"prompt": p, "completions": c, "ranking": r})),
        (text.clone(), text.clone(), text.clone())
            .prop_map(|(p, c, r)| serde_json::json!({"prompt": p, "chosen": c, "rejected": r})),
        (messages.clone(), messages.clone())
            .prop_map(|(c, r)| serde_json::json!({"chosen": c, "rejected": r})),
        (messages, text.clone()).prop_map(|(p, a)| serde_json::json!({"prompt": p, "answer": a})),
        (text.clone(), text.clone(), text)
            .prop_map(|(i, n, o)| serde_json::json!({"instruction": i, "input": n, "output": o})),
    ]
}

/// How a file's text is damaged, if at all.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Left whole.
    None,
    /// Cut at this fraction of its length (on a character boundary).
    Cut(f64),
    /// This byte-position (as a fraction) replaced by this character.
    Replace(f64, char),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        2 => (0.0..1.0f64).prop_map(Damage::Cut),
        2 => (0.0..1.0f64, prop::sample::select(&['{', '}', '[', ']', '"', ',', ':', '\n', 'x', '\\'][..]))
            .prop_map(|(at, c)| Damage::Replace(at, c)),
    ]
}

fn apply(text: String, damage: &Damage) -> String {
    let at = |fraction: f64| {
        let mut i = ((text.len() as f64) * fraction) as usize;
        while i > 0 && !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match *damage {
        Damage::None => text,
        Damage::Cut(f) => text[..at(f)].to_string(),
        Damage::Replace(f, c) => {
            let i = at(f);
            let mut out = text[..i].to_string();
            out.push(c);
            let rest = &text[i..];
            let skip = rest.chars().next().map_or(0, char::len_utf8);
            out.push_str(&rest[skip..]);
            out
        }
    }
}

/// The text of a records file: JSONL or a JSON array of mostly near-valid records, perhaps
/// damaged, or any text at all.
pub fn records_text() -> impl Strategy<Value = String> {
    let record = prop_oneof![3 => near_record(), 1 => json_value()];
    prop_oneof![
        8 => (prop::collection::vec(record.clone(), 0..5), any::<bool>(), damage()).prop_map(
            |(records, array, damage)| {
                let text = if array {
                    serde_json::to_string_pretty(&Value::Array(records)).unwrap()
                } else {
                    records
                        .iter()
                        .map(|r| serde_json::to_string(r).unwrap() + "\n")
                        .collect()
                };
                apply(text, &damage)
            }
        ),
        1 => ".{0,64}",
        1 => "[\\[\\]{}\",:0-9a-z \\n]{0,64}",
    ]
}

/// A TOML document over these dotted keys (`train.optimizer.lr`): tables and keys from them,
/// values of every TOML type (NaN and infinities included), sometimes misspelt.
pub fn toml_text(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0i64..2000).prop_map(|v| v.to_string()),
        prop::sample::select(&["nan", "inf", "-inf", "0.0", "-1.5", "1e300", "0.5", "1e-9"][..])
            .prop_map(str::to_string),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        any::<bool>().prop_map(|v| v.to_string()),
        "\"[a-z_]{0,10}\"",
        Just("[]".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ kind = \"fixed\", beta = 0.1 }".to_string()),
        Just("{ kind = \"greedy\" }".to_string()),
    ];
    let line = (prop::sample::select(keys), value, 0u8..10).prop_map(|(key, value, typo)| {
        let key = if typo == 0 {
            format!("{key}x")
        } else {
            key.to_string()
        };
        // A dotted key as `[table]` then `leaf = value`, or inline as `a.b.c = value`.
        match key.rsplit_once('.') {
            Some((table, leaf)) if typo % 2 == 0 => format!("[{table}]\n{leaf} = {value}\n"),
            _ => format!("{key} = {value}\n"),
        }
    });
    prop_oneof![
        9 => prop::collection::vec(line, 0..8).prop_map(|lines| lines.concat()),
        1 => ".{0,48}",
    ]
}
