//! One rollout: the policy answers, the reward model scores, the reference gives the KL
//! penalty, and GAE turns the per-token rewards into advantages and returns.

use burn::module::Module;
use burn::tensor::backend::Backend;
use ember_reward::{Normalization, Padding, RewardModel, ScoreBatch};
use ember_transformer::{
    generate, Decoder, DecoderInput, FinishReason, GenerateConfig, Positions, Sampling,
};

use crate::metric;
use crate::sample::{gather_answers, padded_rows, PaddedRows};
use crate::{
    entropy, explained_variance, gae, shaped_score, token_logprobs, token_rewards, whiten, Error,
    PpoConfig, Prompt, Result, Sample,
};

/// What the policy acts in through a PPO run: the reward model that scores its answers and
/// the reference (the SFT model) the KL penalty is taken against, both without autodiff so
/// that no gradient can reach them, and the tokens that frame an answer.
pub struct Environment<B: Backend> {
    /// The SFT model, for the KL penalty.
    pub reference: Decoder<B>,
    /// The reward model.
    pub reward: RewardModel<B>,
    /// Its normalisation.
    pub normalization: Normalization,
    /// The token that ends an answer (the assistant's end marker); the reward model reads
    /// its score there.
    pub stop_token: u32,
    /// Other tokens that end generation (end of text).
    pub other_stops: Vec<u32>,
    /// The padding token.
    pub pad_token: u32,
}

/// What one rollout samples with.
#[derive(Debug, Clone, Copy)]
pub struct RolloutInputs<'a, B: Backend> {
    /// The policy that answers.
    pub policy: &'a Decoder<B>,
    /// Its critic.
    pub critic: &'a RewardModel<B>,
    /// Per answer to sample: the prompt's index in the run's prompt list, and the prompt.
    pub prompts: &'a [(usize, &'a Prompt)],
    /// How the answers are drawn: PPO samples at its temperature, the evaluation greedily.
    /// The log-probabilities are the policy's at `config.temperature` either way.
    pub sampling: Sampling,
    /// The KL coefficient β.
    pub beta: f64,
    /// Seed of the draws.
    pub seed: u64,
}

