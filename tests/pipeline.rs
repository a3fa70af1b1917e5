//! The whole pipeline through the facade (`ember::pipeline`) on the toy settings: every stage
//! runs and writes what the next reads, a second run does nothing again, and a stage made
//! again gives the same evaluation.

use burn::backend::{Autodiff, Flex};
use ember::pipeline::{
    read_answers, read_examples, read_prompt_scores, summarise_runs, Decision, Pipeline,
    PipelineSettings, Policy, Stage, Summary,
};

type B = Autodiff<Flex>;

#[test]
fn the_toy_pipeline_runs_resumes_and_evaluates_the_data_stages_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let settings = PipelineSettings::toy();
    let pipeline = Pipeline::new(dir.path().join("run"), settings.clone());
    let device = Default::default();
    let mut log = Vec::new();
    let timings = pipeline
        .run::<B>(&device, &mut |line| log.push(line.to_string()))
        .unwrap();
    let run = pipeline.folder();
    for stage in &Stage::ALL[..9] {
        assert!(timings.contains_key(stage.name()), "{timings:?}");
        assert!(pipeline.is_done(*stage), "{}", stage.name());
    }

    // The evaluation answered the data stage's held-out prompts, each model the same ones.
    let summary = Summary::read(&run.eval().join("summary.json")).unwrap();
    let examples = read_examples(&run.data().heldout).unwrap();
    assert_eq!(examples.len(), 8 * settings.eval.per_family);
    for policy in Policy::ALL {
        let answers = read_answers(&run.eval().join(format!("{}.jsonl", policy.name()))).unwrap();
        let asked = answers
            .iter()
            .map(|a| a.example.clone())
            .collect::<Vec<_>>();
        assert_eq!(asked, examples, "{}", policy.name());
        let eval = &summary.models[&policy];
        assert_eq!(eval.greedy.families.len(), 8);
        let mean = answers.iter().map(|a| a.score).sum::<f64>() / answers.len() as f64;
        assert!((eval.greedy.mean - mean).abs() < 1e-12);
        let sampled = eval.sampled.as_ref().unwrap();
        assert_eq!(sampled.n, examples.len() * settings.eval.samples);
    }
    assert_eq!(summary.ppo_vs_sft.total(), examples.len());
    // Every model against SFT with intervals, from the per-prompt scores the files hold.
    let sft = read_prompt_scores(&run.eval().join("sft.jsonl")).unwrap();
    for policy in [Policy::Ppo, Policy::PpoJudge, Policy::SftFlawless] {
        let versus = &summary.versus_sft[&policy];
        let theirs =
            read_prompt_scores(&run.eval().join(format!("{}.jsonl", policy.name()))).unwrap();
        let gain = theirs
            .iter()
            .zip(&sft)
            .map(|(a, b)| a.sampled.unwrap() - b.sampled.unwrap())
            .sum::<f64>()
            / sft.len() as f64;
        let sampled = versus.all.sampled.unwrap().interval;
        assert!((sampled.mean - gain).abs() < 1e-12, "{policy:?}");
        assert!(sampled.low <= sampled.mean && sampled.mean <= sampled.high);
        assert_eq!(versus.all.greedy.count.total(), examples.len());
        assert_eq!(versus.families.len(), 8);
    }
    assert_eq!(
        summary.versus_sft[&Policy::Ppo].all.greedy.count,
        summary.ppo_vs_sft
    );
    // The data stage flawed the configured share of the demonstrations.
    let flaws = run.data().read_flaws().unwrap();
    assert_eq!(
        flaws.flawed,
        (settings.tasks.flaws.share * flaws.demonstrations as f64).round() as usize
    );
    // One run summed up as `ember report` does: the same gains as the run's own summary.
    let runs = summarise_runs(&[run.root().to_path_buf()]).unwrap();
    assert_eq!(runs.runs[0].versus_sft, summary.versus_sft);
    let pooled = runs.pooled[&Policy::Ppo].all.sampled.unwrap().interval;
    assert!(
        (pooled.mean
            - summary.versus_sft[&Policy::Ppo]
                .all
                .sampled
                .unwrap()
                .interval
                .mean)
            .abs()
            < 1e-12
    );
    let pairs: usize = summary
        .reward_model_by_family
        .values()
        .map(|r| r.pairs)
        .sum();
    assert_eq!(pairs, summary.reward_model.pairs);
    assert!(pairs > 0);
    let report = std::fs::read_to_string(run.report()).unwrap();
    assert!(
        report.contains("| **all** |")
            && report.contains("win rate")
            && report.contains("paired bootstrap 95 % intervals")
            && report.contains("SFT, flawless data")
            && report.contains("carry a flaw"),
        "{report}"
    );
    for plot in ["loss", "reward", "kl"] {
        let svg = std::fs::read_to_string(run.plots().join(format!("{plot}.svg"))).unwrap();
        assert!(svg.contains("<polyline"), "{plot}");
    }

    // Again: nothing but the report is redone, and the timings stay those of the first run.
    let again = Pipeline::new(run.root(), settings.clone());
    let plan = again.plan();
    assert!(
        plan[..9].iter().all(|(_, d)| *d == Decision::Done),
        "{plan:?}"
    );
    let mut log = Vec::new();
    let timings_again = again
        .run::<B>(&device, &mut |line| log.push(line.to_string()))
        .unwrap();
    assert_eq!(timings_again, timings);
    assert!(
        log.iter().any(|l| l.contains("9/10 eval: done already")),
        "{log:?}"
    );

    // PPO's model lost (a kill while it was written): PPO, the evaluation and the report run
    // again; PPO resumes from its last checkpoint, so the evaluation is the same.
    std::fs::remove_dir_all(run.model(Policy::Ppo).path()).unwrap();
    let plan = again.plan();
    let runs = plan
        .iter()
        .filter(|(_, d)| *d == Decision::Run)
        .map(|(s, _)| s.name())
        .collect::<Vec<_>>();
    assert_eq!(runs, ["ppo", "ppo_judge", "eval", "report"]);
    again.run::<B>(&device, &mut |_| {}).unwrap();
    let resumed = Summary::read(&run.eval().join("summary.json")).unwrap();
    assert_eq!(resumed, summary);
}

#[test]
fn the_run_seed_offsets_every_stages_seed() {
    let settings = PipelineSettings::default();
    assert_eq!(settings.seeded(), settings);
    let one = PipelineSettings {
        seed: 1,
        ..PipelineSettings::default()
    }
    .seeded();
    assert_ne!(one.tasks.seed, settings.tasks.seed);
    assert_ne!(one.pretrain.batch.seed, settings.pretrain.batch.seed);
    assert_ne!(one.sft.batch.seed, settings.sft.batch.seed);
    assert_ne!(one.collect.seed, settings.collect.seed);
    assert_ne!(one.reward.batch.seed, settings.reward.batch.seed);
    assert_ne!(one.ppo.ppo.seed, settings.ppo.ppo.seed);
    assert_ne!(one.eval.seed, settings.eval.seed);
    let two = PipelineSettings {
        seed: 2,
        ..PipelineSettings::default()
    }
    .seeded();
    assert_ne!(one.tasks.seed, two.tasks.seed);
}
