//! The pipeline's report: markdown tables of what each stage achieved (from the evaluation's
//! [`Summary`]) and SVG plots of the loss, reward and KL curves (from the stages'
//! `metrics.jsonl`).

use std::collections::BTreeSet;
use std::path::Path;

use ember_ppo::metric as ppo_metric;
use ember_reward::metric as reward_metric;
use ember_train::metric::{self, TRAIN, VAL};
use ember_train::{MetricLine, MetricsLog};

use crate::compare::Gains;
use crate::eval::Scored;
use crate::plot::{write_svg, Chart, Series};
use crate::stats::Interval;
use crate::summary::{read_answers, Policy, Summary};
use crate::{DemonstrationCounts, Result, RunFolder, Stage, Timings};

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
    /// The SFT demonstrations: how many, how many flawed.
    pub demonstrations: Option<&'a DemonstrationCounts>,
    /// The run's seed.
    pub seed: u64,
    /// PPO's first and last rollout batches' agreement with the judge: (share of prompts
    /// with every answer tied, the reward model's accuracy on the policy's own samples).
    pub agreement: Option<((f64, f64), (f64, f64))>,
}

/// The report's markdown.
pub fn markdown(inputs: &ReportInputs<'_>) -> String {
    let summary = inputs.summary;
    let families = summary.families();
    let mut md = String::new();
    md.push_str("# Ember pipeline report\n\n");
    md.push_str(&format!("Every stage on the built-in tasks (run seed {}); held-out prompts never seen in training, scored by the tasks' judges (1 = the answer, 0.6 = the answer and more, 0.1 = wrong but clean, 0 = empty or rambling; `describe`: half content, half form).\n\n", inputs.seed));
    if let Some(d) = inputs.demonstrations {
        let kinds = d
            .by_flaw
            .iter()
            .map(|(flaw, n)| format!("{} {n}", flaw.name()))
            .collect::<Vec<_>>()
            .join(", ");
        md.push_str(&format!(
            "**Imperfect demonstrations:** {} of the {} SFT demonstrations ({:.0} %) carry a flaw the labeler dislikes ({kinds}); the yardstick is the same SFT on the same prompts with flawless ones (docs/tasks.md).\n\n",
            d.flawed,
            d.demonstrations,
            100.0 * d.share()
        ));
    }
    md.push_str("## Headline: against SFT, with paired bootstrap 95 % intervals over prompts\n\n");
    let sampled_note = summary.sampling.map_or(String::new(), |s| {
        format!(
            " Sampled: the mean judge score of {} answers per prompt at temperature {} (PPO's own sampling).",
            s.samples, s.temperature
        )
    });
    md.push_str(&format!("Mean judge score on {} held-out prompts, and the gain over SFT prompt by prompt; a gain whose interval includes 0 is no gain.{sampled_note}\n\n", summary.models.get(&Policy::Sft).map_or(0, |m| m.greedy.n)));
    md.push_str("| model | greedy | sampled | greedy − SFT [95 % CI] | sampled − SFT [95 % CI] | wins / ties / losses (greedy) |\n|---|---:|---:|---:|---:|---:|\n");
    let interval = |i: Option<Interval>| match i {
        Some(i) => format!("{i}{}", if i.above_zero() { "" } else { " (no gain)" }),
        None => "–".into(),
    };
    for policy in Policy::ALL {
        let Some(m) = summary.models.get(&policy) else {
            continue;
        };
        let sampled = m
            .sampled
            .as_ref()
            .map_or("–".into(), |s| format!("{:.3}", s.mean));
        let versus = summary.versus_sft.get(&policy);
        let (g, s, count) = match versus {
            Some(v) => (
                interval(Some(v.all.greedy.interval)),
                interval(v.all.sampled.map(|s| s.interval)),
                format!(
                    "{} / {} / {}",
                    v.all.greedy.count.wins, v.all.greedy.count.ties, v.all.greedy.count.losses
                ),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        md.push_str(&format!(
            "| {} | {:.3} | {sampled} | {g} | {s} | {count} |\n",
            policy.label(),
            m.greedy.mean
        ));
    }
    md.push('\n');
    let percent = |i: &Interval| {
        format!(
            "{:.0} % [{:.0} %, {:.0} %]",
            100.0 * i.mean,
            100.0 * i.low,
            100.0 * i.high
        )
    };
    if let Some(closed) = &summary.gap_closed {
        md.push_str(&format!(
            "**Share of the gap between SFT and SFT on flawless data that PPO closes** ({} answers): {}",
            if summary.sampling.is_some() { "sampled" } else { "greedy" },
            percent(closed)
        ));
        if let Some(judge) = &summary.gap_closed_by_judge {
            md.push_str(&format!(
                "; the upper bound, PPO with the judge as the reward: {}",
                percent(judge)
            ));
        }
        md.push_str(".\n\n");
    }
    if !summary.versus_sft.is_empty() {
        md.push_str("Per family, gain over SFT on sampled answers (greedy where there are none), with its interval:\n\n| family |");
        let policies = summary.versus_sft.keys().copied().collect::<Vec<_>>();
        for p in &policies {
            md.push_str(&format!(" {} − SFT |", p.label()));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(policies.len()));
        md.push('\n');
        for family in &families {
            md.push_str(&format!("| {family} |"));
            for p in &policies {
                let g = summary.versus_sft[p].families.get(family);
                let shown = g.map(|g: &Gains| g.sampled.unwrap_or(g.greedy).interval);
                md.push_str(&format!(
                    " {} |",
                    shown.map_or("–".into(), |i| i.to_string())
                ));
            }
            md.push('\n');
        }
        md.push('\n');
    }
    let policies = Policy::ALL
        .into_iter()
        .filter(|p| summary.models.contains_key(p))
        .collect::<Vec<_>>();
    let header = policies
        .iter()
        .map(|p| format!(" {} |", p.label()))
        .collect::<String>();
    let rule = "---:|".repeat(policies.len());
    md.push_str(&format!("## Held-out judge score per task family\n\nGreedy answers, and the reward model's pairwise accuracy on the held-out rankings of the family (PPO can only follow the reward model where it is right).\n\n| family |{header} PPO − SFT | reward model (pairs) |\n|---|{rule}---:|---:|\n"));
    let greedy = |policy: Policy, family: &str| {
        summary
            .models
            .get(&policy)
            .and_then(|m| m.greedy.families.get(family))
            .map_or(f64::NAN, |s| s.mean)
    };
    for family in &families {
        let cells = policies
            .iter()
            .map(|&p| format!(" {:.3} |", greedy(p, family)))
            .collect::<String>();
        let rm = summary
            .reward_model_by_family
            .get(family)
            .map_or("–".to_string(), |r| {
                format!("{:.1}% ({})", 100.0 * r.accuracy, r.pairs)
            });
        md.push_str(&format!(
            "| {family} |{cells} {:+.3} | {rm} |\n",
            greedy(Policy::Ppo, family) - greedy(Policy::Sft, family)
        ));
    }
    let mean = |policy: Policy| {
        summary
            .models
            .get(&policy)
            .map_or(f64::NAN, |m| m.greedy.mean)
    };
    let cells = policies
        .iter()
        .map(|&p| format!(" **{:.3}** |", mean(p)))
        .collect::<String>();
    md.push_str(&format!(
        "| **all** |{cells} **{:+.3}** | {:.1}% ({}) |\n\n",
        mean(Policy::Ppo) - mean(Policy::Sft),
        100.0 * summary.reward_model.accuracy,
        summary.reward_model.pairs
    ));
    if let Some(sampling) = summary.sampling {
        md.push_str(&format!(
            "**Sampled answers** ({} per prompt at temperature {}, PPO's own: the judge's expected score, which PPO optimises):\n\n| family |{header} PPO − SFT |\n|---|{rule}---:|\n",
            sampling.samples, sampling.temperature
        ));
        let sampled = |policy: Policy| summary.models.get(&policy).and_then(|m| m.sampled.as_ref());
        let cell = |policy: Policy, family: &str| {
            sampled(policy)
                .and_then(|s| s.families.get(family))
                .map_or(f64::NAN, |s| s.mean)
        };
        for family in &families {
            let cells = policies
                .iter()
                .map(|&p| format!(" {:.3} |", cell(p, family)))
                .collect::<String>();
            md.push_str(&format!(
                "| {family} |{cells} {:+.3} |\n",
                cell(Policy::Ppo, family) - cell(Policy::Sft, family)
            ));
        }
        let mean = |policy: Policy| sampled(policy).map_or(f64::NAN, |s| s.mean);
        let cells = policies
            .iter()
            .map(|&p| format!(" **{:.3}** |", mean(p)))
            .collect::<String>();
        md.push_str(&format!(
            "| **all** |{cells} **{:+.3}** |\n\n",
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
    if let Some(((tied0, acc0), (tied1, acc1))) = inputs.agreement {
        md.push_str(&format!(
            "| PPO rollouts: prompts whose answers the judge all tied (no signal), first / last batch | {:.0} % / {:.0} % |\n",
            100.0 * tied0,
            100.0 * tied1
        ));
        md.push_str(&format!(
            "| reward model's pairwise accuracy on PPO's own samples (against the judge), first / last batch | {:.1} % / {:.1} % |\n",
            100.0 * acc0,
            100.0 * acc1
        ));
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

fn write_plots(
    run: &RunFolder,
    ppo: &Metrics,
    upper_bound: Option<&Metrics>,
    updates: f64,
) -> Result<()> {
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
    let mut gold = vec![
        Series::new("RM score (proxy)", rollouts(ppo_metric::SCORE)),
        Series::new("judge (gold)", rollouts(ppo_metric::JUDGE)),
    ];
    if let Some(bound) = upper_bound {
        gold.push(Series::new(
            "judge, judge as reward (upper bound)",
            by_iteration(bound.curve(TRAIN, ppo_metric::JUDGE), updates),
        ));
    }
    write_svg(
        &plots.join("reward.svg"),
        &[
            chart("PPO samples: proxy and gold reward", "rollout batch", gold),
            chart(
                "PPO samples: reward model against the judge",
                "rollout batch",
                vec![
                    Series::new(
                        "RM pairwise accuracy",
                        rollouts(ppo_metric::REWARD_ACCURACY),
                    ),
                    Series::new("prompts all tied", rollouts(ppo_metric::JUDGE_TIED)),
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
pub fn write_report(run: &RunFolder, updates_per_rollout: usize, seed: u64) -> Result<String> {
    let summary = Summary::read(&run.eval().join("summary.json"))?;
    let timings = run.read_timings()?;
    let ppo = Metrics::read(&run.stage("ppo").join("metrics.jsonl"))?;
    let bound_path = run.stage(Policy::PpoJudge.name()).join("metrics.jsonl");
    let upper_bound = if bound_path.is_file() {
        Some(Metrics::read(&bound_path)?)
    } else {
        None
    };
    write_plots(
        run,
        &ppo,
        upper_bound.as_ref(),
        updates_per_rollout.max(1) as f64,
    )?;
    let sft_answers = read_answers(&run.eval().join("sft.jsonl"))?;
    let ppo_answers = read_answers(&run.eval().join("ppo.jsonl"))?;
    let demonstrations = run.data().read_flaws().ok();
    let md = markdown(&ReportInputs {
        summary: &summary,
        timings: &timings,
        last_rollout: RolloutStats::last(&ppo),
        sft_answers: &sft_answers,
        ppo_answers: &ppo_answers,
        demonstrations: demonstrations.as_ref(),
        seed,
        agreement: agreement(&ppo),
    });
    ember_tokenizer::write_atomically(&run.report(), md.as_bytes())?;
    Ok(md)
}

/// The first and last rollout batches' (share of prompts all tied, reward-model accuracy).
fn agreement(ppo: &Metrics) -> Option<((f64, f64), (f64, f64))> {
    let tied = ppo.curve(TRAIN, ppo_metric::JUDGE_TIED);
    let accuracy = ppo.curve(TRAIN, ppo_metric::REWARD_ACCURACY);
    Some((
        (tied.first()?.1, accuracy.first()?.1),
        (tied.last()?.1, accuracy.last()?.1),
    ))
}
