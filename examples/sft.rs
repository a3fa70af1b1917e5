//! cargo run --release --example sft
//!
//! Stage 2 through the library: a small pretrained model (made first by the pipeline's own
//! data and pretraining stages) learns the built-in tasks' answers with SFT, then answers
//! held-out prompts, scored by the tasks' judges. Under a minute on a CPU; copy it as a
//! template and give it your own conversations (`data`) and a real pretrained model folder.

use burn::backend::{Autodiff, Flex};
use ember::instruct::OnError;
use ember::pipeline::{
    read_examples, score_answers, sft, Answering, JudgeScores, Pipeline, PipelineSettings, Policy,
    SftSettings, Stage, TuneInputs,
};
use ember::tasks::TaskSet;
use ember::train::keep_freed_memory;

type B = Autodiff<Flex>;

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let device = Default::default();
    let mut log = |line: &str| println!("{line}");

    // What SFT starts from: the built-in tasks' data and a small pretrained model.
    let pipeline = Pipeline::new("runs/example-sft", PipelineSettings::quick());
    for stage in [Stage::Data, Stage::Pretrain] {
        if !pipeline.is_done(stage) {
            pipeline.run_stage::<B>(stage, &device, &mut log)?;
        }
    }
    let run = pipeline.folder();

    // The stage itself, with its own settings: 200 steps of 8 packed rows of 48 tokens.
    let mut settings = SftSettings::default();
    settings.batch.batch_size = 8;
    settings.batch.row_len = 48;
    settings.train.steps = 200;
    settings.train.eval_every = std::num::NonZeroUsize::new(50);
    settings.train.optimizer.lr = 2e-3;
    let inputs = TuneInputs {
        model: run.model(Policy::Base),
        data: run.data().sft,
        val: None,
        run: run.root().join("sft"),
        on_error: OnError::Stop,
    };
    let tuned = sft::<B>(&inputs, &settings, &device, &mut log)?;
    println!("{tuned}");

    // The tuned model answers held-out prompts; each family's judge scores the answers.
    let model = tuned.model.load::<Flex>(&device)?;
    let template = tuned.model.template()?;
    let examples = read_examples(&run.data().heldout)?;
    let scored = score_answers(
        &model,
        &template,
        &TaskSet::builtin(),
        &examples,
        &Answering::greedy(16),
    )?;
    for s in scored.iter().step_by(2) {
        println!("{:>5.2}  {} → {:?}", s.score, s.example.prompt, s.output);
    }
    println!("mean judge score: {:.3}", JudgeScores::of(&scored).mean);
    Ok(())
}
