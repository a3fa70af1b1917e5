//! Fuzzing the settings files and `model.json`: any TOML text over the pipeline's own keys
//! (and misspelt ones, NaN, infinities, wrong types) parses into settings or gives a typed error
//! naming the file, and settings that parse are validated without a panic; any `model.json`
//! gives a config or an error, and a config that validates builds.

#[path = "../../instruct/tests/support/fuzz.rs"]
mod fuzz;

use std::path::Path;
use std::sync::OnceLock;

use ember_pipeline::settings::parse;
use ember_pipeline::{Error, PipelineSettings, PpoSettings, SftSettings};
use ember_transformer::DecoderConfig;
use proptest::prelude::*;

fn dotted(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (key, v) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.push(path.clone());
            dotted(v, &path, out);
        }
    }
}

/// Every key of the pipeline's settings, as dotted paths.
fn keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut out = Vec::new();
        dotted(
            &toml::Value::try_from(PipelineSettings::default()).unwrap(),
            "",
            &mut out,
        );
        out.into_iter()
            .map(|k| &*Box::leak(k.into_boxed_str()))
            .collect()
    })
}

fn model_json() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u64..600).prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(-0.5)),
        Just(serde_json::json!("64")),
        Just(serde_json::Value::Null),
    ];
    let key = prop::sample::select(
        &[
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "max_seq_len",
            "architecture",
            "d_ff",
            "norm_eps",
            "rope_theta",
            "init_std",
            "n_kv_heads",
            "typo",
        ][..],
    );
    let architecture = prop::sample::select(&["llama", "gpt2", "Llama", ""][..]);
    (
        prop::collection::vec((key, number), 0..12),
        architecture,
        any::<bool>(),
    )
        .prop_map(|(pairs, architecture, with_architecture)| {
            let mut map = serde_json::to_value(DecoderConfig::new(40, 8, 1, 2, 8)).unwrap();
            for (k, v) in pairs {
                map[k] = v;
            }
            if with_architecture {
                map["architecture"] = architecture.into();
            }
            map.to_string()
        })
}

proptest! {
    #![proptest_config(fuzz::config())]

    #[test]
    fn any_settings_file_parses_or_names_the_file(text in fuzz::toml_text(keys())) {
        let path = Path::new("fuzz.toml");
        match parse::<PipelineSettings>(&text, path) {
            Ok(settings) => {
                // Valid or not, never a panic; and what validates has only finite numbers.
                if settings.validate().is_ok() {
                    let toml = toml::to_string(&settings).unwrap();
                    prop_assert!(!toml.contains("nan") && !toml.contains("inf"), "{toml}");
                }
            }
            Err(e) => prop_assert!(
                matches!(e, Error::Toml { .. } | Error::Config(_)) && e.to_string().contains("fuzz.toml")
                    || matches!(e, Error::Config(_)),
                "{e}"
            ),
        }
        // The stages' own files read the same tables.
        let _ = parse::<SftSettings>(&text, path);
        let _ = parse::<PpoSettings>(&text, path);
    }

    #[test]
    fn any_model_json_gives_a_config_or_an_error(text in model_json()) {
        if let Ok(config) = serde_json::from_str::<DecoderConfig>(&text) {
            if config.validate().is_ok() {
                // Small enough to build here: it builds.
                let d = config.d_model as u128;
                let ff = config.d_ff.map_or(4 * d, |f| f as u128);
                let params = config.vocab_size as u128 * d
                    + config.n_layers as u128 * (4 * d * d + 3 * d * ff);
                if params < 1 << 20 && config.max_seq_len <= 4096 {
                    let model = config.init::<burn::backend::Flex>(&Default::default());
                    prop_assert!(model.is_ok(), "{text}: {:?}", model.err());
                }
            }
        }
    }
}
