//! Rankings as token rows: each answer after its prompt, ending with the assistant's end
//! marker where the reward model reads its score.

use ember_instruct::ChatTemplate;

use crate::{Ranking, Result};

/// A ranking as token rows: prompt + answer + the assistant's end marker, where the score is
/// read.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRanking {
    /// One row per answer.
    pub rows: Vec<Vec<u32>>,
    /// The ranking's strictly ordered pairs `(better, worse)`.
    pub pairs: Vec<(usize, usize)>,
    /// The labeler's scores, when known.
    pub scores: Option<Vec<f64>>,
}

impl EncodedRanking {
    /// The number of answers.
    pub fn k(&self) -> usize {
        self.rows.len()
    }
}

/// The token row the reward model scores for `answer` to `prompt`: the rendered prompt, the
/// answer, and the assistant's end marker (the last real token, where the score is read;
/// it is not the end-of-text or the padding token).
///
/// # Errors
/// A prompt the template cannot render.
pub fn answer_row(
    template: &ChatTemplate,
    prompt: &ember_instruct::Conversation,
    answer: &str,
) -> Result<Vec<u32>> {
    let mut row = template.render_prompt(prompt)?;
    row.extend(template.tokenizer().encode(answer)?);
    row.push(template.stop_token());
    Ok(row)
}

/// Encodes rankings, leaving out those with a row longer than `max_len` tokens; the second
/// value counts them.
///
/// # Errors
/// A prompt the template cannot render.
pub fn encode_rankings(
    template: &ChatTemplate,
    rankings: &[Ranking],
    max_len: usize,
) -> Result<(Vec<EncodedRanking>, usize)> {
    let mut encoded = Vec::with_capacity(rankings.len());
    let mut too_long = 0;
    for ranking in rankings {
        let rows = ranking
            .completions
            .iter()
            .map(|answer| answer_row(template, &ranking.prompt, answer))
            .collect::<Result<Vec<_>>>()?;
        if rows.iter().any(|r| r.len() > max_len) {
            too_long += 1;
            continue;
        }
        encoded.push(EncodedRanking {
            rows,
            pairs: ranking.pairs(),
            scores: ranking.scores.clone(),
        });
    }
    Ok((encoded, too_long))
}
