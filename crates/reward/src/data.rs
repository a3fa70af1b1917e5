//! Rankings of answers: K-way (`{prompt, completions, ranking}`, best first, ties allowed) and
//! pairwise (`{prompt, chosen, rejected}`, TRL's messages variant and Anthropic HH-RLHF's text
//! form). Every kind becomes a [`Ranking`]; a malformed record is reported with its file and
//! line.

use std::io::Write;
use std::path::Path;

use ember_instruct::formats::{kind, parse_records, text_field, turns};
use ember_instruct::{check_prompt, parse_prompt};
use ember_instruct::{Conversation, Message, OnError, Role};
use serde_json::{json, Map, Value};

use crate::{Error, Result};

/// One prompt, K ≥ 2 answers to it and a labeler's ranking of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// The conversation so far; it ends with the user's turn.
    pub prompt: Conversation,
    /// The answers.
    pub completions: Vec<String>,
    /// Indices into `completions`, best tier first; answers in one tier are tied.
    pub tiers: Vec<Vec<usize>>,
    /// The labeler's score of each answer, when it gave one (the built-in judge does).
    pub scores: Option<Vec<f64>>,
    /// The task family of the prompt, when known.
    pub family: Option<String>,
}

fn check_tiers(k: usize, tiers: &[Vec<usize>]) -> std::result::Result<(), String> {
    if k < 2 {
        return Err(format!("a ranking needs at least 2 answers, found {k}"));
    }
    let mut seen = vec![false; k];
    for tier in tiers {
        if tier.is_empty() {
            return Err("an empty tie group in `ranking`".into());
        }
        for &i in tier {
            if i >= k {
                return Err(format!(
                    "rank entry {i} is out of range: there are {k} answers (0 to {})",
                    k - 1
                ));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("answer {i} is ranked twice"));
            }
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(format!("answer {missing} is not ranked"));
    }
    Ok(())
}

impl Ranking {
    /// A ranking of `completions` to `prompt`, `tiers` best first.
    ///
    /// # Errors
    /// [`Error::Ranking`]: fewer than two answers, an empty answer, an index out of range,
    /// ranked twice or not at all, or a prompt that does not end with the user.
    pub fn new(
        prompt: Conversation,
        completions: Vec<String>,
        tiers: Vec<Vec<usize>>,
    ) -> Result<Self> {
        Self::checked(prompt, completions, tiers).map_err(Error::Ranking)
    }

    fn checked(
        prompt: Conversation,
        completions: Vec<String>,
        tiers: Vec<Vec<usize>>,
    ) -> std::result::Result<Self, String> {
        check_prompt(&prompt)?;
        if let Some(i) = completions.iter().position(|c| c.trim().is_empty()) {
            return Err(format!("answer {i} is empty"));
        }
        check_tiers(completions.len(), &tiers)?;
        Ok(Self {
            prompt,
            completions,
            tiers,
            scores: None,
            family: None,
        })
    }

    /// Ranks `completions` by a labeler's `scores` (higher is better); equal scores tie.
    ///
    /// # Errors
    /// As [`Ranking::new`], or a score per answer missing or not finite.
    pub fn from_scores(
        prompt: Conversation,
        completions: Vec<String>,
        scores: Vec<f64>,
    ) -> Result<Self> {
        if scores.len() != completions.len() || scores.iter().any(|s| !s.is_finite()) {
            return Err(Error::Ranking(format!(
                "{} finite scores are needed for {} answers",
                completions.len(),
                completions.len()
            )));
        }
        let mut order = (0..scores.len()).collect::<Vec<_>>();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let mut tiers: Vec<Vec<usize>> = Vec::new();
        for i in order {
            match tiers.last_mut() {
                Some(tier) if scores[tier[0]] == scores[i] => tier.push(i),
                _ => tiers.push(vec![i]),
            }
        }
        let mut ranking = Self::new(prompt, completions, tiers)?;
        ranking.scores = Some(scores);
        Ok(ranking)
    }

    /// The number of answers.
    pub fn k(&self) -> usize {
        self.completions.len()
    }

