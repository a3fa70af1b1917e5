//! PPO end to end on tiny models: KL is 0 against itself, rewards land on the last answer token
//! of right-padded rows, and a few PPO steps raise the reward model's score.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use ember_ppo::{
    answer_mask, rollout, spread, token_rewards, ActorCritic, Environment, KlControl, Ppo,
    PpoConfig, PpoData, Prompt, RolloutInputs, Sample,
};
use ember_reward::{Normalization, RewardModel};
use ember_train::{fit, MetricsLog, OptimizerConfig, RunDir, TrainConfig};
use ember_transformer::{Decoder, DecoderConfig, Sampling};

type B = Autodiff<Flex>;
type Inner = Flex;

const VOCAB: usize = 24;
const STOP: u32 = 1;
const PAD: u32 = 2;

fn model<C: Backend>(seed: u64) -> Decoder<C> {
    let device = Default::default();
    C::seed(&device, seed);
    DecoderConfig::new(VOCAB, 32, 2, 4, 32)
        .init::<C>(&device)
        .unwrap()
}

fn prompts(n: usize) -> Vec<Prompt> {
    (0..n)
        .map(|i| Prompt {
            ids: (0..2 + i % 3).map(|t| 3 + ((i + t) % 20) as u32).collect(),
            text: format!("prompt {i}"),
            family: None,
        })
        .collect()
}

fn environment(reference: Decoder<Inner>, reward: RewardModel<Inner>) -> Environment<Inner> {
    Environment {
        reference,
        reward,
        normalization: Normalization::default(),
        stop_token: STOP,
        other_stops: vec![0],
        pad_token: PAD,
    }
}

fn decode(ids: &[u32]) -> ember_ppo::Result<String> {
    Ok(ids.iter().map(|t| format!("<{t}>")).collect())
}

/// One rollout of six prompts by `policy` at T = 1 with a zero critic.
fn six_answers(
    policy: &Decoder<Inner>,
    environment: &Environment<Inner>,
    max_new_tokens: usize,
) -> Vec<Sample> {
    let critic = RewardModel::new(model::<Inner>(2), 0.0);
    let prompts = prompts(6);
    let picked = prompts.iter().enumerate().collect::<Vec<_>>();
    let config = PpoConfig {
        max_new_tokens,
        ..Default::default()
    };
    let inputs = RolloutInputs {
        policy,
        critic: &critic,
        prompts: &picked,
        sampling: Sampling::Temperature { temperature: 1.0 },
        beta: 0.1,
        seed: 7,
    };
    rollout(environment, &inputs, &config, &decode, &|_| {}).unwrap()
}

#[test]
fn kl_is_zero_when_the_policy_is_the_reference_and_the_score_lands_on_the_last_token() {
    let policy = model::<Inner>(1);
    let environment = environment(policy.clone(), RewardModel::new(model::<Inner>(3), 1.0));
    let samples = six_answers(&policy, &environment, 6);
    for s in &samples {
        assert!(s.kl.iter().all(|&k| k == 0.0), "{:?}", s.kl);
        assert_eq!(s.old_logp, s.ref_logp);
        // A zero head: every value is 0 before training.
        assert!(s.values.iter().all(|&v| v == 0.0));
        assert_eq!(s.kl.len(), s.row.len() - s.prompt_len);
        assert!(s.score.abs() > 0.0);
    }
    // Rows of different lengths, right-padded: each answer's reward is at its own last token.
    let refs = samples.iter().collect::<Vec<_>>();
    let seq = refs.iter().map(|s| s.row.len()).max().unwrap();
    let lengths = refs.iter().map(|s| s.row.len()).collect::<Vec<_>>();
    assert!(
        lengths.iter().any(|&l| l != seq),
        "a padded row: {lengths:?}"
    );
    let rewards = refs
        .iter()
        .map(|s| token_rewards(&s.kl, s.shaped, 0.1))
        .collect::<Vec<_>>();
    let laid = spread(
        &refs,
        seq,
        &rewards.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    );
    let mask = answer_mask(&refs, seq);
    for (row, s) in refs.iter().enumerate() {
        let line = &laid[row * (seq - 1)..(row + 1) * (seq - 1)];
        let last = s.row.len() - 2;
        assert_eq!(f64::from(line[last]), f64::from(s.shaped as f32));
        assert!(
            line[last + 1..].iter().all(|&r| r == 0.0),
            "nothing after the answer"
        );
        let in_answer = &mask[row * (seq - 1)..(row + 1) * (seq - 1)];
        assert_eq!(in_answer[last], 1.0);
        assert!(in_answer[last + 1..].iter().all(|&m| m == 0.0));
        assert_eq!(in_answer[s.prompt_len - 2], 0.0, "not on the prompt");
    }
}

