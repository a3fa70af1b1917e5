//! Several pipeline runs (seeds) summed up: per run and pooled, each model's gain over SFT on
//! the held-out judge with paired bootstrap 95 % intervals over prompts, wins, ties and
//! losses, per family, and the share of the flawed-to-flawless SFT gap that PPO closes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compare::{compare, gap_closed, Comparison, PromptScore};
use crate::stats::Interval;
use crate::summary::{read_prompt_scores, Policy, Summary};
use crate::{Error, PipelineSettings, Result, RunFolder};

/// One run's results.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// The run folder.
    pub root: PathBuf,
    /// Its seed (from its `config.toml`).
    pub seed: u64,
    /// Minutes of its stages.
    pub minutes: f64,
    /// Share of its SFT demonstrations that are flawed.
    pub flawed_share: Option<f64>,
    /// The reward model's held-out pairwise accuracy.
    pub reward_accuracy: f64,
    /// Each model (PPO, the upper bound, the flawless yardstick) against SFT.
    pub versus_sft: BTreeMap<Policy, Comparison>,
    /// The share of the flawed-to-flawless gap PPO closes (sampled answers).
    pub gap_closed: Option<Interval>,
    /// The same for the upper bound.
    pub gap_closed_by_judge: Option<Interval>,
}

/// Several runs, each and pooled.
#[derive(Debug, Clone, PartialEq)]
pub struct Runs {
    /// Each run.
    pub runs: Vec<RunResult>,
    /// Pooled over the runs (each run's prompts resampled within it).
    pub pooled: BTreeMap<Policy, Comparison>,
    /// The pooled share of the gap PPO closes.
    pub gap_closed: Option<Interval>,
    /// The same for the upper bound.
    pub gap_closed_by_judge: Option<Interval>,
}

const COMPARED: [Policy; 3] = [Policy::Ppo, Policy::PpoJudge, Policy::SftFlawless];

fn scores(run: &RunFolder, policy: Policy) -> Result<Option<Vec<PromptScore>>> {
    let path = run.eval().join(format!("{}.jsonl", policy.name()));
    if !path.is_file() {
        return Ok(None);
    }
    read_prompt_scores(&path).map(Some)
}

/// Reads finished pipeline run folders and compares their models with SFT, per run and
/// pooled.
///
/// # Errors
/// No run, or a run without its evaluation.
pub fn summarise_runs(roots: &[PathBuf]) -> Result<Runs> {
    if roots.is_empty() {
        return Err(Error::Config("name at least one run folder".into()));
    }
    let mut loaded = Vec::new();
    for root in roots {
        let run = RunFolder::new(root);
        let summary_path = run.eval().join("summary.json");
        let summary = Summary::read(&summary_path)?;
        let settings: PipelineSettings = crate::settings::load(Some(&root.join("config.toml")))?;
        let mut by_policy = BTreeMap::new();
        for policy in [
            Policy::Sft,
            Policy::Ppo,
            Policy::PpoJudge,
            Policy::SftFlawless,
        ] {
            if let Some(s) = scores(&run, policy)? {
                by_policy.insert(policy, s);
            }
        }
        if !by_policy.contains_key(&Policy::Sft) {
            return Err(Error::Missing {
                path: run.eval().join("sft.jsonl"),
                reason: "the run has no evaluation of its SFT model".into(),
            });
        }
        let minutes = run.read_timings()?.values().sum::<f64>() / 60.0;
        loaded.push((run, summary, settings, by_policy, minutes));
    }
    let mut runs = Vec::new();
    for (run, summary, settings, _, minutes) in &loaded {
        runs.push(RunResult {
            root: run.root().to_path_buf(),
            seed: settings.seed,
            minutes: *minutes,
            flawed_share: run.data().read_flaws().ok().map(|d| d.share()),
            reward_accuracy: summary.reward_model.accuracy,
            versus_sft: summary.versus_sft.clone(),
            gap_closed: summary.gap_closed,
            gap_closed_by_judge: summary.gap_closed_by_judge,
        });
    }
    let mut pooled = BTreeMap::new();
    for policy in COMPARED {
        let pairs = loaded
            .iter()
            .filter_map(|(_, _, _, by, _)| {
                Some((by.get(&policy)?.as_slice(), by[&Policy::Sft].as_slice()))
            })
            .collect::<Vec<_>>();
        if pairs.len() == loaded.len() {
            pooled.insert(policy, compare(&pairs, 0)?);
        }
    }
    let closed = |tuned: Policy| -> Result<Option<Interval>> {
        let triples = loaded
            .iter()
            .filter_map(|(_, _, _, by, _)| {
                Some((
                    by[&Policy::Sft].as_slice(),
                    by.get(&Policy::SftFlawless)?.as_slice(),
                    by.get(&tuned)?.as_slice(),
                ))
            })
            .collect::<Vec<_>>();
        if triples.len() < loaded.len() {
            return Ok(None);
        }
        let sampled = loaded
            .iter()
            .all(|(_, _, _, by, _)| by[&Policy::Sft].iter().all(|p| p.sampled.is_some()));
        gap_closed(&triples, sampled, 0)
    };
    Ok(Runs {
        runs,
        pooled,
        gap_closed: closed(Policy::Ppo)?,
        gap_closed_by_judge: closed(Policy::PpoJudge)?,
    })
}

