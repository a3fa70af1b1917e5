//! Stage 3, the reward model: trained from the SFT model on K-way rankings, normalised on the
//! training answers, evaluated on held-out rankings (overall, by K and by task family), and
//! used to score answers.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ember_instruct::{ChatTemplate, Conversation, OnError};
use ember_reward::{
    answer_row, by_family, default_head_std, encode_rankings, read_rankings, score_rankings,
    score_rows, EncodedRanking, Evaluation, Normalization, Ranking, RankingConfig,
    RankingObjective, RewardModel,
};
use ember_train::{fit, RunDir, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::settings::{check_fraction, hold_out, start_run};
use crate::{Error, ModelFolder, Result, TuneInputs};

/// How the trained model's scores are normalised on the SFT policy's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizationKind {
    /// Raw scores.
    None,
    /// A bias: mean 0.
    Mean,
    /// A bias and a gain: mean 0, std 1.
    MeanStd,
}

/// The reward model's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSettings {
    /// Share of the rankings held out when no validation file is given.
    pub val_fraction: f64,
    /// Standard deviation of the head's initial weights; `1/√(d_model + 1)` when left out.
    pub head_std: Option<f64>,
    /// The normalisation fitted on the training answers (the SFT policy's samples).
    pub normalize: NormalizationKind,
    /// Add a learned multiple of the answer's mean log-likelihood under the trunk's own
    /// language-model head to the score (see docs/reward-model.md).
    pub likelihood: bool,
    /// The initial weight of that term.
    pub likelihood_weight: f64,
    /// Prompts per batch, margin, seed.
    pub batch: RankingConfig,
    /// The loop.
    pub train: TrainConfig,
}

impl Default for RewardSettings {
    fn default() -> Self {
        let mut train = TrainConfig {
            steps: 150,
            eval_every: std::num::NonZeroUsize::new(50),
            checkpoint_every: std::num::NonZeroUsize::new(50),
            ..Default::default()
        };
        train.optimizer.lr = 3e-4;
        train.optimizer.warmup_steps = 10;
        Self {
            val_fraction: 0.1,
            head_std: None,
            normalize: NormalizationKind::MeanStd,
            likelihood: false,
            likelihood_weight: 1.0,
            batch: RankingConfig::default(),
            train,
        }
    }
}

/// What reward-model training did.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardTrained {
    /// The reward model.
    pub model: ModelFolder,
    /// Training and validation rankings.
    pub rankings: (usize, usize),
    /// The normalisation fitted on the training answers, and how many answers.
    pub normalization: (Normalization, usize),
    /// The learned weight of the likelihood term, when there is one.
    pub likelihood_weight: Option<f64>,
    /// The evaluation on the validation rankings (raw scores), when there are any.
    pub validation: Option<Evaluation>,
    /// Pairs per second.
    pub pairs_per_second: f64,
}

impl std::fmt::Display for RewardTrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (normalization, answers) = self.normalization;
        writeln!(
            f,
            "normalisation on the {answers} training answers: score = {:.4} × raw + {:.4}",
            normalization.gain, normalization.bias
        )?;
        if let Some(weight) = self.likelihood_weight {
            writeln!(
                f,
                "likelihood term: raw score = head + {weight:.4} × mean log-probability of the answer"
            )?;
        }
        if let Some(evaluation) = &self.validation {
            writeln!(f, "held-out rankings (raw scores):")?;
            write!(f, "{}", evaluation_table(evaluation))?;
        }
        write!(
            f,
            "wrote the reward model to {} ({:.0} pairs/s)",
            self.model.path().display(),
            self.pairs_per_second
        )
    }
}

