//! The pipeline's resume decisions from what lies in a run folder, and the report's tables
//! from a fixed summary (no training: both are pure functions of files and values).

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use ember_pipeline::{
    markdown, Decision, FamilyScore, JudgeScores, Pipeline, PipelineSettings, Policy, PolicyEval,
    ReportInputs, RewardAccuracy, RolloutStats, SampledAnswers, Scored, Stage, Summary, Timings,
    WinTieLoss,
};
use ember_tasks::Example;

fn touch(root: &Path, files: &[&str]) {
    for file in files {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }
}

fn to_run(pipeline: &Pipeline) -> Vec<&'static str> {
    pipeline
        .plan()
        .into_iter()
        .filter(|(_, decision)| *decision == Decision::Run)
        .map(|(stage, _)| stage.name())
        .collect()
}

fn mark(pipeline: &Pipeline, stage: Stage, complete: bool) {
    let index = Stage::ALL.iter().position(|&s| s == stage).unwrap();
    let mut record = pipeline.expected_records().swap_remove(index);
    record.complete = complete;
    record.write(&pipeline.folder().record(stage)).unwrap();
}

#[test]
fn a_stage_is_done_only_when_its_record_and_its_output_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pipeline = Pipeline::new(root, PipelineSettings::toy());
    assert_eq!(to_run(&pipeline), Stage::ALL.map(Stage::name).to_vec());

    // Output without a record (a folder from before records, or copied in): not done.
    touch(
        root,
        &[
            "data/corpus.txt",
            "data/sft.jsonl",
            "data/heldout.jsonl",
            "data/sft_flawless.jsonl",
            "data/flaws.json",
        ],
    );
    assert!(!pipeline.is_done(Stage::Data));
    // A record of a stage that started but did not finish (killed): not done, it resumes.
    mark(&pipeline, Stage::Data, false);
    assert!(!pipeline.is_done(Stage::Data));
    assert_eq!(pipeline.plan()[0], (Stage::Data, Decision::Run));
    mark(&pipeline, Stage::Data, true);
    assert!(pipeline.is_done(Stage::Data));

    // A finished record whose output is not all there: the output wins, it runs again.
    mark(&pipeline, Stage::Pretrain, true);
    touch(root, &["base/model/model.mpk"]);
    assert!(!pipeline.is_done(Stage::Pretrain));
    touch(root, &["base/model/tokenizer.json"]);
    assert!(pipeline.is_done(Stage::Pretrain));

    for stage in [
        Stage::Sft,
        Stage::SftFlawless,
        Stage::Collect,
        Stage::Reward,
    ] {
        mark(&pipeline, stage, true);
    }
    touch(
        root,
        &[
            "sft/model/model.mpk",
            "sft/model/tokenizer.json",
            "sft_flawless/model/model.mpk",
            "sft_flawless/model/tokenizer.json",
            "rankings/train.jsonl",
            "rankings/heldout.jsonl",
            "reward/model/model.mpk",
            "reward/model/tokenizer.json",
        ],
    );
    // A language model in the reward model's folder is not a reward model.
    assert!(!pipeline.is_done(Stage::Reward));
    assert_eq!(
        to_run(&pipeline),
        ["reward", "ppo", "ppo_judge", "eval", "report"]
    );
    touch(root, &["reward/model/reward.json"]);
    assert_eq!(to_run(&pipeline), ["ppo", "ppo_judge", "eval", "report"]);

    // Other settings: the stages that ran with the old ones are `Changed`, named with the
    // setting, and so is every stage after them (their inputs changed); the run refuses
    // before writing anything.
    let mut settings = PipelineSettings::toy();
    settings.sft.train.steps = 5;
    let changed = Pipeline::new(root, settings);
    let plan = changed.plan();
    assert_eq!(plan[1], (Stage::Pretrain, Decision::Done));
    for stage in [
        Stage::Sft,
        Stage::SftFlawless,
        Stage::Collect,
        Stage::Reward,
    ] {
        assert!(plan.contains(&(stage, Decision::Changed)), "{plan:?}");
    }
    assert!(plan.contains(&(Stage::Ppo, Decision::Run)), "{plan:?}");
    let device = Default::default();
    let error = changed
        .run::<Autodiff<Flex>>(&device, &mut |_| {})
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("sft: train.steps: 4 → 5")
            && message.contains("sft_flawless: train.steps: 4 → 5")
            && message.contains("collect: an earlier stage's settings changed")
            && message.contains("--redo-changed"),
        "{message}"
    );
    assert!(!root.join("config.toml").exists());
    // The same settings as before: nothing changed.
    assert!(!pipeline.plan().iter().any(|(_, d)| *d == Decision::Changed));

    // The upper bound is a stage only when asked for (its record says which).
    mark(&pipeline, Stage::Ppo, true);
    touch(root, &["ppo/model/model.mpk", "ppo/model/tokenizer.json"]);
    assert_eq!(to_run(&pipeline), ["ppo_judge", "eval", "report"]);
    let without = Pipeline::new(
        root,
        PipelineSettings {
            upper_bound: false,
            ..PipelineSettings::toy()
        },
    );
    mark(&without, Stage::PpoJudge, true);
    assert_eq!(to_run(&without), ["eval", "report"]);
    // ... and asking for it later changes that stage and the evaluation, nothing before.
    let plan = pipeline.plan();
    assert_eq!(plan[7], (Stage::PpoJudge, Decision::Changed));
    assert!(
        plan[..7].iter().all(|(_, d)| *d == Decision::Done),
        "{plan:?}"
    );
}

