//! The supervised fine-tuning objective: next-token loss on the assistant's tokens only, over
//! conversations padded or packed into rows, with the shared training loop.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Int, Tensor, TensorData};
use ember_instruct::{pack_rows, pad_rows, Rendered, Row, PAD_SEGMENT};
use ember_transformer::{masked_cross_entropy, Decoder, DecoderInput, Positions, TokenBatch};
use serde::{Deserialize, Serialize};

use crate::{metric, EpochOrder, Error, Loss, MicroBatch, Objective, Result};

/// Batching for [`Sft`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Tokens per row; longer conversations are cut.
    pub row_len: usize,
    /// Pack several conversations into a row (best-fit) instead of one per row.
    pub packing: bool,
    /// Seed of the order in which rows are visited.
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            row_len: 128,
            packing: true,
            seed: 0,
        }
    }
}

/// A batch of rows on the device: the forward's input and the masked targets.
#[derive(Debug, Clone)]
pub struct RowBatch<B: Backend> {
    /// Tokens, per-token positions and the block-diagonal attention mask.
    pub input: DecoderInput<B>,
    /// Targets and their mask (answer tokens only).
    pub targets: TokenBatch<B>,
}

impl<B: Backend> RowBatch<B> {
    /// Moves rows of equal length to the device. A token attends only to earlier tokens of its
    /// own conversation; a padding token only to itself (so no softmax row is empty).
    ///
    /// # Errors
    /// Rows of different lengths, or with no target to learn from.
    pub fn new(rows: &[&Row], n_heads: usize, device: &B::Device) -> Result<Self> {
        let full = rows.iter().map(|r| r.ids.clone()).collect::<Vec<_>>();
        let masks = rows.iter().map(|r| r.target_mask()).collect::<Vec<_>>();
        let targets = TokenBatch::<B>::from_rows_masked(&full, &masks, device)?;
        let [batch, seq] = targets.inputs.dims();
        let positions = rows
            .iter()
            .flat_map(|r| r.positions[..seq].iter().map(|&p| i64::from(p)))
            .collect::<Vec<_>>();
        let mut hidden = Vec::with_capacity(batch * seq * seq);
        for row in rows {
            for query in 0..seq {
                let pad = row.segments[query] == PAD_SEGMENT;
                hidden.extend(
                    (0..seq).map(|key| !(row.may_attend(query, key) || (pad && key == query))),
                );
            }
        }
        let mask =
            Tensor::<B, 4, Bool>::from_data(TensorData::new(hidden, [batch, 1, seq, seq]), device)
                .expand([batch, n_heads, seq, seq]);
        let input = DecoderInput {
            tokens: targets.inputs.clone(),
            positions: Positions::PerToken(Tensor::<B, 2, Int>::from_data(
                TensorData::new(positions, [batch, seq]),
                device,
            )),
            mask: Some(mask),
        };
        Ok(Self { input, targets })
    }

    /// The mean loss of `model` on the batch's answer tokens.
    ///
    /// # Errors
    /// [`ember_transformer::Error::AllMasked`] if no row has an answer token.
    pub fn loss(&self, model: &Decoder<B>) -> Result<Tensor<B, 1>> {
        let logits = model.logits(model.forward_hidden(self.input.clone()));
        Ok(masked_cross_entropy(logits, &self.targets)?)
    }
    /// [`RowBatch::loss`] for training, with the head and the loss fused
    /// ([`Decoder::head_loss`]): the same value and gradients, less memory and time.
    ///
    /// # Errors
    /// As [`RowBatch::loss`].
    pub fn train_loss(&self, model: &Decoder<B>) -> Result<Tensor<B, 1>>
    where
        B: AutodiffBackend,
    {
        Ok(model.head_loss(model.forward_hidden(self.input.clone()), &self.targets)?)
    }
}

/// Supervised fine-tuning on rendered conversations.
#[derive(Debug)]
pub struct Sft<B: Backend> {
    train: Vec<Row>,
    val: Vec<Row>,
    config: SftConfig,
    device: B::Device,
    order: EpochOrder,
}

fn rows(items: &[Rendered], pad: u32, config: &SftConfig) -> Result<Vec<Row>> {
    let (rows, _) = if config.packing {
        pack_rows(items, pad, config.row_len)?
    } else {
        pad_rows(items, pad, config.row_len)?
    };
    // A row whose every answer token was cut off teaches nothing.
    Ok(rows
        .into_iter()
        .filter(|r| r.target_mask().contains(&true))
        .collect())
}

impl<B: Backend> Sft<B> {
    /// Rows from rendered training and validation conversations (see
    /// `ember_instruct::ChatTemplate::render`), padded with `pad`.
    ///
    /// # Errors
    /// A bad config, or no conversation with an answer left in either split.
    pub fn new(
        train: &[Rendered],
        val: &[Rendered],
        pad: u32,
        config: SftConfig,
        device: &B::Device,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".into()));
        }
        let train_rows = rows(train, pad, &config)?;
        let val_rows = rows(val, pad, &config)?;
        if train_rows.is_empty() || val_rows.is_empty() {
            return Err(Error::Config(format!(
                "{} training and {} validation rows have an answer to learn from; both need one",
                train_rows.len(),
                val_rows.len()
            )));
        }
        Ok(Self {
            val: val_rows,
            order: EpochOrder::new(train_rows.len(), config.seed),
            train: train_rows,
            config,
            device: device.clone(),
        })
    }

    /// Training rows after padding or packing.
    pub fn train_rows(&self) -> &[Row] {
        &self.train
    }

    /// The rows of micro-batch `index` (counted over the whole run).
    fn micro_batch(&mut self, index: usize) -> Vec<Row> {
        self.order
            .batch(index, self.config.batch_size)
            .into_iter()
            .map(|i| self.train[i].clone())
            .collect()
    }

    /// Validation loss on answer tokens only (weighted by answer tokens).
    ///
    /// # Errors
    /// From the model (never, for rows built here).
    pub fn evaluate<C: Backend<Device = B::Device>>(&self, model: &Decoder<C>) -> Result<f64> {
        let (mut total, mut count) = (0.0, 0usize);
        let heads = model.config().n_heads;
        for chunk in self.val.chunks(self.config.batch_size) {
            let rows = chunk.iter().collect::<Vec<_>>();
            let batch = RowBatch::<C>::new(&rows, heads, &self.device)?;
            let loss = f64::from(batch.loss(model)?.into_scalar().elem::<f32>());
            total += loss * batch.targets.n_targets as f64;
            count += batch.targets.n_targets;
        }
        Ok(total / count.max(1) as f64)
    }
}

impl<B: AutodiffBackend> Objective<B, Decoder<B>> for Sft<B> {
    fn loss(&mut self, model: &Decoder<B>, batch: MicroBatch) -> Result<Loss<B>> {
        let rows = self.micro_batch(batch.index);
        let rows = rows.iter().collect::<Vec<_>>();
        let batch = RowBatch::<B>::new(&rows, model.config().n_heads, &self.device)?;
        Ok(Loss::new(batch.train_loss(model)?, batch.targets.n_targets))
    }

    fn validate(&mut self, model: &Decoder<B::InnerBackend>) -> Result<Vec<(String, f64)>> {
        Ok(vec![(metric::ANSWER_LOSS.into(), self.evaluate(model)?)])
    }
}
