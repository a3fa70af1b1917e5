//! Collecting rankings: the SFT policy answers each prompt K times, a labeler scores the
//! answers (and an expert's answer, when there is one), and their order (with optional
//! noise, to mimic labelers who disagree) is the ranking.

use burn::tensor::backend::Backend;
use ember_instruct::{ChatTemplate, Conversation};
use ember_transformer::{generate, Decoder, GenerateConfig, Sampling};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Ranking, Result};

/// How answers are sampled and ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// Answers per prompt (K).
    pub k: usize,
    /// New tokens per answer, at most.
    pub max_new_tokens: usize,
    /// How answers are drawn (a temperature of 1 samples the policy's own distribution).
    pub sampling: Sampling,
    /// Seed of the draws and of the noise.
    pub seed: u64,
    /// Standard deviation of Gaussian noise added to each labeler score before ranking; 0 for
    /// an exact labeler.
    pub noise: f64,
    /// Rows (prompt × answer) per generation batch.
    pub batch_size: usize,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            k: 4,
            max_new_tokens: 32,
            sampling: Sampling::Temperature { temperature: 1.0 },
            seed: 0,
            noise: 0.0,
            batch_size: 64,
        }
    }
}

impl CollectConfig {
    /// Checks the values (NaN fails every check).
    ///
    /// # Errors
    /// [`Error::Config`]: k < 2, no batch, no new token, a noise that is negative or not
    /// finite, or invalid sampling.
    pub fn validate(&self) -> Result<()> {
        if self.k < 2
            || self.batch_size == 0
            || self.max_new_tokens == 0
            || !(self.noise >= 0.0 && self.noise.is_finite())
        {
            return Err(Error::Config(
                "collecting needs k ≥ 2, batch_size ≥ 1, max_new_tokens ≥ 1 and a finite noise ≥ 0"
                    .into(),
            ));
        }
        Ok(self.sampling.validate()?)
    }
}

/// One prompt for [`collect_rankings`].
#[derive(Debug, Clone, PartialEq)]
pub struct CollectPrompt {
    /// The conversation so far, ending with the user's turn.
    pub prompt: Conversation,
    /// The task family, stored with the ranking.
    pub family: Option<String>,
    /// An expert's answer (the SFT demonstration), ranked among the policy's own answers as
    /// Stiennon et al. (2020) rank the human-written reference summaries among the policies'
    /// samples; `None` ranks the policy's answers only.
    pub demonstration: Option<String>,
}

/// What [`collect_rankings`] gathered.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// The rankings with at least one strict preference.
    pub rankings: Vec<Ranking>,
    /// Prompts left out because every answer got the same score (nothing to learn).
    pub all_tied: usize,
    /// Empty answers dropped (the policy ended its turn at once); a prompt left with fewer
    /// than two answers is dropped too.
    pub empty_answers: usize,
    /// Demonstrations ranked with the answers.
    pub demonstrations: usize,
}

/// One standard normal draw (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Samples `config.k` answers to each prompt from `policy` and ranks them, with the prompt's
/// demonstration when it has one (after the sampled answers), by `labeler(i, answer)`, the
/// score of an answer to prompt `i` (higher is better). The prompt's family, when given, is
/// stored with the ranking.
///
/// # Errors
/// A bad config, a prompt the template cannot render, or a generation error.
pub fn collect_rankings<B: Backend>(
    policy: &Decoder<B>,
    template: &ChatTemplate,
    prompts: &[CollectPrompt],
    config: &CollectConfig,
    mut labeler: impl FnMut(usize, &str) -> f64,
    mut on_batch: impl FnMut(usize),
) -> Result<Collected> {
    config.validate()?;
    let tokenizer = template.tokenizer();
    let stops = vec![template.stop_token(), template.eos_token()];
    let rows = prompts
        .iter()
        .map(|p| template.render_prompt(&p.prompt))
        .collect::<std::result::Result<Vec<_>, _>>()?
        .into_iter()
        .flat_map(|row| std::iter::repeat_n(row, config.k))
        .collect::<Vec<_>>();
    let mut answers = Vec::with_capacity(rows.len());
    for (c, chunk) in rows.chunks(config.batch_size).enumerate() {
        let generation = GenerateConfig {
            max_new_tokens: config.max_new_tokens,
            sampling: config.sampling,
            stop_tokens: stops.clone(),
            pad_token: template.pad_token(),
            seed: config.seed.wrapping_add((c * config.batch_size) as u64),
        };
        for output in generate(policy, chunk, &generation)? {
            answers.push(
                tokenizer
                    .decode_skip_special(output.content())?
                    .trim()
                    .to_string(),
            );
        }
        on_batch(chunk.len());
    }
    let mut noise = StdRng::seed_from_u64(config.seed ^ 0x005E_ED0F_1ABE_1E25);
    let mut collected = Collected::default();
    for (i, (prompt, group)) in prompts.iter().zip(answers.chunks(config.k)).enumerate() {
        let (mut completions, mut scores, mut noisy) = (Vec::new(), Vec::new(), Vec::new());
        let demonstration = prompt
            .demonstration
            .as_ref()
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty());
        collected.demonstrations += usize::from(demonstration.is_some());
        for answer in group.iter().chain(demonstration.as_ref()) {
            if answer.is_empty() {
                collected.empty_answers += 1;
                continue;
            }
            let score = labeler(i, answer);
            noisy.push(if config.noise > 0.0 {
                score + config.noise * gaussian(&mut noise)
            } else {
                score
            });
            completions.push(answer.clone());
            scores.push(score);
        }
        if completions.len() < 2 {
            continue;
        }
        // Ranked by the noisy labeler; the exact scores are kept for evaluation.
        let mut ranking = Ranking::from_scores(prompt.prompt.clone(), completions, noisy)?;
        ranking.scores = Some(scores);
        if ranking.pairs().is_empty() {
            collected.all_tied += 1;
            continue;
        }
        ranking.family = prompt.family.clone();
        collected.rankings.push(ranking);
    }
    Ok(collected)
}