#[test]
fn a_stages_time_adds_up_over_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(dir.path(), PipelineSettings::toy());
    let device = Default::default();
    // The data stage twice (as a run killed during it, then resumed): one record, two
    // attempts, the seconds of both.
    pipeline
        .run_stage::<Autodiff<Flex>>(Stage::Data, &device, &mut |_| {})
        .unwrap();
    let read = || {
        ember_pipeline::StageRecord::read(&pipeline.folder().record(Stage::Data))
            .unwrap()
            .unwrap()
    };
    let first = read();
    assert!(first.complete && first.attempts == 1 && first.seconds > 0.0);
    pipeline
        .run_stage::<Autodiff<Flex>>(Stage::Data, &device, &mut |_| {})
        .unwrap();
    let second = read();
    assert_eq!(second.attempts, 2);
    assert!(second.seconds > first.seconds);
    assert!(pipeline.is_done(Stage::Data));
    assert_eq!(pipeline.timings().unwrap()["data"], second.seconds);
}

fn family(mean: f64, n: usize) -> FamilyScore {
    FamilyScore {
        mean,
        accuracy: mean,
        n,
    }
}

fn judge(scores: &[(&str, f64)], mean: f64) -> JudgeScores {
    JudgeScores {
        families: scores
            .iter()
            .map(|&(name, score)| (name.to_string(), family(score, 2)))
            .collect(),
        mean,
        n: 2 * scores.len(),
    }
}

fn answer(family: &str, prompt: &str, output: &str, score: f64) -> Scored {
    Scored {
        example: Example {
            family: family.into(),
            prompt: prompt.into(),
            answer: String::new(),
        },
        output: output.into(),
        score,
    }
}

