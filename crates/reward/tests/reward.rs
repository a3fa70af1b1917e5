//! The reward model: where the score is read, the ranking formats and their errors, training
//! on rankings, and its files.

use std::io::Write as _;
use std::num::NonZeroUsize;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use ember_instruct::{ChatTemplate, Conversation, Message, OnError, Role};
use ember_reward::{
    collect_rankings, encode_rankings, evaluate, load_reward_model, read_rankings,
    save_reward_model, score_rows, CollectConfig, CollectPrompt, Error, Normalization, Padding,
    Ranking, RankingConfig, RankingObjective, RewardModel, ScoreBatch,
};
use ember_tokenizer::{BpeConfig, Special, Tokenizer};
use ember_train::{fit, OptimizerConfig, RunDir, TrainConfig};
use ember_transformer::{Architecture, DecoderConfig};

type B = Autodiff<Flex>;
type Inner = Flex;

fn template() -> ChatTemplate {
    let text =
        "Name an animal. cat. dog. bird. Which pet do you like? The cat sleeps, the dog barks.";
    let tokenizer = Tokenizer::train_from_texts(
        &[text],
        &BpeConfig {
            vocab_size: 300,
            ..Default::default()
        },
    )
    .unwrap();
    ChatTemplate::new(tokenizer).unwrap()
}

fn scores(model: &RewardModel<Inner>, batch: &ScoreBatch<Inner>) -> Vec<f32> {
    model.score(batch).into_data().to_vec::<f32>().unwrap()
}

#[test]
fn the_score_is_read_at_the_last_real_token_whatever_the_padding() {
    let device = Default::default();
    for architecture in [Architecture::Llama, Architecture::Gpt2] {
        Inner::seed(&device, 5);
        let trunk = DecoderConfig::new(64, 32, 2, 4, 32)
            .with_architecture(architecture)
            .init::<Inner>(&device)
            .unwrap();
        let model = RewardModel::new(trunk, 0.5);
        let rows = vec![
            vec![3, 9, 12],
            vec![5, 6, 7, 8, 9, 10, 11],
            vec![20, 21, 22, 23, 24],
        ];
        let alone = rows
            .iter()
            .map(|r| {
                let batch = ScoreBatch::new(std::slice::from_ref(r), 2, Padding::Right, 4, &device)
                    .unwrap();
                scores(&model, &batch)[0]
            })
            .collect::<Vec<_>>();
        for padding in [Padding::Right, Padding::Left] {
            let batch = ScoreBatch::new(&rows, 2, padding, 4, &device).unwrap();
            let batched = scores(&model, &batch);
            for (a, b) in alone.iter().zip(&batched) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{architecture:?} {padding:?}: {a} vs {b}"
                );
            }
        }
        // The test can fail: reading the right-padded short row at its last (padding) position
        // gives another number.
        let batch = ScoreBatch::new(&rows, 2, Padding::Right, 4, &device).unwrap();
        let all = model.forward_all(batch.input.clone());
        let at_end = all.into_data().to_vec::<f32>().unwrap()[6];
        assert!((at_end - alone[0]).abs() > 1e-4);
    }
}

fn write(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
    file
}

