//! Inputs a stage must refuse with a typed error instead of a panic or lost data: a collection
//! that gathers nothing leaves the existing file alone; a reward-model row longer than the
//! context is an error.

use burn::backend::Flex;
use ember_instruct::{Conversation, Message};
use ember_pipeline::{collect, score_answers_with, CollectJob, Error, ModelFolder, TOKENIZER_FILE};
use ember_reward::{Normalization, RewardModel};
use ember_tasks::Split;
use ember_tokenizer::{BpeConfig, Tokenizer};
use ember_transformer::DecoderConfig;

fn tokenizer(dir: &std::path::Path) -> Tokenizer {
    let text = dir.join("corpus.txt");
    std::fs::write(&text, "the cat sat on the mat. 2 + 3 = 5. ".repeat(40)).unwrap();
    let bpe = BpeConfig {
        vocab_size: 300,
        ..Default::default()
    };
    Tokenizer::train(&[text], &bpe).unwrap()
}

fn config(tokenizer: &Tokenizer, context: usize) -> DecoderConfig {
    let mut config = DecoderConfig::tiny();
    config.vocab_size = tokenizer.vocab_size();
    config.d_model = 16;
    config.n_layers = 1;
    config.n_heads = 2;
    config.max_seq_len = context;
    config
}

/// A tiny model with a context of `context` tokens, saved in `dir/model`.
fn saved_model(dir: &std::path::Path, context: usize) -> ModelFolder {
    let tokenizer = tokenizer(dir);
    let model = config(&tokenizer, context)
        .init::<Flex>(&Default::default())
        .unwrap();
    let folder = ModelFolder::new(dir.join("model"));
    folder.save(&model, &tokenizer).unwrap();
    folder
}

#[test]
fn a_collection_with_nothing_to_rank_keeps_the_file_it_would_replace() {
    let dir = tempfile::tempdir().unwrap();
    let folder = saved_model(dir.path(), 256);
    assert!(folder.path().join(TOKENIZER_FILE).is_file());
    let output = dir.path().join("rankings.jsonl");
    std::fs::write(&output, "{\"kept\": true}\n").unwrap();
    // At a temperature this low both answers to a prompt are the same: every ranking ties.
    let job = CollectJob {
        model: folder,
        output: output.clone(),
        split: Split::Train,
        per_family: 1,
        k: 2,
        temperature: 1e-6,
        max_new_tokens: 4,
        noise: 0.0,
        closeness: 0.0,
        demonstrations: false,
        seed: 1,
    };
    match collect::<Flex>(&job, &Default::default()) {
        Err(Error::Missing { path, reason }) => {
            assert_eq!(path, output);
            assert!(reason.contains("no ranking collected"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let zero_tokens = CollectJob {
        max_new_tokens: 0,
        ..job
    };
    let error = collect::<Flex>(&zero_tokens, &Default::default()).unwrap_err();
    assert!(error.to_string().contains("max_new_tokens"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "{\"kept\": true}\n"
    );
}

#[test]
fn an_answer_longer_than_the_reward_models_context_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = tokenizer(dir.path());
    let trunk = config(&tokenizer, 48)
        .init::<Flex>(&Default::default())
        .unwrap();
    let model = RewardModel::new(trunk, 0.1);
    let template = ember_instruct::ChatTemplate::new(tokenizer).unwrap();
    let prompt = Conversation::new(vec![Message::user("What is 2 + 3?")]);
    let pairs = [
        (prompt.clone(), "5".to_string()),
        (prompt, "the cat sat on the mat ".repeat(20)),
    ];
    let error =
        score_answers_with(&model, Normalization::default(), &template, &pairs).unwrap_err();
    assert!(
        matches!(
            error,
            Error::TooLong {
                count: 1,
                context: 48
            }
        ),
        "{error}"
    );
    let scores =
        score_answers_with(&model, Normalization::default(), &template, &pairs[..1]).unwrap();
    assert!(scores[0].0.is_finite());
}

#[test]
fn no_setting_of_any_stage_can_be_nan_or_infinite() {
    use ember_pipeline::PipelineSettings;
    for settings in [
        PipelineSettings::default(),
        PipelineSettings::toy(),
        PipelineSettings::quick(),
    ] {
        settings.validate().unwrap();
    }
    // One float of each stage's table, each set to NaN, then to infinity: each is named.
    type Set = fn(&mut PipelineSettings, f64);
    let floats: [(&str, Set); 12] = [
        ("tasks.flaws.share", |s, v| s.tasks.flaws.share = v),
        ("pretrain.train.optimizer.lr", |s, v| {
            s.pretrain.train.optimizer.lr = v
        }),
        ("sft.val_fraction", |s, v| s.sft.val_fraction = v),
        ("sft.train.optimizer.eps", |s, v| {
            s.sft.train.optimizer.eps = v as f32
        }),
        ("collect.temperature", |s, v| {
            s.collect.temperature = v as f32
        }),
        ("collect.noise", |s, v| s.collect.noise = v),
        ("reward.likelihood_weight", |s, v| {
            s.reward.likelihood_weight = v
        }),
        ("reward.train.optimizer.grad_clip", |s, v| {
            s.reward.train.optimizer.grad_clip = Some(v)
        }),
        ("ppo.ppo.temperature", |s, v| s.ppo.ppo.temperature = v),
        ("ppo.ppo.ptx_coef", |s, v| s.ppo.ppo.ptx_coef = v),
        ("ppo.optimizer.weight_decay", |s, v| {
            s.ppo.optimizer.weight_decay = v as f32
        }),
        ("eval.temperature", |s, v| s.eval.temperature = v as f32),
    ];
    for (name, set) in floats {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut settings = PipelineSettings::default();
            set(&mut settings, value);
            let error = settings.validate().unwrap_err().to_string();
            assert!(error.contains(name), "{name} = {value}: {error}");
        }
    }
    // SFT rows longer than the context the pretraining stage will give the model.
    let mut settings = PipelineSettings::default();
    settings.sft.batch.row_len = 100_000;
    let error = settings.validate().unwrap_err().to_string();
    assert!(error.contains("row_len 100000"), "{error}");
}

#[test]
fn sft_rows_longer_than_the_models_context_are_refused_before_training() {
    use ember_pipeline::{sft, SftSettings, TuneInputs};
    let dir = tempfile::tempdir().unwrap();
    let folder = saved_model(dir.path(), 64);
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, "{\"prompt\": \"2 + 3\", \"completion\": \"5\"}\n").unwrap();
    let mut settings = SftSettings::default();
    settings.batch.row_len = 100_000;
    let inputs = TuneInputs {
        model: folder,
        data,
        val: None,
        run: dir.path().join("run"),
        on_error: ember_instruct::OnError::Stop,
    };
    let error =
        sft::<burn::backend::Autodiff<Flex>>(&inputs, &settings, &Default::default(), &mut |_| {})
            .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("row_len 100000 is longer than the model's context of 64"),
        "{error}"
    );
    assert!(!dir.path().join("run").exists(), "nothing written");
}
