//! The reward model: the transformer trunk with a scalar head, read at the last real token
//! of prompt + answer, plus (optionally) a learned multiple of the answer's mean
//! log-likelihood under the trunk's own language-model head; its normalisation; its files.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use ember_train::{integrity, load_model_config, save_record};
use ember_transformer::{Decoder, DecoderInput, Positions};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which side of a batch's shorter rows the padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// After the tokens (training): positions start at 0 everywhere, and causality alone
    /// keeps the padding out of sight.
    Right,
    /// Before the tokens (as generation lays out a batch): a mask hides the padding and
    /// positions start at each row's first real token.
    Left,
}

/// Token rows on the device, with the index of each row's last real token.
#[derive(Debug, Clone)]
pub struct ScoreBatch<B: Backend> {
    /// The forward's input.
    pub input: DecoderInput<B>,
    /// `[batch]`: where each row's last real token is.
    pub last: Tensor<B, 1, Int>,
}

impl<B: Backend> ScoreBatch<B> {
    /// Pads `rows` with `pad` on the `padding` side.
    ///
    /// # Errors
    /// No rows, or an empty row.
    pub fn new(
        rows: &[Vec<u32>],
        pad: u32,
        padding: Padding,
        n_heads: usize,
        device: &B::Device,
    ) -> Result<Self> {
        if rows.is_empty() || rows.iter().any(Vec::is_empty) {
            return Err(Error::Config(
                "a score batch needs rows of at least one token".into(),
            ));
        }
        let batch = rows.len();
        let seq = rows.iter().map(Vec::len).max().expect("rows");
        let mut tokens = Vec::with_capacity(batch * seq);
        let mut last = Vec::with_capacity(batch);
        for row in rows {
            let fill = std::iter::repeat_n(i64::from(pad), seq - row.len());
            let ids = row.iter().map(|&t| i64::from(t));
            match padding {
                Padding::Right => {
                    tokens.extend(ids.chain(fill));
                    last.push(row.len() as i64 - 1);
                }
                Padding::Left => {
                    tokens.extend(fill.chain(ids));
                    last.push(seq as i64 - 1);
                }
            }
        }
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [batch, seq]), device);
        let last = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [batch]), device);
        let (positions, mask) = match padding {
            Padding::Right => (Positions::Contiguous { start: 0 }, None),
            Padding::Left => {
                let mut positions = Vec::with_capacity(batch * seq);
                let mut hidden = Vec::with_capacity(batch * seq * seq);
                for row in rows {
                    let pad = seq - row.len();
                    positions.extend((0..seq).map(|t| t.saturating_sub(pad) as i64));
                    for query in 0..seq {
                        // A padding query sees the first padding token, so no softmax row is
                        // empty; a real query sees no padding.
                        hidden.extend((0..seq).map(|key| key < pad && (query >= pad || key != 0)));
                    }
                }
                let positions = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(positions, [batch, seq]),
                    device,
                );
                let mask = Tensor::<B, 4, Bool>::from_data(
                    TensorData::new(hidden, [batch, 1, seq, seq]),
                    device,
                )
                .expand([batch, n_heads, seq, seq]);
                (Positions::PerToken(positions), Some(mask))
            }
        };
        Ok(Self {
            input: DecoderInput {
                tokens,
                positions,
                mask,
            },
            last,
        })
    }
}

/// The likelihood term of a reward model: `weight ×` the mean log-probability of the answer's
/// tokens (and the turn's end) under the trunk's language-model head. The answer is what
/// follows the row's last `answer_start` token.
#[derive(Module, Debug)]
pub struct Likelihood<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    answer_start: u32,
}

/// The transformer with a scalar head: a reward model, or a critic (PPO's value model).
#[derive(Module, Debug)]
pub struct RewardModel<B: Backend> {
    trunk: Decoder<B>,
    head: Linear<B>,
    likelihood: Option<Likelihood<B>>,
}

/// The head's initial standard deviation by lm-human-preferences' rule, 1/√(d_model + 1): the
/// initial scores are small and do not depend on the width.
pub fn default_head_std(d_model: usize) -> f64 {
    1.0 / ((d_model + 1) as f64).sqrt()
}

impl<B: Backend> RewardModel<B> {
    /// A scalar head with weights from N(0, `head_std`²) and a zero bias on top of `trunk`
    /// (an SFT model, typically).
    pub fn new(trunk: Decoder<B>, head_std: f64) -> Self {
        let device = trunk
            .devices()
            .into_iter()
            .next()
            .expect("a model lives on a device");
        let head = ember_transformer::linear(trunk.config().d_model, 1, true, head_std, &device);
        ember_transformer::materialize(Self {
            trunk,
            head,
            likelihood: None,
        })
    }

