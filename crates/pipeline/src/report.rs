//! The pipeline's report: markdown tables of what each stage achieved (from the evaluation's
//! [`Summary`]) and SVG plots of the loss, reward and KL curves (from the stages'
//! `metrics.jsonl`).

use std::collections::BTreeSet;
use std::path::Path;

use ember_ppo::metric as ppo_metric;
use ember_reward::metric as reward_metric;
use ember_train::metric::{self, TRAIN, VAL};
use ember_train::{MetricLine, MetricsLog};

use crate::eval::Scored;
use crate::plot::{write_svg, Chart, Series};
use crate::summary::{read_answers, Policy, Summary};
use crate::{Result, RunFolder, Stage, Timings};

/// The lines of a stage's `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    lines: Vec<MetricLine>,
}

impl Metrics {
    /// Reads a metrics file.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read(path: &Path) -> Result<Self> {
        Ok(Self {
            lines: MetricsLog::read(path)?,
        })
    }

    /// The (step, value) points of `key` on lines of `split`.
    pub fn curve(&self, split: &str, key: &str) -> Vec<(f64, f64)> {
        self.lines
            .iter()
            .filter(|l| l.split == split)
            .filter_map(|l| Some((l.step as f64, *l.values.get(key)?)))
            .collect()
    }

    /// The last line of `split` that has `key`.
    pub fn last_with(&self, split: &str, key: &str) -> Option<&MetricLine> {
        self.lines
            .iter()
            .rev()
            .find(|l| l.split == split && l.values.contains_key(key))
    }
}

/// PPO's last rollout batch, as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RolloutStats {
    /// KL to the SFT model per answer.
    pub kl: f64,
    /// The KL coefficient β.
    pub kl_coef: f64,
    /// Mean answer length in tokens.
    pub answer_tokens: f64,
    /// Share of answers cut off at the length limit.
    pub cut_off: f64,
}

impl RolloutStats {
    /// The last rollout batch logged in PPO's metrics.
    pub fn last(ppo: &Metrics) -> Option<Self> {
        let line = ppo.last_with(TRAIN, ppo_metric::KL)?;
        let get = |k: &str| line.values.get(k).copied().unwrap_or(f64::NAN);
        Some(Self {
            kl: get(ppo_metric::KL),
            kl_coef: get(ppo_metric::KL_COEF),
            answer_tokens: get(ppo_metric::ANSWER_TOKENS),
            cut_off: get(ppo_metric::CUT_OFF),
        })
    }
}

/// Everything the report's text is made of.
#[derive(Debug, Clone, Copy)]
pub struct ReportInputs<'a> {
    /// The evaluation.
    pub summary: &'a Summary,
    /// Seconds per stage.
    pub timings: &'a Timings,
    /// PPO's last rollout batch.
    pub last_rollout: Option<RolloutStats>,
    /// The SFT model's greedy held-out answers.
    pub sft_answers: &'a [Scored],
    /// The PPO model's, on the same prompts.
    pub ppo_answers: &'a [Scored],
}