/// Reads rankings, logging skipped records.
///
/// # Errors
/// An unreadable file, a malformed record under [`OnError::Stop`], or no ranking at all.
pub fn load_rankings(
    path: &Path,
    on_error: OnError,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Ranking>> {
    let read = read_rankings(path, on_error)?;
    if !read.skipped.is_empty() {
        log(&format!(
            "skipped {} malformed record(s) in {}; the first: {}",
            read.skipped.len(),
            path.display(),
            read.skipped[0]
        ));
    }
    if read.rankings.is_empty() {
        return Err(Error::Missing {
            path: path.to_path_buf(),
            reason: "no ranking to use".into(),
        });
    }
    Ok(read.rankings)
}

fn encode(
    template: &ChatTemplate,
    rankings: &[Ranking],
    max_len: usize,
    path: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<EncodedRanking>> {
    let (encoded, too_long) = encode_rankings(template, rankings, max_len)?;
    if too_long > 0 {
        log(&format!(
            "left out {too_long} ranking(s) of {} with an answer longer than the model's context ({max_len} tokens)",
            path.display()
        ));
    }
    Ok(encoded)
}

/// Trains a reward model, resuming from the run folder's last checkpoint.
///
/// # Errors
/// A bad `val_fraction`, unreadable rankings or model, or a training error.
pub fn train_reward_model<B: AutodiffBackend>(
    inputs: &TuneInputs,
    settings: &RewardSettings,
    device: &B::Device,
    log: &mut dyn FnMut(&str),
) -> Result<RewardTrained> {
    check_fraction(settings.val_fraction)?;
    start_run(&inputs.run, settings)?;
    let template = inputs.model.template()?;
    let pad = template.pad_token();
    let trunk = inputs.model.load::<B>(device)?;
    let max_len = trunk.config().max_seq_len;
    let mut train = load_rankings(&inputs.data, inputs.on_error, log)?;
    let val = match &inputs.val {
        Some(path) => load_rankings(path, inputs.on_error, log)?,
        None => {
            let (kept, held) = hold_out(train, settings.val_fraction);
            train = kept;
            held
        }
    };
    let train = encode(&template, &train, max_len, &inputs.data, log)?;
    let val_path = inputs.val.as_ref().unwrap_or(&inputs.data);
    let val = encode(&template, &val, max_len, val_path, log)?;
    log(&format!(
        "{} training and {} validation rankings",
        train.len(),
        val.len()
    ));
    let head_std = settings
        .head_std
        .unwrap_or_else(|| default_head_std(trunk.config().d_model));
    // The head's initial weights follow the batches' seed.
    B::seed(device, settings.batch.seed);
    let mut model = RewardModel::new(trunk, head_std);
    if settings.likelihood {
        model = model.with_likelihood(template.answer_start_token(), settings.likelihood_weight);
    }
    let mut objective =
        RankingObjective::<B>::new(train, val, pad, settings.batch.clone(), device)?;
    let (model, summary) = fit(
        model,
        &mut objective,
        &settings.train,
        &RunDir::new(&inputs.run),
    )?;
    let model = model.valid();
    let eval_batch = settings.batch.eval_batch_size;
    let raw = score_rankings(&model, objective.train(), pad, eval_batch)?.concat();
    let normalization = match settings.normalize {
        NormalizationKind::None => Normalization::default(),
        NormalizationKind::Mean => Normalization::fit(&raw, false)?,
        NormalizationKind::MeanStd => Normalization::fit(&raw, true)?,
    };
    let validation = if objective.val().is_empty() {
        None
    } else {
        let scores = score_rankings(&model, objective.val(), pad, eval_batch)?;
        Some(Evaluation::new(objective.val(), &scores))
    };
    let folder = ModelFolder::new(inputs.run.join("model"));
    folder.save_reward(&model, normalization, &template)?;
    Ok(RewardTrained {
        model: folder,
        rankings: (objective.train().len(), objective.val().len()),
        normalization: (normalization, raw.len()),
        likelihood_weight: model.likelihood().map(|(weight, _)| weight),
        validation,
        pairs_per_second: summary.tokens_per_second,
    })
}

/// The table of an [`Evaluation`]: pairwise accuracy and margin by K and overall, and the
/// rank correlation with the labeler's scores.
pub fn evaluation_table(eval: &Evaluation) -> String {
    let mut out = format!(
        "{:<10} {:>9} {:>7} {:>10} {:>12}\n",
        "K", "rankings", "pairs", "accuracy", "mean margin"
    );
    let mut row = |k: &str, s: &ember_reward::PairStats| {
        out.push_str(&format!(
            "{k:<10} {:>9} {:>7} {:>9.1}% {:>12.3}\n",
            s.rankings,
            s.pairs,
            100.0 * s.accuracy,
            s.mean_margin
        ));
    };
    for (k, s) in &eval.by_k {
        row(&k.to_string(), s);
    }
    row("all", &eval.overall);
    if let (Some(pooled), Some(within)) = (eval.spearman, eval.spearman_within) {
        out.push_str(&format!(
            "rank correlation (Spearman) with the labeler's scores: {within:.3} within prompts, {pooled:.3} pooled over prompts\n"
        ));
    }
    out
}

/// A reward model's evaluation on rankings.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardEvaluation {
    /// Over every ranking.
    pub overall: Evaluation,
    /// Per task family.
    pub by_family: BTreeMap<String, Evaluation>,
    /// The model's raw scores of each ranking's answers.
    pub scores: Vec<Vec<f64>>,
    /// The rankings.
    pub rankings: Vec<Ranking>,
}

/// Scores `rankings` with a reward model and evaluates it against them. Every ranking must
/// fit the model's context.
///
/// # Errors
/// A ranking longer than the context, or a model error.
pub fn evaluate_reward_model<B: Backend>(
    model: &RewardModel<B>,
    template: &ChatTemplate,
    rankings: Vec<Ranking>,
) -> Result<RewardEvaluation> {
    let pad = template.pad_token();
    let max_len = model.trunk().config().max_seq_len;
    let (encoded, too_long) = encode_rankings(template, &rankings, max_len)?;
    if too_long > 0 {
        return Err(Error::TooLong {
            count: too_long,
            context: max_len,
        });
    }
    let scores = score_rankings(model, &encoded, pad, 64)?;
    Ok(RewardEvaluation {
        overall: Evaluation::new(&encoded, &scores),
        by_family: by_family(&rankings, &encoded, &scores),
        scores,
        rankings,
    })
}

/// A reward model's scores of answers to prompts: (normalised, raw) per answer.
///
/// # Errors
/// A prompt the template cannot render, or a model error.
pub fn score_answers_with<B: Backend>(
    model: &RewardModel<B>,
    normalization: Normalization,
    template: &ChatTemplate,
    pairs: &[(Conversation, String)],
) -> Result<Vec<(f64, f64)>> {
    let pad = template.pad_token();
    let rows = pairs
        .iter()
        .map(|(prompt, answer)| answer_row(template, prompt, answer))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let context = model.trunk().config().max_seq_len;
    let too_long = rows.iter().filter(|row| row.len() > context).count();
    if too_long > 0 {
        return Err(Error::TooLong {
            count: too_long,
            context,
        });
    }
    let raw = score_rows(model, &rows, pad, 64)?;
    Ok(raw
        .into_iter()
        .map(|r| (normalization.apply(r), r))
        .collect())
}