    /// The same model with a likelihood term of initial `weight`: the score adds `weight ×`
    /// the answer's mean log-probability under the trunk's own language-model head, the
    /// answer being the tokens after the row's last `answer_start` token (the chat template's
    /// [`answer_start_token`](ember_instruct::ChatTemplate::answer_start_token)) up to and
    /// with its last real token. The weight is learned with the rest.
    ///
    /// Initialised from the SFT model, that term alone already ranks the policy's answers
    /// as the SFT model believes in them, which a scalar head on a small trunk learns only
    /// from many rankings (see docs/reward-model.md).
    pub fn with_likelihood(mut self, answer_start: u32, weight: f64) -> Self {
        let device = self
            .trunk
            .devices()
            .into_iter()
            .next()
            .expect("a model lives on a device");
        self.likelihood = Some(Likelihood {
            weight: Param::from_tensor(Tensor::from_floats([weight as f32], &device)),
            answer_start,
        });
        self
    }

    /// The likelihood term's weight and answer-start token, when the model has one.
    pub fn likelihood(&self) -> Option<(f64, u32)> {
        self.likelihood.as_ref().map(|l| {
            let weight = burn::tensor::ElementConversion::elem::<f64>(l.weight.val().into_scalar());
            (weight, l.answer_start)
        })
    }

    /// The same model with `normalization` folded into its head, so that it outputs the
    /// normalised score (as a critic initialised from the reward model should).
    pub fn with_normalization(mut self, normalization: Normalization) -> Self {
        let (gain, bias) = (normalization.gain, normalization.bias);
        if let Some(likelihood) = self.likelihood.as_mut() {
            likelihood.weight = likelihood.weight.clone().map(|w| w.mul_scalar(gain));
        }
        self.head.weight = self.head.weight.map(|w| w.mul_scalar(gain));
        self.head.bias = self
            .head
            .bias
            .map(|b| b.map(|b| b.mul_scalar(gain).add_scalar(bias)));
        self
    }

    /// The trunk.
    pub fn trunk(&self) -> &Decoder<B> {
        &self.trunk
    }

    /// The head's output at every token (the likelihood term, a property of whole answers,
    /// is left out: a critic reads this).
    ///
    /// # Shapes
    /// - `input.tokens`: `[batch, seq]` → `[batch, seq]`
    pub fn forward_all(&self, input: DecoderInput<B>) -> Tensor<B, 2> {
        let hidden = self.trunk.forward_hidden(input);
        let [batch, seq, _] = hidden.dims();
        self.head.forward(hidden).reshape([batch, seq])
    }

    /// The raw score of each row, read at its last real token.
    ///
    /// # Shapes
    /// `[batch]`
    pub fn score(&self, batch: &ScoreBatch<B>) -> Tensor<B, 1> {
        let hidden = self.trunk.forward_hidden(batch.input.clone());
        let [rows, _, d_model] = hidden.dims();
        let index = batch
            .last
            .clone()
            .reshape([rows, 1, 1])
            .expand([rows, 1, d_model]);
        let at_last = hidden.clone().gather(1, index).reshape([rows, d_model]);
        let score = self.head.forward(at_last).reshape([rows]);
        match &self.likelihood {
            Some(likelihood) => {
                let mean = self.answer_log_likelihood(hidden, batch, likelihood.answer_start);
                score + mean * likelihood.weight.val()
            }
            None => score,
        }
    }

    /// The mean log-probability of each row's answer tokens, up to and with its last real
    /// token, under the trunk's language-model head; 0 for a row without `answer_start`.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, d_model]` → `[batch]`
    fn answer_log_likelihood(
        &self,
        hidden: Tensor<B, 3>,
        batch: &ScoreBatch<B>,
        answer_start: u32,
    ) -> Tensor<B, 1> {
        let tokens = batch.input.tokens.clone();
        let [rows, seq] = tokens.dims();
        let device = tokens.device();
        if seq < 2 {
            return Tensor::zeros([rows], &device);
        }
        // Position t predicts token t + 1.
        let logp = log_softmax(self.trunk.logits(hidden.narrow(1, 0, seq - 1)), 2);
        let next = tokens.clone().narrow(1, 1, seq - 1);
        let picked = logp
            .gather(2, next.unsqueeze_dim(2))
            .reshape([rows, seq - 1]);
        // The answer's tokens are those after the last `answer_start`, up to the last real
        // token: predicted from positions start ..= last − 1.
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([rows, seq]);
        let start = tokens
            .equal_elem(answer_start as i64)
            .int()
            .mul(positions.clone().add_scalar(1))
            .max_dim(1)
            .sub_scalar(1);
        let last = batch.last.clone().reshape([rows, 1]);
        let positions = positions.narrow(1, 0, seq - 1);
        let mask = positions
            .clone()
            .greater_equal(start.clone().expand([rows, seq - 1]))
            .bool_and(positions.lower(last.expand([rows, seq - 1])))
            .bool_and(start.greater_equal_elem(0).expand([rows, seq - 1]))
            .float();
        let count = mask.clone().sum_dim(1).clamp_min(1.0);
        (picked * mask).sum_dim(1).div(count).reshape([rows])
    }
}