/// The report's markdown.
pub fn markdown(inputs: &ReportInputs<'_>) -> String {
    let summary = inputs.summary;
    let families = summary.families();
    let mut md = String::new();
    md.push_str("# Ember pipeline report\n\n");
    md.push_str("Every stage on the built-in tasks; held-out prompts never seen in training, scored by the tasks' judges (1 = the answer, 0.1 = wrong but clean, 0 = empty or rambling).\n\n");
    md.push_str("## Held-out judge score per task family\n\nGreedy answers, and the reward model's pairwise accuracy on the held-out rankings of the family (PPO can only follow the reward model where it is right).\n\n| family | base | SFT | PPO | PPO − SFT | reward model (pairs) |\n|---|---:|---:|---:|---:|---:|\n");
    let greedy = |policy: Policy, family: &str| {
        summary
            .models
            .get(&policy)
            .and_then(|m| m.greedy.families.get(family))
            .map_or(f64::NAN, |s| s.mean)
    };
    for family in &families {
        let (b, s, p) = (
            greedy(Policy::Base, family),
            greedy(Policy::Sft, family),
            greedy(Policy::Ppo, family),
        );
        let rm = summary
            .reward_model_by_family
            .get(family)
            .map_or("–".to_string(), |r| {
                format!("{:.1}% ({})", 100.0 * r.accuracy, r.pairs)
            });
        md.push_str(&format!(
            "| {family} | {b:.3} | {s:.3} | {p:.3} | {:+.3} | {rm} |\n",
            p - s
        ));
    }
    let mean = |policy: Policy| {
        summary
            .models
            .get(&policy)
            .map_or(f64::NAN, |m| m.greedy.mean)
    };
    md.push_str(&format!(
        "| **all** | **{:.3}** | **{:.3}** | **{:.3}** | **{:+.3}** | {:.1}% ({}) |\n\n",
        mean(Policy::Base),
        mean(Policy::Sft),
        mean(Policy::Ppo),
        mean(Policy::Ppo) - mean(Policy::Sft),
        100.0 * summary.reward_model.accuracy,
        summary.reward_model.pairs
    ));
    if let Some(sampling) = summary.sampling {
        md.push_str(&format!(
            "**Sampled answers** ({} per prompt at temperature {}, PPO's own: the judge's expected score, which PPO optimises):\n\n| family | base | SFT | PPO | PPO − SFT |\n|---|---:|---:|---:|---:|\n",
            sampling.samples, sampling.temperature
        ));
        let sampled = |policy: Policy| summary.models.get(&policy).and_then(|m| m.sampled.as_ref());
        let cell = |policy: Policy, family: &str| {
            sampled(policy)
                .and_then(|s| s.families.get(family))
                .map_or(f64::NAN, |s| s.mean)
        };
        for family in &families {
            let (b, s, p) = (
                cell(Policy::Base, family),
                cell(Policy::Sft, family),
                cell(Policy::Ppo, family),
            );
            md.push_str(&format!(
                "| {family} | {b:.3} | {s:.3} | {p:.3} | {:+.3} |\n",
                p - s
            ));
        }
        let mean = |policy: Policy| sampled(policy).map_or(f64::NAN, |s| s.mean);
        md.push_str(&format!(
            "| **all** | **{:.3}** | **{:.3}** | **{:.3}** | **{:+.3}** |\n\n",
            mean(Policy::Base),
            mean(Policy::Sft),
            mean(Policy::Ppo),
            mean(Policy::Ppo) - mean(Policy::Sft)
        ));
    }
    let versus = summary.ppo_vs_sft;
    md.push_str(&format!(
        "**PPO vs SFT, prompt by prompt on the judge:** {} wins, {} ties, {} losses — win rate {:.1}% (ties counted as half).\n\n",
        versus.wins,
        versus.ties,
        versus.losses,
        100.0 * versus.win_rate()
    ));
    md.push_str("## Reward model and PPO\n\n| | value |\n|---|---:|\n");
    let rm = summary.reward_model;
    md.push_str(&format!(
        "| reward model, held-out pairwise accuracy | {:.1}% ({} pairs) |\n",
        100.0 * rm.accuracy,
        rm.pairs
    ));
    md.push_str(&format!(
        "| reward model, mean margin (raw) | {:.3} |\n",
        rm.mean_margin
    ));
    if let (Some(w), Some(p)) = (rm.spearman_within, rm.spearman) {
        md.push_str(&format!(
            "| reward model vs judge, Spearman within prompts / pooled | {w:.3} / {p:.3} |\n"
        ));
    }
    for policy in [Policy::Sft, Policy::Ppo] {
        if let Some(m) = summary.models.get(&policy) {
            md.push_str(&format!(
                "| reward-model score of {}'s held-out answers (normalised) | {:+.3} |\n",
                policy.label(),
                m.reward
            ));
        }
    }
    if let Some(last) = inputs.last_rollout {
        md.push_str(&format!(
            "| final KL to the SFT model (per answer, last rollout batch) | {:.3} |\n",
            last.kl
        ));
        md.push_str(&format!("| final β | {:.4} |\n", last.kl_coef));
        md.push_str(&format!(
            "| final mean answer length (tokens) / share cut off | {:.1} / {:.1}% |\n",
            last.answer_tokens,
            100.0 * last.cut_off
        ));
    }
    md.push_str("\n## Time per stage\n\n| stage | seconds |\n|---|---:|\n");
    let mut total = 0.0;
    // Every stage's time but the report's own (it is being written).
    for stage in Stage::ALL
        .iter()
        .filter(|s| **s != Stage::Report)
        .map(|s| s.name())
    {
        if let Some(s) = inputs.timings.get(stage) {
            total += s;
            md.push_str(&format!("| {stage} | {s:.0} |\n"));
        }
    }
    md.push_str(&format!(
        "| **total** | **{total:.0}** ({:.1} min) |\n\n",
        total / 60.0
    ));
    md.push_str("## Plots\n\n![losses](plots/loss.svg)\n\n![reward](plots/reward.svg)\n\n![KL](plots/kl.svg)\n\n");
    md.push_str("## Answers, SFT and PPO\n\n| prompt | SFT | PPO |\n|---|---|---|\n");
    let mut shown = BTreeSet::new();
    let clean = |text: &str| text.replace('|', "\\|").replace('\n', " ");
    for (s, p) in inputs.sft_answers.iter().zip(inputs.ppo_answers) {
        if !shown.insert(s.example.family.clone()) {
            continue;
        }
        md.push_str(&format!(
            "| {} | {} ({}) | {} ({}) |\n",
            clean(&s.example.prompt),
            clean(&s.output),
            serde_json::Value::from(s.score),
            clean(&p.output),
            serde_json::Value::from(p.score)
        ));
    }
    md
}

