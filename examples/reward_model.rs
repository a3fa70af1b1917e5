//! cargo run --release --example reward_model
//!
//! Stage 3 through the library: the SFT model's answers, ranked by the built-in tasks' judge
//! (made first by the pipeline's own stages on a quick budget), train a reward model from the
//! SFT model; it is then measured on held-out rankings and scores two answers. Under a minute
//! on a CPU; copy it as a template and give it your own rankings (`data`).

use burn::backend::{Autodiff, Flex};
use ember::instruct::{Conversation, Message, OnError};
use ember::pipeline::{
    evaluate_reward_model, evaluation_table, load_rankings, score_answers_with, train_reward_model,
    Pipeline, PipelineSettings, Policy, RewardSettings, Stage, TuneInputs,
};
use ember::train::keep_freed_memory;

type B = Autodiff<Flex>;

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let device = Default::default();
    let mut log = |line: &str| println!("{line}");

    // What the reward model learns from: K ranked answers per prompt from a small SFT model.
    let pipeline = Pipeline::new("runs/example-reward", PipelineSettings::quick());
    for stage in [Stage::Data, Stage::Pretrain, Stage::Sft, Stage::Collect] {
        if !pipeline.is_done(stage) {
            pipeline.run_stage::<B>(stage, &device, &mut log)?;
        }
    }
    let run = pipeline.folder();

    // The stage itself: all pairs of each K-way ranking, 30 steps of 4 prompts.
    let mut settings = RewardSettings::default();
    settings.batch.prompts_per_batch = 4;
    settings.train.steps = 30;
    settings.train.eval_every = std::num::NonZeroUsize::new(10);
    let inputs = TuneInputs {
        model: run.model(Policy::Sft),
        data: run.rankings().join("train.jsonl"),
        val: None,
        run: run.root().join("reward"),
        on_error: OnError::Stop,
    };
    let trained = train_reward_model::<B>(&inputs, &settings, &device, &mut log)?;
    println!("{trained}");

    // Held-out rankings (prompts it never saw), and two answers to one question.
    let (model, normalization) = trained.model.load_reward::<Flex>(&device)?;
    let template = trained.model.template()?;
    let held = load_rankings(
        &run.rankings().join("heldout.jsonl"),
        OnError::Stop,
        &mut log,
    )?;
    let evaluation = evaluate_reward_model(&model, &template, held)?;
    print!(
        "held-out rankings:\n{}",
        evaluation_table(&evaluation.overall)
    );
    let question = "Spell the word: day";
    let prompt = Conversation::new(vec![Message::user(question)]);
    let answers = ["d-a-y", "d-a-y-s"].map(|a| (prompt.clone(), a.to_string()));
    for ((_, answer), (reward, _)) in answers.iter().zip(score_answers_with(
        &model,
        normalization,
        &template,
        &answers,
    )?) {
        println!("{question} → {answer:?}: reward {reward:+.3}");
    }
    Ok(())
}
