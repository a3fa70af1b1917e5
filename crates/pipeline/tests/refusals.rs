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

#[test]
fn a_collection_with_nothing_to_rank_keeps_the_file_it_would_replace() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = tokenizer(dir.path());
    let model = config(&tokenizer, 256)
        .init::<Flex>(&Default::default())
        .unwrap();
    let folder = ModelFolder::new(dir.path().join("model"));
    folder.save(&model, &tokenizer).unwrap();
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