/// PPO's per-rollout metrics by iteration (the loop logs them on each batch's first update).
fn by_iteration(points: Vec<(f64, f64)>, updates: f64) -> Vec<(f64, f64)> {
    points
        .into_iter()
        .map(|(step, v)| (((step - 1.0) / updates).floor() + 1.0, v))
        .collect()
}

fn chart(title: &str, x_label: &str, series: Vec<Series>) -> Chart {
    Chart {
        title: title.into(),
        x_label: x_label.into(),
        series,
    }
}

fn write_plots(run: &RunFolder, ppo: &Metrics, updates: f64) -> Result<()> {
    let pretrain = Metrics::read(&run.stage("base").join("metrics.jsonl"))?;
    let sft = Metrics::read(&run.stage("sft").join("metrics.jsonl"))?;
    let reward = Metrics::read(&run.stage("reward").join("metrics.jsonl"))?;
    let plots = run.plots();
    write_svg(
        &plots.join("loss.svg"),
        &[
            chart(
                "pretraining: next-token loss",
                "step",
                vec![
                    Series::new("train", pretrain.curve(TRAIN, metric::LOSS)),
                    Series::new("validation", pretrain.curve(VAL, metric::LOSS)),
                ],
            ),
            chart(
                "SFT: answer-token loss",
                "step",
                vec![
                    Series::new("train", sft.curve(TRAIN, metric::LOSS)),
                    Series::new("validation", sft.curve(VAL, metric::ANSWER_LOSS)),
                ],
            ),
            chart(
                "reward model: ranking loss",
                "step",
                vec![
                    Series::new("train", reward.curve(TRAIN, metric::LOSS)),
                    Series::new("validation", reward.curve(VAL, metric::LOSS)),
                    Series::new("val. accuracy", reward.curve(VAL, reward_metric::ACCURACY)),
                ],
            ),
            chart(
                "PPO: policy and value loss",
                "step",
                vec![
                    Series::new("policy", ppo.curve(TRAIN, ppo_metric::POLICY_LOSS)),
                    Series::new("value", ppo.curve(TRAIN, ppo_metric::VALUE_LOSS)),
                ],
            ),
        ],
        2,
    )?;
    let rollouts = |key: &str| by_iteration(ppo.curve(TRAIN, key), updates);
    // An evaluation after update step s has seen s / updates rollout batches.
    let evaluations = |key: &str| by_iteration(ppo.curve(VAL, key), updates);
    write_svg(
        &plots.join("reward.svg"),
        &[
            chart(
                "PPO samples: reward model and judge",
                "rollout batch",
                vec![
                    Series::new("RM score", rollouts(ppo_metric::SCORE)),
                    Series::new("judge", rollouts(ppo_metric::JUDGE)),
                ],
            ),
            chart(
                "greedy, held-out prompts",
                "rollout batch",
                vec![
                    Series::new("RM score", evaluations(ppo_metric::SCORE)),
                    Series::new("judge", evaluations(ppo_metric::JUDGE)),
                ],
            ),
        ],
        2,
    )?;
    let tokens = rollouts(ppo_metric::ANSWER_TOKENS)
        .into_iter()
        .map(|(i, v)| (i, v / 10.0))
        .collect();
    write_svg(
        &plots.join("kl.svg"),
        &[
            chart(
                "PPO: KL to the SFT model (per answer)",
                "rollout batch",
                vec![Series::new("KL", rollouts(ppo_metric::KL))],
            ),
            chart(
                "PPO: entropy (per token) and answer length",
                "rollout batch",
                vec![
                    Series::new("entropy", rollouts(ppo_metric::ENTROPY)),
                    Series::new("tokens / 10", tokens),
                ],
            ),
        ],
        2,
    )
}

/// Writes `report.md` and `plots/{loss,reward,kl}.svg` into a finished run folder and
/// returns the markdown. `updates_per_rollout` turns PPO's steps into rollout batches.
///
/// # Errors
/// A stage's files are missing or damaged.
pub fn write_report(run: &RunFolder, updates_per_rollout: usize) -> Result<String> {
    let summary = Summary::read(&run.eval().join("summary.json"))?;
    let timings = run.read_timings()?;
    let ppo = Metrics::read(&run.stage("ppo").join("metrics.jsonl"))?;
    write_plots(run, &ppo, updates_per_rollout.max(1) as f64)?;
    let sft_answers = read_answers(&run.eval().join("sft.jsonl"))?;
    let ppo_answers = read_answers(&run.eval().join("ppo.jsonl"))?;
    let md = markdown(&ReportInputs {
        summary: &summary,
        timings: &timings,
        last_rollout: RolloutStats::last(&ppo),
        sft_answers: &sft_answers,
        ppo_answers: &ppo_answers,
    });
    ember_tokenizer::write_atomically(&run.report(), md.as_bytes())?;
    Ok(md)
}