#[test]
fn malformed_rankings_are_rejected_with_their_line() {
    let good = r#"{"prompt": "q", "completions": ["a", "b", "c"], "ranking": [1, [0, 2]]}"#;
    let cases = [
        (
            r#"{"prompt": "q", "completions": ["a", "b"], "ranking": [0, 0]}"#,
            "twice",
        ),
        (
            r#"{"prompt": "q", "completions": ["a", "b"], "ranking": [0, 2]}"#,
            "out of range",
        ),
        (
            r#"{"prompt": "q", "completions": ["a", "b", "c"], "ranking": [0, 2]}"#,
            "answer 1 is not ranked",
        ),
        (
            r#"{"prompt": "q", "completions": ["a", " "], "ranking": [0, 1]}"#,
            "empty",
        ),
        (
            r#"{"prompt": "q", "completions": ["a"], "ranking": [0]}"#,
            "at least 2",
        ),
        (
            r#"{"prompt": "q", "completions": ["a", "b"], "ranking": [0, -1]}"#,
            "indices",
        ),
        (r#"{"prompt": "q", "chosen": "a"}"#, "kind"),
        (
            r#"{"prompt": "q", "completions": ["a", "b"]"#,
            "invalid JSON",
        ),
        (
            r#"{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: bye\n\nAssistant: b"}"#,
            "differ",
        ),
    ];
    for (bad, reason) in cases {
        let file = write(&[good, bad, good]);
        match read_rankings(file.path(), OnError::Stop) {
            Err(Error::BadRecord {
                line,
                reason: got,
                path,
            }) => {
                assert_eq!(line, 2, "{bad}");
                assert_eq!(path, file.path());
                assert!(got.contains(reason), "{bad}: {got}");
            }
            other => panic!("{bad}: expected a bad record, got {other:?}"),
        }
        let skipped = read_rankings(file.path(), OnError::Skip).unwrap();
        assert_eq!(skipped.rankings.len(), 2);
        assert_eq!(skipped.skipped.len(), 1);
    }
    let missing = read_rankings(
        std::path::Path::new("/no/such/rankings.jsonl"),
        OnError::Stop,
    );
    assert!(
        matches!(missing, Err(Error::Io { ref path, .. }) if path.ends_with("rankings.jsonl")),
        "{missing:?}"
    );
}

#[test]
fn every_ranking_format_becomes_a_ranking() {
    let file = write(&[
        r#"{"prompt": "Name an animal.", "completions": ["dog.", "cat.", "bird."], "ranking": [1, [0, 2]], "scores": [0.1, 1.0, 0.1], "family": "pets"}"#,
        r#"{"prompt": "Name an animal.", "chosen": "cat.", "rejected": "dog."}"#,
        r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name an animal."}], "chosen": [{"role": "assistant", "content": "cat."}], "rejected": [{"role": "assistant", "content": "dog."}]}"#,
        r#"{"chosen": [{"role": "user", "content": "Name an animal."}, {"role": "assistant", "content": "cat."}], "rejected": [{"role": "user", "content": "Name an animal."}, {"role": "assistant", "content": "dog."}]}"#,
        r#"{"chosen": "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nHuman: Name an animal.\n\nAssistant: cat.", "rejected": "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nHuman: Name an animal.\n\nAssistant: dog."}"#,
    ]);
    let read = read_rankings(file.path(), OnError::Stop).unwrap().rankings;
    assert_eq!(read.len(), 5);
    let k_way = &read[0];
    assert_eq!(k_way.tiers, vec![vec![1], vec![0, 2]]);
    assert_eq!(k_way.pairs(), vec![(1, 0), (1, 2)]);
    assert_eq!(k_way.scores, Some(vec![0.1, 1.0, 0.1]));
    assert_eq!(k_way.family.as_deref(), Some("pets"));
    for pair in &read[1..] {
        assert_eq!(
            pair.completions,
            vec!["cat.".to_string(), "dog.".to_string()]
        );
        assert_eq!(pair.pairs(), vec![(0, 1)]);
        let last = pair.prompt.messages.last().unwrap();
        assert_eq!(
            (last.role, last.content.as_str()),
            (Role::User, "Name an animal.")
        );
    }
    assert_eq!(read[2].prompt.messages[0], Message::system("Be brief."));
    let roles = read[4]
        .prompt
        .messages
        .iter()
        .map(|m| m.role)
        .collect::<Vec<_>>();
    assert_eq!(roles, vec![Role::User, Role::Assistant, Role::User]);
    // Written and read back, a ranking is unchanged.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("rankings.jsonl");
    ember_reward::write_rankings(&path, &read).unwrap();
    let again = read_rankings(&path, OnError::Stop).unwrap().rankings;
    assert_eq!(again, read);
}

/// Rankings in which "cat." beats "bird." beats "dog.", over many prompts.
fn pet_rankings(prompts: std::ops::Range<usize>) -> Vec<Ranking> {
    prompts
        .map(|i| {
            let prompt =
                Conversation::new(vec![Message::user(format!("Which pet do you like? {i}"))]);
            // Vary the order in which the answers are listed.
            let mut answers = ["dog.", "cat.", "bird."];
            answers.rotate_left(i % 3);
            let rank = |a: &str| match a {
                "cat." => 2.0,
                "bird." => 1.0,
                _ => 0.0,
            };
            let scores = answers.iter().map(|a| rank(a)).collect();
            Ranking::from_scores(
                prompt,
                answers.iter().map(|a| a.to_string()).collect(),
                scores,
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn training_on_rankings_learns_the_labelers_order() {
    let template = template();
    let pad = template.tokenizer().special(Special::Pad).unwrap();
    let device = Default::default();
    let (train, _) = encode_rankings(&template, &pet_rankings(0..24), 64).unwrap();
    let (val, _) = encode_rankings(&template, &pet_rankings(100..112), 64).unwrap();
    B::seed(&device, 11);
    let trunk = DecoderConfig::new(300, 32, 2, 4, 64)
        .init::<B>(&device)
        .unwrap();
    let model = RewardModel::new(trunk, 0.05);
    let config = RankingConfig {
        prompts_per_batch: 4,
        ..Default::default()
    };
    let mut objective =
        RankingObjective::<B>::new(train, val.clone(), pad, config, &device).unwrap();
    let before = evaluate(&model.valid(), &val, pad, 16).unwrap();
    let train_config = TrainConfig {
        steps: 40,
        progress: false,
        eval_every: NonZeroUsize::new(40),
        checkpoint_every: None,
        optimizer: OptimizerConfig {
            lr: 3e-3,
            warmup_steps: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (model, summary) = fit(
        model,
        &mut objective,
        &train_config,
        &RunDir::new(dir.path()),
    )
    .unwrap();
    let after = evaluate(&model.valid(), &val, pad, 16).unwrap();
    assert!(
        after.loss < 0.5 * before.loss,
        "loss {} → {}",
        before.loss,
        after.loss
    );
    assert_eq!(after.overall.accuracy, 1.0, "{after:?}");
    assert_eq!(after.overall.pairs, 36);
    assert_eq!(after.by_k[&3].rankings, 12);
    assert!(after.spearman.unwrap() > 0.9 && after.spearman_within.unwrap() > 0.99);
    let logged = summary
        .validation
        .iter()
        .find(|(k, _)| k == "accuracy")
        .unwrap();
    assert_eq!(logged.1, 1.0);
}

#[test]
fn a_saved_reward_model_scores_the_same_after_loading() {
    for likelihood in [None, Some(0.7)] {
        a_saved_reward_model_scores_the_same(likelihood);
    }
}

fn a_saved_reward_model_scores_the_same(likelihood: Option<f64>) {
    let template = template();
    let pad = template.tokenizer().special(Special::Pad).unwrap();
    let device = Default::default();
    let trunk = DecoderConfig::new(300, 32, 2, 4, 64)
        .init::<Inner>(&device)
        .unwrap();
    let mut model = RewardModel::new(trunk, 0.5);
    if let Some(weight) = likelihood {
        model = model.with_likelihood(template.answer_start_token(), weight);
    }
    let (encoded, _) = encode_rankings(&template, &pet_rankings(0..2), 64).unwrap();
    let rows = encoded
        .iter()
        .flat_map(|r| r.rows.clone())
        .collect::<Vec<_>>();
    let before = score_rows(&model, &rows, pad, 4).unwrap();
    let normalization = Normalization::fit(&before, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_reward_model(&model, normalization, dir.path()).unwrap();
    let (loaded, stored) = load_reward_model::<Inner>(dir.path(), &device).unwrap();
    assert_eq!(stored, normalization);
    assert_eq!(loaded.likelihood(), model.likelihood());
    assert_eq!(
        loaded.likelihood().map(|(w, _)| (w - 0.7).abs() < 1e-6),
        likelihood.map(|_| true)
    );
    let after = score_rows(&loaded, &rows, pad, 4).unwrap();
    assert_eq!(before, after);
    // The normalisation gives the scores it was fitted on mean 0 and std 1.
    let normalised = before
        .iter()
        .map(|&s| normalization.apply(s))
        .collect::<Vec<_>>();
    let mean = normalised.iter().sum::<f64>() / normalised.len() as f64;
    let var = normalised.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / normalised.len() as f64;
    assert!(mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-9);
    // Folded into the head, the normalisation gives the same numbers from the model itself.
    let folded = score_rows(
        &loaded.clone().with_normalization(normalization),
        &rows,
        pad,
        4,
    )
    .unwrap();
    // The head's f32 rounding is scaled by the gain (large when the raw scores barely vary).
    let tolerance = 1e-5 * normalization.gain.abs().max(10.0);
    for (f, n) in folded.iter().zip(&normalised) {
        assert!(
            (f - n).abs() < tolerance,
            "{f} vs {n} (gain {})",
            normalization.gain
        );
    }
    // A language model's folder is not a reward model.
    let lm = tempfile::tempdir().unwrap();
    ember_train::save_model(loaded.trunk(), lm.path()).unwrap();
    assert!(matches!(
        load_reward_model::<Inner>(lm.path(), &device),
        Err(Error::Io { .. })
    ));
}

#[test]
fn a_demonstration_is_ranked_among_the_sampled_answers() {
    let template = template();
    let device = Default::default();
    Inner::seed(&device, 3);
    let policy = DecoderConfig::new(300, 32, 2, 4, 64)
        .init::<Inner>(&device)
        .unwrap();
    let prompts = ["Name an animal.", "Which pet do you like?", "Name a pet."]
        .iter()
        .enumerate()
        .map(|(i, p)| CollectPrompt {
            prompt: Conversation::new(vec![Message::user(*p)]),
            family: Some("pets".into()),
            // The last prompt has none: its sampled answers alone, all tied, give no ranking.
            demonstration: (i < 2).then(|| format!(" dog{i}. ")),
        })
        .collect::<Vec<_>>();
    let config = CollectConfig {
        k: 3,
        max_new_tokens: 4,
        ..Default::default()
    };
    // The labeler prefers the demonstrations and ties every sampled answer. It matches them
    // whole: the random policy's samples can begin with "dog" too (one did, now and then, as
    // the seeded generator is shared with the tests running beside this one).
    let collected = collect_rankings(
        &policy,
        &template,
        &prompts,
        &config,
        |_, answer| f64::from(u8::from(matches!(answer, "dog0." | "dog1."))),
        |_| {},
    )
    .unwrap();
    assert_eq!(collected.demonstrations, 2);
    assert_eq!(collected.rankings.len(), 2, "{collected:?}");
    for (i, ranking) in collected.rankings.iter().enumerate() {
        // Trimmed, after the sampled answers, and above every one of them.
        let demo = ranking.k() - 1;
        assert_eq!(ranking.completions[demo], format!("dog{i}."));
        assert_eq!(ranking.tiers[0], vec![demo]);
        assert_eq!(ranking.pairs().len(), ranking.k() - 1);
        assert_eq!(ranking.family.as_deref(), Some("pets"));
    }
}

#[test]
fn the_likelihood_term_is_its_weight_times_the_answers_mean_log_probability() {
    let template = template();
    let pad = template.tokenizer().special(Special::Pad).unwrap();
    let device = Default::default();
    Inner::seed(&device, 9);
    let trunk = DecoderConfig::new(300, 32, 2, 4, 64)
        .init::<Inner>(&device)
        .unwrap();
    let plain = RewardModel::new(trunk.clone(), 0.5);
    let weight = 1.5;
    let with = plain
        .clone()
        .with_likelihood(template.answer_start_token(), weight);
    let prompt = Conversation::new(vec![Message::user("Which pet do you like?")]);
    let prompt_len = template.render_prompt(&prompt).unwrap().len();
    let rows = ["The cat.", "dog", "The dog barks, the cat sleeps."]
        .iter()
        .map(|a| ember_reward::answer_row(&template, &prompt, a).unwrap())
        .collect::<Vec<_>>();
    // Independently: the trunk's logits of each row alone, a log-softmax in f64, the answer's
    // tokens and the turn's end (positions prompt_len.. of the row) averaged.
    let expected = rows
        .iter()
        .map(|row| {
            let n = row.len();
            let tokens = burn::tensor::Tensor::<Inner, 2, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(row.iter().map(|&t| i64::from(t)).collect(), [1, n]),
                &device,
            );
            let logits = trunk.forward(tokens).into_data().to_vec::<f32>().unwrap();
            let vocab = logits.len() / n;
            let mut total = 0.0;
            for target in prompt_len..n {
                let at = &logits[(target - 1) * vocab..target * vocab];
                let max = at.iter().fold(f64::MIN, |m, &x| m.max(f64::from(x)));
                let lse = max
                    + at.iter()
                        .map(|&x| (f64::from(x) - max).exp())
                        .sum::<f64>()
                        .ln();
                total += f64::from(at[row[target] as usize]) - lse;
            }
            total / (n - prompt_len) as f64
        })
        .collect::<Vec<_>>();
    assert!(expected.iter().all(|&l| l < -1.0), "{expected:?}");
    for padding in [Padding::Right, Padding::Left] {
        let batch = ScoreBatch::new(&rows, pad, padding, 4, &device).unwrap();
        let (a, b) = (scores(&plain, &batch), scores(&with, &batch));
        for ((a, b), l) in a.iter().zip(&b).zip(&expected) {
            let term = f64::from(b - a);
            assert!(
                (term - weight * l).abs() < 1e-3,
                "{padding:?}: {term} vs {}",
                weight * l
            );
        }
    }
    // A row without the answer-start token has no answer: the term is 0.
    let bare = vec![vec![150, 151, 152, 153]];
    assert!(!bare[0].contains(&template.answer_start_token()));
    let batch = ScoreBatch::new(&bare, pad, Padding::Right, 4, &device).unwrap();
    assert!((scores(&plain, &batch)[0] - scores(&with, &batch)[0]).abs() < 1e-6);
    // The weight folds the normalisation's gain in too.
    let normalization = Normalization {
        gain: 2.0,
        bias: -0.5,
    };
    let batch = ScoreBatch::new(&rows, pad, Padding::Right, 4, &device).unwrap();
    let folded = scores(&with.clone().with_normalization(normalization), &batch);
    for (f, r) in folded.iter().zip(scores(&with, &batch)) {
        assert!((f64::from(*f) - normalization.apply(f64::from(r))).abs() < 1e-4);
    }
}
