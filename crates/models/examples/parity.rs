//! Ember against a reference written by `scripts/parity/reference.py` (HF `transformers` on the
//! same model): logits, greedy continuations and token ids.
//!
//! ```text
//! cargo run --release -p ember-models --example parity -- MODEL REFERENCE.json
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use ember_instruct::{ChatTemplate, Conversation, Message, Role};
use ember_transformer::{generate, GenerateConfig};

/// A JSON array of token ids.
fn token_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = std::env::args().skip(1).collect::<Vec<_>>();
    let [model, reference] = args.as_slice() else {
        anyhow::bail!("usage: parity MODEL REFERENCE.json");
    };
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(reference)?)?;
    let device = Default::default();
    let started = Instant::now();
    let imported = ember_models::import::<Flex>(&PathBuf::from(model), &device, |_, _| {})?;
    println!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    let spec = imported.template.clone().expect("a chat model");
    let template = ChatTemplate::with_spec(imported.tokenizer.clone(), spec)?;
    let mut worst = 0f32;
    let mut all_greedy = true;
    for case in reference["cases"].as_array().unwrap() {
        let messages = case["conversation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let role = match m["role"].as_str().unwrap() {
                    "system" => Role::System,
                    "user" => Role::User,
                    _ => Role::Assistant,
                };
                Message {
                    role,
                    content: m["content"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        let ids = template.render_prompt(&Conversation::new(messages))?;
        let expected_ids = token_ids(&case["ids"]);
        let same_prompt = ids == expected_ids;
        let n = expected_ids.len();
        let tokens = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(expected_ids.iter().map(|&i| i64::from(i)).collect(), [1, n]),
            &device,
        );
        let logits = imported.decoder.forward(tokens);
        let vocab = logits.dims()[2];
        let last = logits
            .clone()
            .narrow(1, n - 1, 1)
            .reshape([vocab])
            .into_data()
            .to_vec::<f32>()?;
        let diff = case["last_logits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&last)
            .map(|(r, e)| (r.as_f64().unwrap() as f32 - e).abs())
            .fold(0f32, f32::max);
        let argmax = logits
            .argmax(2)
            .reshape([n])
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()?;
        let same_argmax = case["argmax"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&argmax)
            .filter(|(r, e)| r.as_i64().unwrap() == **e)
            .count();
        let config = GenerateConfig {
            max_new_tokens: 32,
            stop_tokens: vec![template.stop_token(), template.eos_token()],
            pad_token: template.pad_token(),
            ..Default::default()
        };
        let started = Instant::now();
        let generated = generate(
            &imported.decoder,
            std::slice::from_ref(&expected_ids),
            &config,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let expected_greedy = token_ids(&case["greedy"]);
        // transformers keeps generating to 32 tokens only until its own eos.
        let ours = &generated[0].tokens;
        let same_greedy = ours[..] == expected_greedy[..ours.len().min(expected_greedy.len())];
        all_greedy &= same_greedy;
        worst = worst.max(diff);
        println!(
            "prompt ids equal: {same_prompt}; last-position logits max |Δ| {diff:.2e}; argmax equal at {same_argmax}/{n} positions; greedy equal: {same_greedy} ({} tokens, {:.1} tokens/s)\n  {:?}",
            ours.len(),
            ours.len() as f64 / seconds,
            template.tokenizer().decode_skip_special(generated[0].content())?
        );
    }
    let mut equal = 0;
    let texts = reference["tokens"].as_array().unwrap();
    for t in texts {
        let ids = imported.tokenizer.encode(t["text"].as_str().unwrap())?;
        let expected = token_ids(&t["ids"]);
        if ids == expected {
            equal += 1;
        } else {
            println!(
                "tokenisation differs: {:?}\n  ours {ids:?}\n  ref  {expected:?}",
                t["text"]
            );
        }
    }
    println!(
        "worst last-position logit difference {worst:.2e}; greedy continuations all equal: {all_greedy}; tokenisation equal on {equal}/{} texts",
        texts.len()
    );
    Ok(())
}