#[test]
fn the_report_tables_come_from_the_summary() {
    let eval = |greedy: JudgeScores, sampled: JudgeScores, reward: f64| PolicyEval {
        greedy,
        sampled: Some(sampled),
        reward,
    };
    let models = BTreeMap::from([
        (
            Policy::Base,
            eval(
                judge(&[("count", 0.0), ("sort", 0.05)], 0.025),
                judge(&[("count", 0.0), ("sort", 0.0)], 0.0),
                -1.5,
            ),
        ),
        (
            Policy::Sft,
            eval(
                judge(&[("count", 0.55), ("sort", 0.1)], 0.325),
                judge(&[("count", 0.5), ("sort", 0.1)], 0.3),
                -0.25,
            ),
        ),
        (
            Policy::Ppo,
            eval(
                judge(&[("count", 1.0), ("sort", 0.1)], 0.55),
                judge(&[("count", 0.75), ("sort", 0.1)], 0.425),
                0.5,
            ),
        ),
    ]);
    let accuracy = |accuracy: f64, pairs: usize| RewardAccuracy {
        accuracy,
        mean_margin: 0.25,
        spearman_within: Some(0.5),
        spearman: Some(0.375),
        pairs,
    };
    let summary = Summary {
        models,
        ppo_vs_sft: WinTieLoss {
            wins: 1,
            ties: 2,
            losses: 1,
        },
        reward_model: accuracy(0.75, 8),
        reward_model_by_family: BTreeMap::from([
            ("count".to_string(), accuracy(1.0, 4)),
            ("sort".to_string(), accuracy(0.5, 4)),
        ]),
        sampling: Some(SampledAnswers {
            samples: 4,
            temperature: 1.0,
        }),
        ..Default::default()
    };
    let timings = Timings::from([
        ("data".to_string(), 1.0),
        ("pretrain".to_string(), 50.0),
        ("ppo".to_string(), 69.0),
        ("report".to_string(), 1000.0),
    ]);
    let sft = [
        answer("count", "How many?", "3", 1.0),
        answer("count", "How many more?", "2", 0.1),
        answer("sort", "Sort b | a", "a b", 0.1),
    ];
    let ppo = [
        answer("count", "How many?", "3", 1.0),
        answer("count", "How many more?", "4", 1.0),
        answer("sort", "Sort b | a", "a\nb", 0.1),
    ];
    let md = markdown(&ReportInputs {
        summary: &summary,
        timings: &timings,
        last_rollout: Some(RolloutStats {
            kl: 0.25,
            kl_coef: 0.05,
            answer_tokens: 5.5,
            cut_off: 0.125,
        }),
        sft_answers: &sft,
        ppo_answers: &ppo,
        demonstrations: None,
        seed: 0,
        agreement: Some(((0.25, 0.5), (0.1, 0.875))),
    });
    for line in [
        "| count | 0.000 | 0.550 | 1.000 | +0.450 | 100.0% (4) |",
        "| sort | 0.050 | 0.100 | 0.100 | +0.000 | 50.0% (4) |",
        "| **all** | **0.025** | **0.325** | **0.550** | **+0.225** | 75.0% (8) |",
        "**Sampled answers** (4 per prompt at temperature 1, PPO's own: the judge's expected score, which PPO optimises):",
        "| count | 0.000 | 0.500 | 0.750 | +0.250 |",
        "| **all** | **0.000** | **0.300** | **0.425** | **+0.125** |",
        "**PPO vs SFT, prompt by prompt on the judge:** 1 wins, 2 ties, 1 losses — win rate 50.0% (ties counted as half).",
        "| reward model, held-out pairwise accuracy | 75.0% (8 pairs) |",
        "| reward model, mean margin (raw) | 0.250 |",
        "| reward model vs judge, Spearman within prompts / pooled | 0.500 / 0.375 |",
        "| reward-model score of SFT's held-out answers (normalised) | -0.250 |",
        "| reward-model score of PPO's held-out answers (normalised) | +0.500 |",
        "| final KL to the SFT model (per answer, last rollout batch) | 0.250 |",
        "| final β | 0.0500 |",
        "| PPO rollouts: prompts whose answers the judge all tied (no signal), first / last batch | 25 % / 10 % |",
        "| reward model's pairwise accuracy on PPO's own samples (against the judge), first / last batch | 50.0 % / 87.5 % |",
        "| final mean answer length (tokens) / share cut off | 5.5 / 12.5% |",
        "| data | 1 |",
        "| pretrain | 50 |",
        "| ppo | 69 |",
        // The report's own time is not a stage's.
        "| **total** | **120** (2.0 min) |",
        // One answer per family, cells escaped.
        "| How many? | 3 (1.0) | 3 (1.0) |",
        "| Sort b \\| a | a b (0.1) | a b (0.1) |",
    ] {
        assert!(md.lines().any(|l| l == line), "missing {line:?} in:\n{md}");
    }
    assert!(!md.contains("How many more?"), "{md}");
    assert!(!md.contains("| report |"), "{md}");
    // The base model's reward score is not a row.
    assert_eq!(md.matches("reward-model score of").count(), 2);
}
