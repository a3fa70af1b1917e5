//! A model from outside Ember through every stage: the tiny Llama with grouped-query
//! attention and ChatML that `transformers` wrote (crates/models/tests/fixtures) is imported,
//! tuned one SFT step, answers ranked, a reward model trained a step, PPO run an iteration;
//! each folder keeps ChatML, and the result exports to a Hugging Face folder again.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use ember_instruct::{Conversation, Message, OnError};
use ember_pipeline::{
    collect, export_model, export_tasks, import_model, ppo, sft, train_reward_model, ExportFormat,
    ModelFolder, PipelineSettings, PpoInputs, PromptSource, TuneInputs, TEMPLATE_FILE,
};
use ember_transformer::{generate, FinishReason, GenerateConfig};

type B = Flex;
type A = Autodiff<Flex>;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/llama-gqa")
}

#[test]
fn an_imported_chatml_model_goes_through_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let device = Default::default();
    let imported = ModelFolder::new(root.join("imported"));
    let summary = import_model::<B>(&fixture(), &imported, &device, |_, _| {}).unwrap();
    assert_eq!(
        (summary.template.as_str(), summary.config.kv_heads()),
        ("chatml", 2)
    );
    assert!(imported.path().join(TEMPLATE_FILE).is_file());

    let mut settings = PipelineSettings::toy();
    settings.sft.batch.row_len = 256;
    settings.tasks.train_per_family = 4;
    let exported = export_tasks(&root.join("data"), &settings.tasks, 2).unwrap();
    for train in [&mut settings.sft.train, &mut settings.reward.train] {
        train.steps = 1;
    }
    let log = &mut |_: &str| {};
    let tuned = sft::<A>(
        &TuneInputs {
            model: imported.clone(),
            data: exported.files.sft.clone(),
            val: None,
            run: root.join("sft"),
            on_error: OnError::Stop,
        },
        &settings.sft,
        &device,
        log,
    )
    .unwrap();
    assert!(tuned.loss_before.is_finite());
    assert_eq!(tuned.model.template().unwrap().spec().name, "chatml");

    let [job, _] = settings
        .collect
        .jobs(&tuned.model, &root.join("rankings"), 8);
    // A random model's answers all score 0: the labelers' noise ranks them.
    let job = ember_pipeline::CollectJob {
        per_family: 1,
        k: 2,
        noise: 0.5,
        ..job
    };
    collect::<B>(&job, &device).unwrap();
    let rewarded = train_reward_model::<A>(
        &TuneInputs {
            model: tuned.model.clone(),
            data: job.output.clone(),
            val: None,
            run: root.join("reward"),
            on_error: OnError::Stop,
        },
        &settings.reward,
        &device,
        log,
    )
    .unwrap();
    assert_eq!(rewarded.model.template().unwrap().spec().name, "chatml");

    settings.ppo.iterations = 1;
    settings.ppo.prompts_per_family = 1;
    let trained = ppo::<A>(
        &PpoInputs {
            policy: tuned.model.clone(),
            reward: rewarded.model.clone(),
            prompts: PromptSource::Tasks,
            ptx_shards: None,
            run: root.join("ppo"),
        },
        &settings.ppo,
        &device,
        log,
    )
    .unwrap();

    // The tuned policy still speaks ChatML: a prompt ends with the assistant's prefix, and an
    // answer that stops, stops at <|im_end|>.
    let template = trained.model.template().unwrap();
    assert_eq!(template.spec().name, "chatml");
    let im_end = template.tokenizer().token_id("<|im_end|>").unwrap();
    assert_eq!(template.stop_token(), im_end);
    let prompt = template
        .render_prompt(&Conversation::new(vec![Message::user("What is 2 + 2?")]))
        .unwrap();
    let text = template.tokenizer().decode(&prompt).unwrap();
    assert!(
        text.starts_with("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n")
            && text.ends_with("<|im_start|>assistant\n"),
        "{text:?}"
    );
    let policy = trained.model.load::<B>(&device).unwrap();
    let answers = generate(
        &policy,
        &[prompt],
        &GenerateConfig {
            max_new_tokens: 16,
            stop_tokens: vec![template.stop_token(), template.eos_token()],
            pad_token: template.pad_token(),
            ..Default::default()
        },
    )
    .unwrap();
    if answers[0].finish == FinishReason::Stop {
        assert!([im_end, template.eos_token()].contains(answers[0].tokens.last().unwrap()));
    }

    let out = root.join("hf");
    export_model::<B>(&trained.model, &out, ExportFormat::HfFolder, &device).unwrap();
    let back = ember_models::import::<B>(&out, &device, |_, _| {}).unwrap();
    assert_eq!(back.template.as_ref(), Some(template.spec()));
}