/// Samples answers to `inputs.prompts` from the policy and scores them: log-probabilities
/// under the policy and the reference, values, KL, the reward model's score, advantages and
/// returns. `label` sees each sample once its text and reward-model score are known, before
/// the rewards are formed (to add the judge's score, or to replace the score).
///
/// # Errors
/// From generation or the reward model.
pub fn rollout<B: Backend>(
    environment: &Environment<B>,
    inputs: &RolloutInputs<'_, B>,
    config: &PpoConfig,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    label: &dyn Fn(&mut Sample),
) -> Result<Vec<Sample>> {
    let RolloutInputs {
        policy,
        critic,
        prompts,
        sampling,
        beta,
        seed,
    } = *inputs;
    let frozen = environment;
    let device = policy
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let mut stops = vec![frozen.stop_token];
    stops.extend(&frozen.other_stops);
    let generation = GenerateConfig {
        max_new_tokens: config.max_new_tokens,
        sampling,
        stop_tokens: stops.clone(),
        pad_token: frozen.pad_token,
        seed,
    };
    let ids = prompts
        .iter()
        .map(|(_, p)| p.ids.clone())
        .collect::<Vec<_>>();
    let outputs = generate(policy, &ids, &generation)?;
    let mut samples = Vec::with_capacity(prompts.len());
    let mut reward_rows = Vec::with_capacity(prompts.len());
    let reward_context = frozen.reward.trunk().config().max_seq_len;
    for ((index, prompt), output) in prompts.iter().zip(outputs) {
        let content = output.content();
        let mut reward_row = prompt.ids.clone();
        reward_row.extend(content);
        // An answer that filled the context has no room for the end marker the reward model
        // reads its score at: its last tokens give way to it (such an answer is unfinished,
        // and `truncation_penalty`, when set, replaces its score anyway).
        if prompt.ids.len() >= reward_context {
            return Err(Error::Config(format!(
                "a prompt of {} tokens leaves no room in the reward model's context of \
                 {reward_context}",
                prompt.ids.len()
            )));
        }
        reward_row.truncate(reward_context - 1);
        reward_row.push(frozen.stop_token);
        reward_rows.push(reward_row);
        let mut row = prompt.ids.clone();
        row.extend(&output.tokens);
        samples.push(Sample {
            prompt: *index,
            row,
            prompt_len: prompt.ids.len(),
            finished: output.finish == FinishReason::Stop,
            answer: decode(content)?.trim().to_string(),
            score: 0.0,
            shaped: 0.0,
            old_logp: Vec::new(),
            ref_logp: Vec::new(),
            values: Vec::new(),
            kl: Vec::new(),
            advantages: Vec::new(),
            returns: Vec::new(),
            entropy: Vec::new(),
            judge: None,
        });
    }
    // The reward model's score of each answer.
    let heads = frozen.reward.trunk().config().n_heads;
    let batch = ScoreBatch::new(
        &reward_rows,
        frozen.pad_token,
        Padding::Right,
        heads,
        &device,
    )?;
    let raw = frozen
        .reward
        .score(&batch)
        .into_data()
        .to_vec::<f32>()
        .expect("floats");
    // Log-probabilities, entropies and values in one right-padded layout.
    let refs = samples.iter().collect::<Vec<_>>();
    let PaddedRows { tokens, seq } = padded_rows::<B>(&refs, frozen.pad_token, &device);
    let (logp, dist) = token_logprobs(policy, tokens.clone(), config.temperature);
    let (ref_logp, _) = token_logprobs(&frozen.reference, tokens.clone(), config.temperature);
    let values = critic
        .forward_all(DecoderInput {
            tokens,
            positions: Positions::Contiguous { start: 0 },
            mask: None,
        })
        .narrow(1, 0, seq - 1);
    let logp = gather_answers(logp, &refs);
    let ref_logp = gather_answers(ref_logp, &refs);
    let entropy = gather_answers(entropy(dist), &refs);
    let values = gather_answers(values, &refs);
    let mut rewards = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter_mut().enumerate() {
        sample.score = frozen.normalization.apply(f64::from(raw[i]));
        label(sample);
        sample.shaped = shaped_score(
            sample.score,
            sample.finished,
            config.truncation_penalty,
            config.score_clip,
        );
    }
    let baselines = if config.prompt_baseline {
        leave_one_out(
            &samples
                .iter()
                .map(|s| (s.prompt, s.shaped))
                .collect::<Vec<_>>(),
        )
    } else {
        vec![0.0; samples.len()]
    };
    for (i, sample) in samples.iter_mut().enumerate() {
        sample.kl = logp[i]
            .iter()
            .zip(&ref_logp[i])
            .map(|(&p, &q)| config.kl_estimator.estimate(p, q))
            .collect();
        sample.old_logp = logp[i].clone();
        sample.ref_logp = ref_logp[i].clone();
        sample.entropy = entropy[i].clone();
        sample.values = values[i].clone();
        rewards.push(token_rewards(
            &sample.kl,
            sample.shaped - baselines[i],
            beta,
        ));
    }
    if config.whiten_rewards {
        let flat = whiten(&rewards.concat(), false);
        let mut at = 0;
        for r in &mut rewards {
            let n = r.len();
            r.copy_from_slice(&flat[at..at + n]);
            at += n;
        }
    }
    for (sample, rewards) in samples.iter_mut().zip(&rewards) {
        let (advantages, returns) = gae(rewards, &sample.values, config.gamma, config.lambda);
        sample.advantages = advantages;
        sample.returns = returns;
    }
    let whitened = whiten(
        &samples
            .iter()
            .flat_map(|s| s.advantages.clone())
            .collect::<Vec<_>>(),
        true,
    );
    let mut at = 0;
    for sample in &mut samples {
        let n = sample.advantages.len();
        sample.advantages.copy_from_slice(&whitened[at..at + n]);
        at += n;
    }
    Ok(samples)
}

/// For each `(prompt, score)`, the mean score of the other answers to the same prompt (0 for
/// an answer with no sibling).
pub fn leave_one_out(scores: &[(usize, f64)]) -> Vec<f64> {
    let mut totals: std::collections::HashMap<usize, (f64, usize)> = Default::default();
    for &(prompt, score) in scores {
        let entry = totals.entry(prompt).or_default();
        entry.0 += score;
        entry.1 += 1;
    }
    scores
        .iter()
        .map(|&(prompt, score)| {
            let (sum, n) = totals[&prompt];
            if n > 1 {
                (sum - score) / (n - 1) as f64
            } else {
                0.0
            }
        })
        .collect()
}