#[test]
fn a_few_ppo_steps_raise_the_reward() {
    let device = Default::default();
    let policy = model::<B>(11);
    let reference = policy.valid();
    let critic = RewardModel::new(model::<B>(12), 0.0);
    // A random reward model with a strong head: it prefers some answers to others.
    let reward = RewardModel::new(model::<Inner>(13), 2.0);
    let config = PpoConfig {
        rollout_prompts: 32,
        epochs: 2,
        minibatches: 2,
        max_new_tokens: 4,
        kl_control: KlControl::Fixed { beta: 0.01 },
        truncation_penalty: None,
        score_clip: None,
        seed: 5,
        ..Default::default()
    };
    let iterations = 16;
    let steps = iterations * config.updates_per_rollout();
    let data = PpoData {
        environment: environment(reference, reward),
        prompts: prompts(32),
        eval_prompts: prompts(8),
        judge: None,
        decode: Box::new(decode),
        ptx: None,
    };
    let mut ppo = Ppo::<B>::new(config, data, &device).unwrap();
    let train = TrainConfig {
        steps,
        progress: false,
        eval_every: None,
        checkpoint_every: None,
        optimizer: OptimizerConfig {
            lr: 3e-3,
            warmup_steps: 0,
            min_lr_ratio: 1.0,
            weight_decay: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    fit(ActorCritic::new(policy, critic), &mut ppo, &train, &run).unwrap();
    // The score of each rollout batch, from the metrics the loop logged.
    let text =
        std::fs::read_to_string(MetricsLog::open(&run.metrics(), steps).unwrap().path()).unwrap();
    let scores = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["split"] == "train")
        .filter_map(|v| v.get("score").and_then(serde_json::Value::as_f64))
        .collect::<Vec<_>>();
    assert_eq!(scores.len(), iterations, "{text}");
    let first = scores[0];
    let last = scores[iterations - 3..].iter().sum::<f64>() / 3.0;
    assert!(last > first + 0.5, "scores by rollout batch: {scores:?}");
}

#[test]
fn a_policy_and_a_critic_from_the_same_weights_do_not_share_parameters() {
    use burn::module::{list_param_ids, Module};
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    ember_train::save_model(&model::<B>(21), dir.path()).unwrap();
    let policy = ember_train::load_model::<B>(dir.path(), &device).unwrap();
    let trunk = ember_train::load_model::<B>(dir.path(), &device).unwrap();
    // Loaded twice from one file, the two copies carry the same parameter ids …
    let ids = |m: &Decoder<B>| list_param_ids(m);
    assert_eq!(ids(&policy), ids(&trunk));
    // … and the pair gets them apart, so the optimiser keeps their gradients apart.
    let pair = ActorCritic::new(policy, RewardModel::new(trunk, 0.0));
    let all = list_param_ids(&pair);
    let unique = all.iter().collect::<std::collections::HashSet<_>>();
    assert_eq!(unique.len(), all.len());
    assert_eq!(pair.num_params(), 2 * pair.policy.num_params() + 33);
}

#[test]
fn an_answer_that_fills_the_context_is_scored_without_overflowing_it() {
    // Context 32, prompts of up to 4 tokens, up to 64 new tokens: every unfinished answer fills
    // the context, and the reward model's end marker must still fit in it.
    let policy = model::<Inner>(1);
    // Only the assistant's end marker stops an answer (not token 0 too).
    let environment = Environment {
        other_stops: Vec::new(),
        ..environment(policy.clone(), RewardModel::new(model::<Inner>(3), 1.0))
    };
    let samples = six_answers(&policy, &environment, 64);
    let full = samples.iter().filter(|s| s.row.len() == 32).count();
    assert!(full > 0, "no answer filled the context");
    for s in &samples {
        assert!(s.row.len() <= 32);
        assert!(s.score.is_finite());
    }
}