/// An affine map of the raw score, `gain × raw + bias`, fitted after training so that the SFT
/// policy's answers score mean 0 (and std 1 with a gain).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Multiplies the raw score.
    pub gain: f64,
    /// Added after the gain.
    pub bias: f64,
}

impl Default for Normalization {
    fn default() -> Self {
        Self {
            gain: 1.0,
            bias: 0.0,
        }
    }
}

impl Normalization {
    /// The map that gives `raw` scores mean 0, and std 1 if `with_gain` (a constant set of
    /// scores keeps gain 1).
    ///
    /// # Errors
    /// No scores, or one that is not finite.
    pub fn fit(raw: &[f64], with_gain: bool) -> Result<Self> {
        if raw.is_empty() || raw.iter().any(|s| !s.is_finite()) {
            return Err(Error::Config(
                "normalisation needs at least one finite score".into(),
            ));
        }
        let n = raw.len() as f64;
        let mean = raw.iter().sum::<f64>() / n;
        let std = (raw.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        let gain = if with_gain && std > 1e-12 {
            1.0 / std
        } else {
            1.0
        };
        Ok(Self {
            gain,
            bias: -mean * gain,
        })
    }

    /// The normalised score.
    pub fn apply(&self, raw: f64) -> f64 {
        self.gain * raw + self.bias
    }
}

/// What `reward.json` holds beside the weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSidecar {
    /// The normalisation of the raw score.
    pub normalization: Normalization,
    /// The answer-start token of the likelihood term, when the model has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub likelihood_answer_start: Option<u32>,
}

/// Writes a reward model into `dir`: `model.json` (the trunk's config), `model.mpk` (trunk and
/// head) and `reward.json` (the normalisation), each replaced atomically. Copy the
/// tokenizer beside it.
///
/// # Errors
/// The folder or files cannot be written.
pub fn save_reward_model<B: Backend>(
    model: &RewardModel<B>,
    normalization: Normalization,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(".model.tmp");
    save_record::<B, _>(model.clone().into_record(), &tmp)?;
    let weights = dir.join("model.mpk");
    std::fs::rename(tmp.with_extension("mpk"), &weights).map_err(|e| Error::io(&weights, e))?;
    let config = serde_json::to_string_pretty(model.trunk().config()).expect("config serialises");
    ember_tokenizer::write_atomically(&dir.join("model.json"), config.as_bytes())?;
    let file = serde_json::to_string_pretty(&RewardSidecar {
        normalization,
        likelihood_answer_start: model.likelihood().map(|(_, start)| start),
    })
    .expect("serialises");
    ember_tokenizer::write_atomically(&dir.join("reward.json"), file.as_bytes())?;
    integrity::seal(dir, Some(integrity::tensor_shapes::<B, _>(model)))?;
    Ok(())
}

/// Loads a reward model written by [`save_reward_model`].
///
/// # Errors
/// Missing or damaged files (a folder without `reward.json` holds a language model, not a
/// reward model).
pub fn load_reward_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(RewardModel<B>, Normalization)> {
    let manifest = integrity::verify(dir)?;
    let path = dir.join("reward.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let file: RewardSidecar =
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
    let config = load_model_config(dir)?;
    let mut model = RewardModel::new(
        config.init_zeroed::<B>(device)?,
        default_head_std(config.d_model),
    );
    if let Some(start) = file.likelihood_answer_start {
        model = model.with_likelihood(start, 0.0);
    }
    let model = integrity::load_checked(
        model,
        dir,
        manifest.as_ref(),
        &dir.join("model.json"),
        device,
    )?;
    Ok((model, file.normalization))
}