fn cell(i: Option<Interval>) -> String {
    match i {
        Some(i) if i.above_zero() => i.to_string(),
        Some(i) => format!("{i} (no gain)"),
        None => "–".into(),
    }
}

fn percent(i: Option<Interval>) -> String {
    i.map_or("–".into(), |i| {
        format!(
            "{:.0} % [{:.0} %, {:.0} %]",
            100.0 * i.mean,
            100.0 * i.low,
            100.0 * i.high
        )
    })
}

/// The markdown of [`summarise_runs`]'s result.
pub fn runs_markdown(runs: &Runs) -> String {
    let mut md = String::from("# Ember pipeline over several seeds\n\nHeld-out judge, gain over SFT prompt by prompt with a paired bootstrap 95 % interval over prompts (pooled: each run's prompts resampled within the run); a gain whose interval includes 0 is reported as no gain. Sampled: the mean judge score of each prompt's sampled answers.\n\n");
    md.push_str("| run | seed | flawed demos | minutes | RM accuracy | PPO − SFT greedy | PPO − SFT sampled | W / T / L (greedy) | gap closed (sampled) | upper bound − SFT sampled | upper bound's gap closed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let row = |name: &str,
               seed: String,
               flawed: String,
               minutes: String,
               rm: String,
               versus: &BTreeMap<Policy, Comparison>,
               closed: Option<Interval>,
               by_judge: Option<Interval>| {
        let ppo = versus.get(&Policy::Ppo);
        let bound = versus.get(&Policy::PpoJudge);
        let count = ppo.map_or("–".into(), |c| {
            let w = c.all.greedy.count;
            format!("{} / {} / {}", w.wins, w.ties, w.losses)
        });
        format!(
            "| {name} | {seed} | {flawed} | {minutes} | {rm} | {} | {} | {count} | {} | {} | {} |\n",
            cell(ppo.map(|c| c.all.greedy.interval)),
            cell(ppo.and_then(|c| c.all.sampled).map(|s| s.interval)),
            percent(closed),
            cell(bound.and_then(|c| c.all.sampled).map(|s| s.interval)),
            percent(by_judge),
        )
    };
    for run in &runs.runs {
        md.push_str(&row(
            &run.root.display().to_string(),
            run.seed.to_string(),
            run.flawed_share
                .map_or("–".into(), |s| format!("{:.0} %", 100.0 * s)),
            format!("{:.1}", run.minutes),
            format!("{:.1} %", 100.0 * run.reward_accuracy),
            &run.versus_sft,
            run.gap_closed,
            run.gap_closed_by_judge,
        ));
    }
    md.push_str(&row(
        "**pooled**",
        "–".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        &runs.pooled,
        runs.gap_closed,
        runs.gap_closed_by_judge,
    ));
    if let Some(ppo) = runs.pooled.get(&Policy::Ppo) {
        md.push_str("\n## Per family, pooled: PPO − SFT\n\n| family | greedy | sampled | W / T / L (greedy) |\n|---|---:|---:|---:|\n");
        for (family, g) in &ppo.families {
            let w = g.greedy.count;
            md.push_str(&format!(
                "| {family} | {} | {} | {} / {} / {} |\n",
                g.greedy.interval,
                g.sampled.map_or("–".into(), |s| s.interval.to_string()),
                w.wins,
                w.ties,
                w.losses
            ));
        }
        md.push_str("\n## Per family and seed: PPO − SFT on sampled answers\n\n| family |");
        for run in &runs.runs {
            md.push_str(&format!(" seed {} |", run.seed));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(runs.runs.len()));
        md.push('\n');
        for family in ppo.families.keys() {
            md.push_str(&format!("| {family} |"));
            for run in &runs.runs {
                let g = run
                    .versus_sft
                    .get(&Policy::Ppo)
                    .and_then(|c| c.families.get(family))
                    .and_then(|g| g.sampled);
                md.push_str(&format!(
                    " {} |",
                    g.map_or("–".into(), |s| s.interval.to_string())
                ));
            }
            md.push('\n');
        }
    }
    md
}

/// Summarises `roots` and writes the markdown to `out`, atomically; returns it.
///
/// # Errors
/// As [`summarise_runs`], or the file cannot be written.
pub fn write_runs_report(roots: &[PathBuf], out: &Path) -> Result<String> {
    let md = runs_markdown(&summarise_runs(roots)?);
    ember_tokenizer::write_atomically(out, md.as_bytes())?;
    Ok(md)
}