    /// Every pair `(better, worse)` the ranking orders strictly: C(K, 2) without ties.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for (t, tier) in self.tiers.iter().enumerate() {
            for &better in tier {
                for worse_tier in &self.tiers[t + 1..] {
                    pairs.extend(worse_tier.iter().map(|&worse| (better, worse)));
                }
            }
        }
        pairs
    }

    /// The record as Ember writes it: `{prompt, completions, ranking}`, plus `scores` and
    /// `family` when known. A prompt of a single user turn is written as a string.
    pub fn to_json(&self) -> Value {
        let prompt = match self.prompt.messages.as_slice() {
            [only] if only.role == Role::User => Value::String(only.content.clone()),
            messages => Value::Array(
                messages
                    .iter()
                    .map(|m| json!({"role": role_name(m.role), "content": m.content}))
                    .collect(),
            ),
        };
        let ranking = self
            .tiers
            .iter()
            .map(|tier| match tier.as_slice() {
                [one] => json!(one),
                many => json!(many),
            })
            .collect::<Vec<_>>();
        let mut record = Map::new();
        record.insert("prompt".into(), prompt);
        record.insert("completions".into(), json!(self.completions));
        record.insert("ranking".into(), Value::Array(ranking));
        if let Some(scores) = &self.scores {
            record.insert("scores".into(), json!(scores));
        }
        if let Some(family) = &self.family {
            record.insert("family".into(), json!(family));
        }
        Value::Object(record)
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The rankings read from a file.
#[derive(Debug, Default)]
pub struct Rankings {
    /// The well-formed records, in file order.
    pub rankings: Vec<Ranking>,
    /// The malformed records that were skipped (empty unless [`OnError::Skip`]).
    pub skipped: Vec<Error>,
}

/// Reads rankings from a JSONL file (or a JSON array), telling each record's kind by its keys:
/// - `{"prompt", "completions": [...], "ranking": [...]}`: K-way, `ranking` lists answer
///   indices best first, a nested list for a tie (`[2, [0, 3], 1]`); optional `scores`
///   and `family`;
/// - `{"prompt": "…", "chosen": "…", "rejected": "…"}`: a pair;
/// - `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}` or, without
///   `prompt`, `{"chosen": [messages], "rejected": [messages]}` sharing all but the last
///   (assistant) message: TRL's messages variants;
/// - `{"chosen": "\n\nHuman: … \n\nAssistant: …", "rejected": …}`: Anthropic HH-RLHF.
///
/// # Errors
/// A file that cannot be read; the first malformed record under [`OnError::Stop`].
pub fn read_rankings(path: &Path, on_error: OnError) -> Result<Rankings> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_rankings(path, &text, on_error)
}

/// [`read_rankings`] on text already read from `path` (which only names the file in errors).
///
/// # Errors
/// As [`read_rankings`].
pub fn parse_rankings(path: &Path, text: &str, on_error: OnError) -> Result<Rankings> {
    let records = parse_records(path, text)?;
    let mut out = Rankings::default();
    for (line, record) in records {
        let parsed = record
            .and_then(parse_record)
            .map_err(|reason| Error::BadRecord {
                path: path.to_path_buf(),
                line,
                reason,
            });
        match (parsed, on_error) {
            (Ok(ranking), _) => out.rankings.push(ranking),
            (Err(e), OnError::Stop) => return Err(e),
            (Err(e), OnError::Skip) => out.skipped.push(e),
        }
    }
    Ok(out)
}

/// Writes rankings as JSONL, atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_rankings(path: &Path, rankings: &[Ranking]) -> Result<()> {
    let mut text = Vec::new();
    for ranking in rankings {
        serde_json::to_writer(&mut text, &ranking.to_json()).expect("JSON values serialise");
        text.write_all(b"\n").expect("writing to memory");
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    ember_tokenizer::write_atomically(path, &text)?;
    Ok(())
}

fn index(value: &Value) -> std::result::Result<usize, String> {
    value
        .as_u64()
        .map(|i| i as usize)
        .ok_or_else(|| format!("rank entries must be answer indices (integers ≥ 0), found {value}"))
}

fn parse_record(map: Map<String, Value>) -> std::result::Result<Ranking, String> {
    if map.contains_key("completions") {
        return parse_k_way(&map);
    }
    if !(map.contains_key("chosen") && map.contains_key("rejected")) {
        return Err(
            "cannot tell the record's kind: expected `completions` and `ranking`, or `chosen` and `rejected`"
                .into(),
        );
    }
    let (prompt, chosen, rejected) = match (&map.get("prompt"), &map["chosen"], &map["rejected"]) {
        (Some(p), Value::String(c), Value::String(r)) => (parse_prompt(p)?, c.clone(), r.clone()),
        (Some(p), c @ Value::Array(_), r @ Value::Array(_)) => {
            let (prefix_c, chosen) = split_last_answer(&turns(c, "role", "content")?, "chosen")?;
            let (prefix_r, rejected) =
                split_last_answer(&turns(r, "role", "content")?, "rejected")?;
            if prefix_c != prefix_r {
                return Err("`chosen` and `rejected` differ before their last turn".into());
            }
            let mut messages = parse_prompt(p)?.messages;
            messages.extend(prefix_c);
            let prompt = Conversation::new(messages);
            check_prompt(&prompt)?;
            (prompt, chosen, rejected)
        }
        (None, c, r) => {
            let (c, r) =
                match (c, r) {
                    (Value::String(c), Value::String(r)) => (hh_turns(c)?, hh_turns(r)?),
                    (Value::Array(_), Value::Array(_)) => {
                        (turns(c, "role", "content")?, turns(r, "role", "content")?)
                    }
                    _ => return Err(
                        "`chosen` and `rejected` must both be strings or both lists of messages"
                            .into(),
                    ),
                };
            let (prefix_c, chosen) = split_last_answer(&c, "chosen")?;
            let (prefix_r, rejected) = split_last_answer(&r, "rejected")?;
            if prefix_c != prefix_r {
                return Err("`chosen` and `rejected` differ before their last turn".into());
            }
            let prompt = Conversation::new(prefix_c);
            check_prompt(&prompt)?;
            (prompt, chosen, rejected)
        }
        _ => {
            return Err(
                "`chosen` and `rejected` must both be strings or both lists of messages".into(),
            )
        }
    };
    Ranking::checked(prompt, vec![chosen, rejected], vec![vec![0], vec![1]])
}

