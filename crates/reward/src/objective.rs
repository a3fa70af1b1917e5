//! The reward model's objective for the shared training loop: the ranking loss over batches
//! of prompts, every K answers of a prompt in one forward pass.

use burn::tensor::backend::{AutodiffBackend, Backend};
use ember_train::{EpochOrder, Loss, MicroBatch, Objective};
use serde::{Deserialize, Serialize};

use crate::{
    evaluate, metric, ranking_loss, EncodedRanking, Error, Padding, Result, RewardModel, ScoreBatch,
};

/// Batching and loss options of [`RankingObjective`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankingConfig {
    /// Prompts per micro-batch; all K answers of each go through one forward pass.
    pub prompts_per_batch: usize,
    /// Subtracted from r_better − r_worse inside the loss (0: InstructGPT's loss).
    pub margin: f64,
    /// Seed of the order in which prompts are visited.
    pub seed: u64,
    /// Answers per forward pass in evaluation.
    pub eval_batch_size: usize,
}

impl Default for RankingConfig {
    fn default() -> Self {
        Self {
            prompts_per_batch: 8,
            margin: 0.0,
            seed: 0,
            eval_batch_size: 64,
        }
    }
}

/// The reward model's objective: the ranking loss over batches of prompts.
#[derive(Debug)]
pub struct RankingObjective<B: Backend> {
    train: Vec<EncodedRanking>,
    val: Vec<EncodedRanking>,
    pad: u32,
    config: RankingConfig,
    order: EpochOrder,
    device: B::Device,
}

impl<B: Backend> RankingObjective<B> {
    /// An objective over encoded rankings (see [`encode_rankings`]); rankings with every
    /// answer tied are left out of training.
    ///
    /// # Errors
    /// A bad config, or no training ranking with a strict preference.
    pub fn new(
        train: Vec<EncodedRanking>,
        val: Vec<EncodedRanking>,
        pad: u32,
        config: RankingConfig,
        device: &B::Device,
    ) -> Result<Self> {
        if config.prompts_per_batch == 0 || config.eval_batch_size == 0 {
            return Err(Error::Config(
                "prompts_per_batch and eval_batch_size must be at least 1".into(),
            ));
        }
        let train = train
            .into_iter()
            .filter(|r| !r.pairs.is_empty())
            .collect::<Vec<_>>();
        if train.is_empty() {
            return Err(Error::Config(
                "no training ranking prefers one answer to another".into(),
            ));
        }
        Ok(Self {
            order: EpochOrder::new(train.len(), config.seed),
            train,
            val,
            pad,
            config,
            device: device.clone(),
        })
    }

    /// The training rankings.
    pub fn train(&self) -> &[EncodedRanking] {
        &self.train
    }

    /// The validation rankings.
    pub fn val(&self) -> &[EncodedRanking] {
        &self.val
    }
}

impl<B: AutodiffBackend> Objective<B, RewardModel<B>> for RankingObjective<B> {
    fn loss(&mut self, model: &RewardModel<B>, batch: MicroBatch) -> ember_train::Result<Loss<B>> {
        let picked = self.order.batch(batch.index, self.config.prompts_per_batch);
        let mut rows = Vec::new();
        let mut groups = Vec::with_capacity(picked.len());
        for i in picked {
            let ranking = &self.train[i];
            let offset = rows.len();
            rows.extend(ranking.rows.iter().cloned());
            groups.push(
                ranking
                    .pairs
                    .iter()
                    .map(|&(b, w)| (offset + b, offset + w))
                    .collect::<Vec<_>>(),
            );
        }
        let heads = model.trunk().config().n_heads;
        let to_train = |e: Error| ember_train::Error::objective(e);
        let scores = ScoreBatch::<B>::new(&rows, self.pad, Padding::Right, heads, &self.device)
            .map_err(to_train)?;
        let rewards = model.score(&scores);
        let value = ranking_loss(rewards, &groups, self.config.margin).map_err(to_train)?;
        Ok(Loss::new(value, groups.iter().map(Vec::len).sum()))
    }

    fn validate(
        &mut self,
        model: &RewardModel<B::InnerBackend>,
    ) -> ember_train::Result<Vec<(String, f64)>> {
        if self.val.is_empty() {
            return Ok(Vec::new());
        }
        let eval = evaluate(model, &self.val, self.pad, self.config.eval_batch_size)
            .map_err(ember_train::Error::objective)?;
        Ok(vec![
            (ember_train::metric::LOSS.into(), eval.loss),
            (metric::ACCURACY.into(), eval.overall.accuracy),
            (metric::MARGIN.into(), eval.overall.mean_margin),
        ])
    }
}
