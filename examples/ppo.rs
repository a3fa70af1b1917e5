//! cargo run --release --example ppo
//!
//! Stage 4 through the library: PPO improves a small SFT policy against a small reward model
//! (both made first by the pipeline's own stages) with a KL penalty to the SFT model, then
//! the SFT and PPO policies answer the same held-out prompts and are compared prompt by
//! prompt on the judge. Under a minute on a CPU: a template, not a result (see docs/ppo.md).

use burn::backend::{Autodiff, Flex};
use ember::pipeline::{
    ppo, read_examples, score_answers, Answering, JudgeScores, Pipeline, PipelineSettings, Policy,
    PpoInputs, PpoSettings, PromptSource, Stage, WinTieLoss,
};
use ember::tasks::TaskSet;
use ember::train::keep_freed_memory;

type B = Autodiff<Flex>;

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let device = Default::default();
    let mut log = |line: &str| println!("{line}");

    // What PPO starts from: the SFT policy (also the KL reference) and the reward model.
    let pipeline = Pipeline::new("runs/example-ppo", PipelineSettings::quick());
    for stage in [
        Stage::Data,
        Stage::Pretrain,
        Stage::Sft,
        Stage::Collect,
        Stage::Reward,
    ] {
        if !pipeline.is_done(stage) {
            pipeline.run_stage::<B>(stage, &device, &mut log)?;
        }
    }
    let run = pipeline.folder();

    // The stage itself: 4 rollout batches of 8 prompts × 2 answers, 2 minibatches each.
    let mut settings = PpoSettings {
        iterations: 4,
        eval_every: 2,
        checkpoint_every: 2,
        eval_per_family: 1,
        ..Default::default()
    };
    settings.ppo.rollout_prompts = 8;
    settings.ppo.samples_per_prompt = 2;
    settings.ppo.minibatches = 2;
    settings.ppo.max_new_tokens = 8;
    let inputs = PpoInputs {
        policy: run.model(Policy::Sft),
        reward: run.reward_model(),
        prompts: PromptSource::Tasks,
        ptx_shards: None,
        run: run.root().join("ppo"),
    };
    let trained = ppo::<B>(&inputs, &settings, &device, &mut log)?;
    println!("{trained}");

    // SFT and PPO on the same held-out prompts.
    let examples = read_examples(&run.data().heldout)?;
    let tasks = TaskSet::builtin();
    let answer = |folder: &ember::pipeline::ModelFolder| -> anyhow::Result<_> {
        let model = folder.load::<Flex>(&device)?;
        let template = folder.template()?;
        Ok(score_answers(
            &model,
            &template,
            &tasks,
            &examples,
            &Answering::greedy(8),
        )?)
    };
    let (before, after) = (answer(&run.model(Policy::Sft))?, answer(&trained.model)?);
    let versus = WinTieLoss::compare(&after, &before);
    println!(
        "held-out judge: SFT {:.3} → PPO {:.3}; PPO vs SFT {} wins, {} ties, {} losses",
        JudgeScores::of(&before).mean,
        JudgeScores::of(&after).mean,
        versus.wins,
        versus.ties,
        versus.losses
    );
    Ok(())
}