fn split_last_answer(
    messages: &[Message],
    name: &str,
) -> std::result::Result<(Vec<Message>, String), String> {
    match messages.split_last() {
        Some((last, prefix)) if last.role == Role::Assistant => {
            Ok((prefix.to_vec(), last.content.clone()))
        }
        _ => Err(format!("`{name}` must end with an assistant turn")),
    }
}

/// Anthropic HH-RLHF's text form: `\n\nHuman: …\n\nAssistant: …`, any number of turns.
fn hh_turns(text: &str) -> std::result::Result<Vec<Message>, String> {
    const MARKERS: [(&str, Role); 2] = [
        ("\n\nHuman:", Role::User),
        ("\n\nAssistant:", Role::Assistant),
    ];
    let mut cuts = Vec::new();
    for (marker, role) in MARKERS {
        cuts.extend(
            text.match_indices(marker)
                .map(|(at, m)| (at, at + m.len(), role)),
        );
    }
    cuts.sort_unstable_by_key(|c| c.0);
    let Some(first) = cuts.first() else {
        return Err("expected `\\n\\nHuman:` and `\\n\\nAssistant:` turns".into());
    };
    if !text[..first.0].trim().is_empty() {
        return Err("text before the first `\\n\\nHuman:` turn".into());
    }
    Ok(cuts
        .iter()
        .enumerate()
        .map(|(i, &(_, start, role))| {
            let end = cuts.get(i + 1).map_or(text.len(), |next| next.0);
            Message {
                role,
                content: text[start..end].trim().to_string(),
            }
        })
        .collect())
}

fn parse_k_way(map: &Map<String, Value>) -> std::result::Result<Ranking, String> {
    let prompt = parse_prompt(map.get("prompt").ok_or("missing `prompt`")?)?;
    let completions = match &map["completions"] {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "answer {i} must be a string, found {}",
                    kind(other)
                )),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        other => {
            return Err(format!(
                "`completions` must be a list, found {}",
                kind(other)
            ))
        }
    };
    let tiers = match map.get("ranking") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::Array(tie) => tie.iter().map(index).collect(),
                one => index(one).map(|i| vec![i]),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("`ranking` must be a list, found {}", kind(other))),
        None => return Err("missing `ranking`".into()),
    };
    let mut ranking = Ranking::checked(prompt, completions, tiers)?;
    ranking.scores = match map.get("scores") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.len() == ranking.k() => Some(
            items
                .iter()
                .map(|s| {
                    s.as_f64()
                        .ok_or_else(|| format!("score {s} is not a number"))
                })
                .collect::<std::result::Result<_, _>>()?,
        ),
        Some(_) => return Err("`scores` must be a list with one number per answer".into()),
    };
    ranking.family = match map.get("family") {
        None | Some(Value::Null) => None,
        Some(_) => Some(text_field(map, "family")?),
    };
    Ok(ranking)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Conversation {
        Conversation::new(vec![Message::user(text)])
    }

    #[test]
    fn pairs_of_a_ranking_with_a_tie() {
        let ranking = Ranking::new(
            user("q"),
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
            vec![vec![2], vec![0, 3], vec![1]],
        )
        .unwrap();
        assert_eq!(
            ranking.pairs(),
            vec![(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
        );
        let full = Ranking::new(
            user("q"),
            vec!["a".into(), "b".into(), "c".into()],
            vec![vec![1], vec![0], vec![2]],
        )
        .unwrap();
        assert_eq!(full.pairs().len(), 3, "C(3, 2) pairs without ties");
    }

    #[test]
    fn from_scores_ties_equal_scores() {
        let ranking = Ranking::from_scores(
            user("q"),
            vec!["a".into(), "b".into(), "c".into()],
            vec![0.1, 1.0, 0.1],
        )
        .unwrap();
        assert_eq!(ranking.tiers, vec![vec![1], vec![0, 2]]);
    }

    #[test]
    fn hh_text_becomes_turns() {
        let turns =
            hh_turns("\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: Bye?\n\nAssistant: Bye.")
                .unwrap();
        let roles = turns.iter().map(|m| m.role).collect::<Vec<_>>();
        assert_eq!(
            roles,
            vec![Role::User, Role::Assistant, Role::User, Role::Assistant]
        );
        assert_eq!(turns[2].content, "Bye?");
    }
}
