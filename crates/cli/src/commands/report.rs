//! The pipeline's report: a markdown table of what each stage achieved and PNG plots of the
//! loss, reward and KL curves, read from the run folder's files.

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

use crate::commands::pipeline::{Layout, Summary, Timings};
use crate::plot::{write_png, Chart, Series};

/// The lines of a `metrics.jsonl`.
fn metrics(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The (step, value) points of `key` on lines of `split`.
fn curve(lines: &[Value], split: &str, key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l["split"] == split)
        .filter_map(|l| Some((l["step"].as_f64()?, l.get(key)?.as_f64()?)))
        .collect()
}

fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.into(),
        points,
    }
}

/// PPO's per-rollout metrics by iteration (the loop logs them on each batch's first update).
fn by_iteration(points: Vec<(f64, f64)>, updates: f64) -> Vec<(f64, f64)> {
    points
        .into_iter()
        .map(|(step, v)| (((step - 1.0) / updates).floor() + 1.0, v))
        .collect()
}

/// Writes `report.md` and `plots/*.png` into the run folder.
///
/// # Errors
/// A stage's files are missing or damaged.
pub fn write(run: &Layout) -> anyhow::Result<()> {
    let summary: Summary = serde_json::from_str(
        &std::fs::read_to_string(run.join("eval/summary.json"))
            .context("reading the evaluation")?,
    )?;
    let timings: Timings =
        serde_json::from_str(&std::fs::read_to_string(run.join("timings.json"))?)?;
    let pretrain = metrics(&run.join("base/metrics.jsonl"))?;
    let sft = metrics(&run.join("sft/metrics.jsonl"))?;
    let reward = metrics(&run.join("reward/metrics.jsonl"))?;
    let ppo = metrics(&run.join("ppo/metrics.jsonl"))?;
    let ppo_config: crate::commands::ppo::PpoFile =
        crate::config::load(Some(&run.join("ppo/config.toml")))?;
    let updates = ppo_config.ppo.updates_per_rollout() as f64;

    write_png(
        &run.join("plots/loss.png"),
        &[
            Chart {
                title: "pretraining: next-token loss".into(),
                x_label: "step".into(),
                series: vec![
                    series("train", curve(&pretrain, "train", "loss")),
                    series("validation", curve(&pretrain, "val", "loss")),
                ],
            },
            Chart {
                title: "SFT: answer-token loss".into(),
                x_label: "step".into(),
                series: vec![
                    series("train", curve(&sft, "train", "loss")),
                    series("validation", curve(&sft, "val", "answer_loss")),
                ],
            },
            Chart {
                title: "reward model: ranking loss".into(),
                x_label: "step".into(),
                series: vec![
                    series("train", curve(&reward, "train", "loss")),
                    series("validation", curve(&reward, "val", "loss")),
                    series("val. accuracy", curve(&reward, "val", "accuracy")),
                ],
            },
            Chart {
                title: "PPO: policy and value loss".into(),
                x_label: "step".into(),
                series: vec![
                    series("policy", curve(&ppo, "train", "policy_loss")),
                    series("value", curve(&ppo, "train", "value_loss")),
                ],
            },
        ],
        2,
    )?;
    let eval_iter = |key: &str| {
        by_iteration(curve(&ppo, "val", key), updates)
            .into_iter()
            .map(|(i, v)| (i - 1.0, v))
            .collect::<Vec<_>>()
    };
    write_png(
        &run.join("plots/reward.png"),
        &[
            Chart {
                title: "PPO samples: reward model and judge".into(),
                x_label: "rollout batch".into(),
                series: vec![
                    series(
                        "RM score",
                        by_iteration(curve(&ppo, "train", "score"), updates),
                    ),
                    series(
                        "judge",
                        by_iteration(curve(&ppo, "train", "judge"), updates),
                    ),
                ],
            },
            Chart {
                title: "greedy, held-out prompts".into(),
                x_label: "rollout batch".into(),
                series: vec![
                    series("RM score", eval_iter("score")),
                    series("judge", eval_iter("judge")),
                ],
            },
        ],
        2,
    )?;
    write_png(
        &run.join("plots/kl.png"),
        &[
            Chart {
                title: "PPO: KL to the SFT model (per answer)".into(),
                x_label: "rollout batch".into(),
                series: vec![series(
                    "KL",
                    by_iteration(curve(&ppo, "train", "kl"), updates),
                )],
            },
            Chart {
                title: "PPO: entropy (per token) and answer length".into(),
                x_label: "rollout batch".into(),
                series: vec![
                    series(
                        "entropy",
                        by_iteration(curve(&ppo, "train", "entropy"), updates),
                    ),
                    series(
                        "tokens / 10",
                        by_iteration(curve(&ppo, "train", "answer_tokens"), updates)
                            .into_iter()
                            .map(|(i, v)| (i, v / 10.0))
                            .collect(),
                    ),
                ],
            },
        ],
        2,
    )?;

    let mut md = String::new();
    md.push_str("# Ember pipeline report\n\n");
    md.push_str("Every stage on the built-in tasks; held-out prompts never seen in training, scored by the tasks' judges (1 = the answer, 0.1 = wrong but clean, 0 = empty or rambling).\n\n");
    md.push_str("## Held-out judge score per task family\n\nGreedy answers, and the reward model's pairwise accuracy on the held-out rankings of the family (PPO can only follow the reward model where it is right).\n\n| family | base | SFT | PPO | PPO − SFT | reward model (pairs) |\n|---|---:|---:|---:|---:|---:|\n");
    let families = summary
        .judge
        .get("sft")
        .map(|f| f.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let cell = |model: &str, family: &str| {
        summary
            .judge
            .get(model)
            .and_then(|f| f.get(family))
            .map_or(f64::NAN, |e| e.mean)
    };
    for family in &families {
        let (b, s, p) = (
            cell("base", family),
            cell("sft", family),
            cell("ppo", family),
        );
        let rm = summary
            .reward_model_by_family
            .get(family)
            .map_or("–".to_string(), |(acc, pairs)| {
                format!("{:.1}% ({pairs})", 100.0 * acc)
            });
        md.push_str(&format!(
            "| {family} | {b:.3} | {s:.3} | {p:.3} | {:+.3} | {rm} |\n",
            p - s
        ));
    }
    let mean = |m: &str| summary.judge_mean.get(m).copied().unwrap_or(f64::NAN);
    md.push_str(&format!(
        "| **all** | **{:.3}** | **{:.3}** | **{:.3}** | **{:+.3}** | {:.1}% ({}) |\n\n",
        mean("base"),
        mean("sft"),
        mean("ppo"),
        mean("ppo") - mean("sft"),
        100.0 * summary.reward_model.0,
        summary.reward_model.4
    ));
    if let Some((samples, temperature)) = summary.sampling {
        md.push_str(&format!(
            "**Sampled answers** ({samples} per prompt at temperature {temperature}, PPO's own: the judge's expected score, which PPO optimises):\n\n| family | base | SFT | PPO | PPO − SFT |\n|---|---:|---:|---:|---:|\n"
        ));
        let sampled = |model: &str, family: &str| {
            summary
                .judge_sampled
                .get(model)
                .and_then(|f| f.get(family))
                .copied()
                .unwrap_or(f64::NAN)
        };
        for family in &families {
            let (b, s, p) = (
                sampled("base", family),
                sampled("sft", family),
                sampled("ppo", family),
            );
            md.push_str(&format!(
                "| {family} | {b:.3} | {s:.3} | {p:.3} | {:+.3} |\n",
                p - s
            ));
        }
        let mean = |m: &str| {
            summary
                .judge_sampled_mean
                .get(m)
                .copied()
                .unwrap_or(f64::NAN)
        };
        md.push_str(&format!(
            "| **all** | **{:.3}** | **{:.3}** | **{:.3}** | **{:+.3}** |\n\n",
            mean("base"),
            mean("sft"),
            mean("ppo"),
            mean("ppo") - mean("sft")
        ));
    }
    let (w, t, l) = summary.ppo_vs_sft;
    let n = (w + t + l).max(1) as f64;
    md.push_str(&format!(
        "**PPO vs SFT, prompt by prompt on the judge:** {w} wins, {t} ties, {l} losses — win rate {:.1}% (ties counted as half).\n\n",
        100.0 * (w as f64 + 0.5 * t as f64) / n
    ));
    md.push_str("## Reward model and PPO\n\n| | value |\n|---|---:|\n");
    let (acc, margin, within, pooled, pairs) = summary.reward_model;
    md.push_str(&format!(
        "| reward model, held-out pairwise accuracy | {:.1}% ({pairs} pairs) |\n",
        100.0 * acc
    ));
    md.push_str(&format!(
        "| reward model, mean margin (raw) | {margin:.3} |\n"
    ));
    if let (Some(w), Some(p)) = (within, pooled) {
        md.push_str(&format!(
            "| reward model vs judge, Spearman within prompts / pooled | {w:.3} / {p:.3} |\n"
        ));
    }
    for (name, label) in [("sft", "SFT"), ("ppo", "PPO")] {
        if let Some(r) = summary.reward_mean.get(name) {
            md.push_str(&format!(
                "| reward-model score of {label}'s held-out answers (normalised) | {r:+.3} |\n"
            ));
        }
    }
    let last_rollout = ppo
        .iter()
        .rev()
        .find(|l| l["split"] == "train" && l.get("kl").is_some());
    if let Some(last) = last_rollout {
        let get = |k: &str| last.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| final KL to the SFT model (per answer, last rollout batch) | {:.3} |\n",
            get("kl")
        ));
        md.push_str(&format!("| final β | {:.4} |\n", get("kl_coef")));
        md.push_str(&format!(
            "| final mean answer length (tokens) / share cut off | {:.1} / {:.1}% |\n",
            get("answer_tokens"),
            100.0 * get("cut_off")
        ));
    }
    md.push_str("\n## Time per stage\n\n| stage | seconds |\n|---|---:|\n");
    let mut total = 0.0;
    for stage in [
        "data", "pretrain", "sft", "collect", "reward", "ppo", "eval",
    ] {
        if let Some(s) = timings.get(stage) {
            total += s;
            md.push_str(&format!("| {stage} | {s:.0} |\n"));
        }
    }
    md.push_str(&format!(
        "| **total** | **{total:.0}** ({:.1} min) |\n\n",
        total / 60.0
    ));
    md.push_str("## Plots\n\n![losses](plots/loss.png)\n\n![reward](plots/reward.png)\n\n![KL](plots/kl.png)\n\n");
    md.push_str("## Answers, SFT and PPO\n\n| prompt | SFT | PPO |\n|---|---|---|\n");
    let answers = |name: &str| -> anyhow::Result<Vec<Value>> {
        metrics(&run.join(&format!("eval/{name}.jsonl")))
    };
    let (s_answers, p_answers) = (answers("sft")?, answers("ppo")?);
    let mut shown = std::collections::BTreeSet::new();
    for (s, p) in s_answers.iter().zip(&p_answers) {
        let family = s["family"].as_str().unwrap_or("");
        if !shown.insert(family.to_string()) {
            continue;
        }
        let clean = |v: &Value| {
            v.as_str()
                .unwrap_or("")
                .replace('|', "\\|")
                .replace('\n', " ")
        };
        md.push_str(&format!(
            "| {} | {} ({}) | {} ({}) |\n",
            clean(&s["prompt"]),
            clean(&s["output"]),
            s["score"],
            clean(&p["output"]),
            p["score"]
        ));
    }
    ember_tokenizer::write_atomically(&run.join("report.md"), md.as_bytes())?;
    println!("{md}");
    Ok(())
}