pub(crate) fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Summary metrics of a rollout batch: mean score, shaped score, KL (per answer), entropy (per
/// token), answer length, share cut off, the judge's mean, the critic's explained variance.
pub fn rollout_metrics(samples: &[Sample]) -> Vec<(String, f64)> {
    let values = samples
        .iter()
        .flat_map(|s| s.values.clone())
        .collect::<Vec<_>>();
    let returns = samples
        .iter()
        .flat_map(|s| s.returns.clone())
        .collect::<Vec<_>>();
    let mut metrics = vec![
        (
            metric::SCORE.to_string(),
            mean(samples.iter().map(|s| s.score)),
        ),
        (
            metric::SHAPED_SCORE.into(),
            mean(samples.iter().map(|s| s.shaped)),
        ),
        (
            metric::KL.into(),
            mean(samples.iter().map(|s| s.kl.iter().sum::<f64>())),
        ),
        (
            metric::ENTROPY.into(),
            mean(samples.iter().flat_map(|s| s.entropy.clone())),
        ),
        (
            metric::ANSWER_TOKENS.into(),
            mean(samples.iter().map(|s| (s.row.len() - s.prompt_len) as f64)),
        ),
        (
            metric::CUT_OFF.into(),
            mean(samples.iter().map(|s| f64::from(u8::from(!s.finished)))),
        ),
        (
            metric::EXPLAINED_VARIANCE.into(),
            explained_variance(&values, &returns),
        ),
    ];
    if samples.iter().any(|s| s.judge.is_some()) {
        metrics.push((
            metric::JUDGE.into(),
            mean(samples.iter().filter_map(|s| s.judge)),
        ));
        let (tied, accuracy) = judge_agreement(samples);
        metrics.push((metric::JUDGE_TIED.into(), tied));
        if let Some(accuracy) = accuracy {
            metrics.push((metric::REWARD_ACCURACY.into(), accuracy));
        }
    }
    metrics
}

/// Over the prompts of a rollout batch: the share whose answers all got the same judge score
/// (no signal to learn from), and over the pairs of answers to one prompt that the judge
/// orders, the share the reward model's scores order the same way (`None` without such a
/// pair). Answers without a judge's score are left out.
pub fn judge_agreement(samples: &[Sample]) -> (f64, Option<f64>) {
    let mut groups: std::collections::BTreeMap<usize, Vec<(f64, f64)>> = Default::default();
    for s in samples {
        if let Some(judge) = s.judge {
            groups.entry(s.prompt).or_default().push((judge, s.score));
        }
    }
    let tied = groups
        .values()
        .filter(|g| g.iter().all(|(j, _)| *j == g[0].0))
        .count();
    let (mut agree, mut pairs) = (0.0, 0usize);
    for group in groups.values() {
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                if a.0 == b.0 {
                    continue;
                }
                pairs += 1;
                let same = (a.0 - b.0).signum() == (a.1 - b.1).signum();
                // A tie of the reward model's scores is half right.
                agree += if a.1 == b.1 {
                    0.5
                } else {
                    f64::from(u8::from(same))
                };
            }
        }
    }
    (
        tied as f64 / groups.len().max(1) as f64,
        (pairs > 0).then(|| agree / pairs as f64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(prompt: usize, judge: f64, score: f64) -> Sample {
        Sample {
            prompt,
            row: vec![],
            prompt_len: 0,
            finished: true,
            answer: String::new(),
            score,
            shaped: score,
            old_logp: vec![],
            ref_logp: vec![],
            values: vec![],
            kl: vec![],
            advantages: vec![],
            returns: vec![],
            entropy: vec![],
            judge: Some(judge),
        }
    }

    #[test]
    fn agreement_with_the_judge_counts_tied_prompts_and_ordered_pairs() {
        let samples = [
            // Prompt 0: the judge orders 3 pairs; the reward model gets (1.0 > 0.1) and
            // (1.0 > 0.0) right and (0.1 > 0.0) wrong.
            judged(0, 1.0, 2.0),
            judged(0, 0.1, -1.0),
            judged(0, 0.0, 0.5),
            // Prompt 1: every answer tied: no signal, no pair.
            judged(1, 0.6, 0.3),
            judged(1, 0.6, 0.9),
            // Prompt 2: one pair, the reward model ties it (half right).
            judged(2, 1.0, 0.2),
            judged(2, 0.6, 0.2),
        ];
        let (tied, accuracy) = judge_agreement(&samples);
        assert!((tied - 1.0 / 3.0).abs() < 1e-12);
        assert!((accuracy.unwrap() - 2.5 / 4.0).abs() < 1e-12);
        assert_eq!(judge_agreement(&samples[3..5]), (1.0, None));
    }

    #[test]
    fn the_leave_one_out_baseline_is_the_mean_of_the_siblings() {
        let baselines = leave_one_out(&[(0, 1.0), (1, 5.0), (0, 2.0), (0, 6.0), (2, 3.0)]);
        assert_eq!(baselines, vec![4.0, 0.0, 3.5, 1.5, 0.0]);
    }
}
