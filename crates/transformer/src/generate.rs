//! Batched generation with the KV cache.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::{Decoder, Error, KvCache, Result, Sampler, Sampling};

/// Configuration for [`generate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateConfig {
    /// At most this many new tokens per prompt (fewer if the context fills up).
    pub max_new_tokens: usize,
    /// How each token is drawn.
    pub sampling: Sampling,
    /// Generation of a row stops after it produces one of these (kept in its output).
    pub stop_tokens: Vec<u32>,
    /// Token used to left-pad shorter prompts; it is masked out, so any id works, but the
    /// tokenizer's pad token keeps dumps readable.
    pub pad_token: u32,
    /// Seed of the draws; row `b` uses `seed + b`, so a row's draws do not depend on the
    /// other rows.
    pub seed: u64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            pad_token: 0,
            seed: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It produced a stop token.
    Stop,
    /// It reached `max_new_tokens` or the end of the context.
    Length,
}

/// The new tokens of one prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// New tokens, the stop token included when there is one.
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
}

impl Generation {
    /// The answer's own tokens: `tokens` without the stop token that ended it, if one did
    /// (generation stops at the first, so it can only be the last).
    pub fn content(&self) -> &[u32] {
        match (self.finish, self.tokens.split_last()) {
            (FinishReason::Stop, Some((_, before))) => before,
            _ => &self.tokens,
        }
    }
}

/// Continues every prompt; see [`generate_streaming`].
///
/// # Errors
/// As [`generate_streaming`].
pub fn generate<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
) -> Result<Vec<Generation>> {
    generate_streaming(model, prompts, config, |_, _| {})
}

/// Continues every prompt, calling `on_token(row, token)` as each token is drawn. Prompts of
/// different lengths are left-padded and share one KV cache.
///
/// # Errors
/// An empty prompt list or prompt, a token outside the vocabulary, a prompt that fills the
/// context, or invalid sampling parameters.
pub fn generate_streaming<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    let model_config = model.config();
    let (vocab_size, max_seq_len) = (model_config.vocab_size, model_config.max_seq_len);
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Input(
            "generation needs at least one prompt, none of them empty".into(),
        ));
    }
    if let Some(&id) = prompts
        .iter()
        .flatten()
        .find(|&&id| id as usize >= vocab_size)
    {
        return Err(Error::TokenOutOfRange { id, vocab_size });
    }
    let longest = prompts.iter().map(Vec::len).max().expect("non-empty");
    if longest >= max_seq_len {
        return Err(Error::TooLong {
            len: longest + 1,
            max: max_seq_len,
        });
    }
    let mut samplers = (0..prompts.len())
        .map(|row| Sampler::new(config.sampling, config.seed.wrapping_add(row as u64)))
        .collect::<Result<Vec<_>>>()?;

    let device = model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let batch = prompts.len();
    let padding = prompts
        .iter()
        .map(|p| longest - p.len())
        .collect::<Vec<_>>();
    let mut cache = KvCache::with_left_padding(model_config.n_layers, padding.clone());
    let mut input = prompts
        .iter()
        .zip(&padding)
        .flat_map(|(prompt, &pad)| {
            std::iter::repeat_n(config.pad_token, pad)
                .chain(prompt.iter().copied())
                .map(i64::from)
        })
        .collect::<Vec<_>>();
    let mut input_len = longest;
    let steps = config.max_new_tokens.min(max_seq_len - longest);
    let mut outputs = vec![
        Generation {
            tokens: Vec::new(),
            finish: FinishReason::Length
        };
        batch
    ];
    let mut done = vec![false; batch];

    for _ in 0..steps {
        let tokens =
            Tensor::<B, 2, Int>::from_data(TensorData::new(input, [batch, input_len]), &device);
        let logits = model.forward_cached(tokens, &mut cache);
        let last = logits
            .narrow(1, input_len - 1, 1)
            .reshape([batch, vocab_size]);
        let last = last.into_data().to_vec::<f32>().expect("float logits");
        input = Vec::with_capacity(batch);
        for row in 0..batch {
            if done[row] {
                input.push(i64::from(config.pad_token));
                continue;
            }
            let token = samplers[row].sample(&last[row * vocab_size..(row + 1) * vocab_size]);
            on_token(row, token);
            outputs[row].tokens.push(token);
            if config.stop_tokens.contains(&token) {
                outputs[row].finish = FinishReason::Stop;
                done[row] = true;
            }
            input.push(i64::from(token));
        }
        input_len = 1;
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(outputs)
}

#[cfg(test)]
mod content_tests {
    use super::*;

    #[test]
    fn content_drops_only_the_stop_token_that_ended_the_answer() {
        let stopped = Generation {
            tokens: vec![5, 6, 1],
            finish: FinishReason::Stop,
        };
        assert_eq!(stopped.content(), &[5, 6]);
        let cut = Generation {
            tokens: vec![5, 6, 1],
            finish: FinishReason::Length,
        };
        assert_eq!(cut.content(), &[5, 6, 1]);
        let empty = Generation {
            tokens: vec![],
            finish: FinishReason::Length,
        };
        assert!(empty.content().is_empty());
    }
}
