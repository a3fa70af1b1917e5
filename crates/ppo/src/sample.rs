//! What PPO samples: prompts, the answers with everything the updates need per token, and
//! their right-padded layout as next-token targets.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::Result;

/// A prompt PPO samples answers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Its rendered ids, ending where the answer starts.
    pub ids: Vec<u32>,
    /// The text a judge reads.
    pub text: String,
    /// The task family, when known.
    pub family: Option<String>,
}

/// A program that scores an answer to a prompt, independent of the reward model (the built-in
/// tasks' judge), to check that what the reward model likes is really better.
pub type Judge = Box<dyn Fn(&Prompt, &str) -> Option<f64>>;

/// Turns answer tokens into text.
pub type Decode = Box<dyn Fn(&[u32]) -> Result<String>>;

/// One sampled answer with everything the updates need, per answer token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index of the prompt in the run's prompt list.
    pub prompt: usize,
    /// Prompt ids followed by the answer's tokens (its end marker included if it has one).
    pub row: Vec<u32>,
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Whether the answer ended with a stop token rather than the length limit.
    pub finished: bool,
    /// The answer's text.
    pub answer: String,
    /// The reward model's normalised score.
    pub score: f64,
    /// The score PPO optimises (penalty, clipping).
    pub shaped: f64,
    /// Per answer token: log-probability under the sampling policy.
    pub old_logp: Vec<f64>,
    /// Per answer token: log-probability under the reference.
    pub ref_logp: Vec<f64>,
    /// Per answer token: the critic's value.
    pub values: Vec<f64>,
    /// Per answer token: the KL estimate.
    pub kl: Vec<f64>,
    /// Per answer token: the advantage (whitened over the batch).
    pub advantages: Vec<f64>,
    /// Per answer token: the return.
    pub returns: Vec<f64>,
    /// Per answer token: the policy's entropy.
    pub entropy: Vec<f64>,
    /// The judge's score, if there is a judge.
    pub judge: Option<f64>,
}

/// Right-padded rows and their answer tokens laid out as next-token targets: entry t of a row
/// is about token t + 1.
pub(crate) struct PaddedRows<B: Backend> {
    pub(crate) tokens: Tensor<B, 2, Int>,
    pub(crate) seq: usize,
}

pub(crate) fn padded_rows<B: Backend>(
    samples: &[&Sample],
    pad: u32,
    device: &B::Device,
) -> PaddedRows<B> {
    let seq = samples.iter().map(|s| s.row.len()).max().unwrap_or(2);
    let mut ids = Vec::with_capacity(samples.len() * seq);
    for s in samples {
        ids.extend(s.row.iter().map(|&t| i64::from(t)));
        ids.extend(std::iter::repeat_n(i64::from(pad), seq - s.row.len()));
    }
    PaddedRows {
        tokens: Tensor::from_data(TensorData::new(ids, [samples.len(), seq]), device),
        seq,
    }
}

/// Spreads each sample's per-answer-token `values` (one slice per sample) over the `[batch, seq − 1]` target layout
/// (answer token j of a sample sits at entry `prompt_len − 1 + j`), zero elsewhere.
pub fn spread(samples: &[&Sample], seq: usize, values: &[&[f64]]) -> Vec<f32> {
    let width = seq - 1;
    let mut out = vec![0.0f32; samples.len() * width];
    for (row, (s, values)) in samples.iter().zip(values).enumerate() {
        let start = row * width + s.prompt_len - 1;
        for (j, v) in values.iter().enumerate() {
            out[start + j] = *v as f32;
        }
    }
    out
}

/// 1 at the answer tokens of the `[batch, seq − 1]` target layout (see [`spread`]), 0 at the
/// prompt and the padding.
pub fn answer_mask(samples: &[&Sample], seq: usize) -> Vec<f32> {
    let width = seq - 1;
    let mut out = vec![0.0f32; samples.len() * width];
    for (row, s) in samples.iter().enumerate() {
        let start = row * width + s.prompt_len - 1;
        out[start..start + s.row.len() - s.prompt_len].fill(1.0);
    }
    out
}

pub(crate) fn gather_answers<B: Backend>(
    per_position: Tensor<B, 2>,
    samples: &[&Sample],
) -> Vec<Vec<f64>> {
    let [_, width] = per_position.dims();
    let flat = per_position.into_data().to_vec::<f32>().expect("floats");
    samples
        .iter()
        .enumerate()
        .map(|(row, s)| {
            let start = row * width + s.prompt_len - 1;
            let n = s.row.len() - s.prompt_len;
            flat[start..start + n]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        })
        .collect()
}
