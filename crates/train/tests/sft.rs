//! Supervised fine-tuning: packed rows never let one conversation see another, the loss counts
//! answer tokens only, and training lowers it.

use std::num::NonZeroUsize;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_instruct::{pack_rows, ChatTemplate, Conversation, Rendered, PAD_SEGMENT};
use ember_tokenizer::{BpeConfig, Special, Tokenizer};
use ember_train::{
    fit, MicroBatch, Objective, OptimizerConfig, RowBatch, RunDir, Sft, SftConfig, TrainConfig,
};
use ember_transformer::{Architecture, DecoderConfig};

type B = Autodiff<Flex>;
type Inner = Flex;

fn template() -> ChatTemplate {
    let text = "Translate into English: chat. Translation: cat. What is two plus two? four. Reverse stone: enots.";
    let tokenizer = Tokenizer::train_from_texts(
        &[text],
        &BpeConfig {
            vocab_size: 320,
            ..Default::default()
        },
    )
    .unwrap();
    ChatTemplate::new(tokenizer).unwrap()
}

fn rendered(template: &ChatTemplate) -> Vec<Rendered> {
    [
        ("Translate into English: chat. Translation:", "cat."),
        ("What is two plus two?", "four."),
        ("Reverse stone:", "enots."),
        (
            "Translate into English: chat chat. Translation:",
            "cat cat.",
        ),
    ]
    .iter()
    .map(|(q, a)| template.render(&Conversation::single_turn(*q, *a)).unwrap())
    .collect()
}

fn values(t: Tensor<Inner, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

#[test]
fn a_packed_conversation_gets_the_logits_it_gets_alone() {
    let template = template();
    let items = rendered(&template);
    let pad = template.tokenizer().special(Special::Pad).unwrap();
    let total: usize = items.iter().map(Rendered::len).sum();
    let (rows, _) = pack_rows(&items, pad, total + 5).unwrap();
    assert_eq!(rows.len(), 1, "all conversations share one row");
    let row = &rows[0];
    let device = Default::default();
    for architecture in [Architecture::Llama, Architecture::Gpt2] {
        Inner::seed(&device, 11);
        let config = DecoderConfig::new(320, 32, 2, 4, 128)
            .with_architecture(architecture)
            .with_init_std(0.2);
        let model = config.init::<Inner>(&device).unwrap();
        let batch = RowBatch::<Inner>::new(&[row], 4, &device).unwrap();
        let packed = values(model.logits(model.forward_hidden(batch.input.clone())));
        let seq = row.ids.len() - 1;
        let vocab = 320;
        for item in &items {
            let start = (0..seq)
                .find(|&i| row.positions[i] == 0 && row.ids[i..].starts_with(&item.ids))
                .unwrap();
            let len = item.len().min(seq - start);
            let ids = item.ids[..len]
                .iter()
                .map(|&t| i64::from(t))
                .collect::<Vec<_>>();
            let alone = values(model.forward(Tensor::<Inner, 2, Int>::from_data(
                TensorData::new(ids, [1, len]),
                &device,
            )));
            let slice = &packed[start * vocab..(start + len) * vocab];
            let diff = slice
                .iter()
                .zip(&alone)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-4,
                "{architecture:?}: a packed conversation differs by {diff}"
            );
        }
        // Padding neither learns nor poisons the row with NaNs.
        assert!(packed.iter().all(|v| v.is_finite()));
        assert!(row.segments.contains(&PAD_SEGMENT));
    }
}

#[test]
fn the_loss_counts_answer_tokens_only() {
    let template = template();
    let items = rendered(&template);
    let pad = template.tokenizer().special(Special::Pad).unwrap();
    let (rows, _) = pack_rows(&items, pad, 64).unwrap();
    let device = Default::default();
    let refs = rows.iter().collect::<Vec<_>>();
    let batch = RowBatch::<Inner>::new(&refs, 4, &device).unwrap();
    // Each answer and its end marker: the tokens the mask keeps.
    let answers: usize = items
        .iter()
        .map(|r| r.mask.iter().filter(|&&m| m).count())
        .sum();
    assert_eq!(batch.targets.n_targets, answers);
}

#[test]
fn fine_tuning_lowers_the_answer_loss_and_visits_every_row() {
    let template = template();
    let items = rendered(&template);
    let pad = template.tokenizer().special(Special::Pad).unwrap();
    let device = Default::default();
    let config = SftConfig {
        batch_size: 2,
        row_len: 64,
        packing: false,
        seed: 1,
    };
    let mut sft = Sft::<B>::new(&items, &items, pad, config, &device).unwrap();
    assert_eq!(sft.train_rows().len(), 4);
    B::seed(&device, 3);
    let model = DecoderConfig::new(320, 32, 2, 4, 64)
        .init::<B>(&device)
        .unwrap();
    // One epoch is two micro-batches of two rows: every row once.
    let mut seen = Vec::new();
    for index in 0..2 {
        let loss = sft
            .loss(
                &model,
                MicroBatch {
                    step: index,
                    micro: 0,
                    index,
                },
            )
            .unwrap();
        seen.push(loss.tokens);
    }
    let answers: usize = items
        .iter()
        .map(|r| r.mask.iter().filter(|&&m| m).count())
        .sum();
    assert_eq!(seen.iter().sum::<usize>(), answers);

    let before = sft
        .evaluate(&burn::module::AutodiffModule::valid(&model))
        .unwrap();
    let train = TrainConfig {
        steps: 80,
        progress: false,
        eval_every: NonZeroUsize::new(80),
        checkpoint_every: None,
        optimizer: OptimizerConfig {
            lr: 5e-3,
            warmup_steps: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, summary) = fit(model, &mut sft, &train, &RunDir::new(dir.path())).unwrap();
    let after = summary.validation[0].1;
    assert_eq!(summary.validation[0].0, "answer_loss");
    assert!(after < before * 0.3, "answer loss {before} → {after}");
}
