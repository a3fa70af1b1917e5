//! Prompt files: JSONL (or a JSON array) of `{"prompt": …}` records, the prompt a string (one
//! user turn) or a list of messages ending with the user's, optionally with an `answer`. What
//! generation, PPO and reward scoring read.

use std::path::Path;

use serde_json::Value;

use crate::formats::{kind, parse_records, read_text, turns, Invalid};
use crate::{Conversation, Error, Message, OnError, Result, Role};

/// One prompt record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRecord {
    /// The line the record starts on.
    pub line: usize,
    /// The conversation so far, ending with the user's turn.
    pub prompt: Conversation,
    /// The prompt as given when it was a plain string (what a raw continuation starts from).
    pub text: Option<String>,
    /// The record's `answer`, when it has a string one.
    pub answer: Option<String>,
}

/// The prompts read from a file.
#[derive(Debug, Default)]
pub struct Prompts {
    /// The well-formed records, in file order.
    pub prompts: Vec<PromptRecord>,
    /// The malformed records that were skipped (empty unless [`OnError::Skip`]).
    pub skipped: Vec<Error>,
}

/// A prompt as records write it: a string (one user turn) or a list of messages that ends
/// with the user.
///
/// # Errors
/// Why it is not one.
pub fn parse_prompt(value: &Value) -> std::result::Result<Conversation, Invalid> {
    let prompt = match value {
        Value::String(text) => Conversation::new(vec![Message::user(text.clone())]),
        Value::Array(_) => Conversation::new(turns(value, "role", "content")?),
        other => {
            return Err(Invalid(format!(
                "`prompt` must be a string or a list of messages, found {}",
                kind(other)
            )))
        }
    };
    check_prompt(&prompt)?;
    Ok(prompt)
}

/// Checks that a prompt's turns are in order and end with the user's turn (so that the
/// template renders it).
///
/// # Errors
/// An empty prompt, turns out of order, or one ending with another role.
pub fn check_prompt(prompt: &Conversation) -> std::result::Result<(), Invalid> {
    match prompt.messages.last() {
        Some(m) if m.role == Role::User => prompt.check_turns(Role::User).map_err(Invalid),
        Some(m) => Err(Invalid(format!(
            "the prompt must end with a user turn, not {:?}",
            m.role
        ))),
        None => Err(Invalid("the prompt is empty".into())),
    }
}

/// Reads a prompt file. `needs_answer` makes a missing string `answer` an error of its record.
///
/// # Errors
/// A file that cannot be read; the first malformed record under [`OnError::Stop`].
pub fn read_prompts(path: &Path, needs_answer: bool, on_error: OnError) -> Result<Prompts> {
    parse_prompts(path, &read_text(path)?, needs_answer, on_error)
}

/// [`read_prompts`] on text already read from `path` (which only names the file in errors).
///
/// # Errors
/// As [`read_prompts`].
pub fn parse_prompts(
    path: &Path,
    text: &str,
    needs_answer: bool,
    on_error: OnError,
) -> Result<Prompts> {
    let mut out = Prompts::default();
    for (line, record) in parse_records(path, text)? {
        let parsed = record.and_then(|map| {
            let value = map.get("prompt").ok_or("missing `prompt`")?;
            let prompt = parse_prompt(value)?;
            let answer = match map.get("answer") {
                Some(Value::String(answer)) => Some(answer.clone()),
                Some(other) if needs_answer => {
                    return Err(format!("`answer` must be a string, found {}", kind(other)))
                }
                None if needs_answer => return Err("missing string `answer`".into()),
                _ => None,
            };
            Ok(PromptRecord {
                line,
                prompt,
                text: value.as_str().map(str::to_owned),
                answer,
            })
        });
        match (parsed, on_error) {
            (Ok(record), _) => out.prompts.push(record),
            (Err(reason), OnError::Stop) => {
                return Err(Error::BadRecord {
                    path: path.to_path_buf(),
                    line,
                    reason,
                })
            }
            (Err(reason), OnError::Skip) => out.skipped.push(Error::BadRecord {
                path: path.to_path_buf(),
                line,
                reason,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_strings_or_messages_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("ember-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prompts.jsonl");
        std::fs::write(
            &path,
            concat!(
                "{\"prompt\": \"What is 2 + 3?\", \"answer\": \"5\"}\n",
                "\n",
                "{\"prompt\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}]}\n",
                "{\"prompt\": [{\"role\": \"assistant\", \"content\": \"Hi\"}]}\n",
                "{\"answer\": \"5\"}\n",
            ),
        )
        .unwrap();
        let read = read_prompts(&path, false, OnError::Skip).unwrap();
        assert_eq!(read.prompts.len(), 2);
        assert_eq!(read.prompts[0].text.as_deref(), Some("What is 2 + 3?"));
        assert_eq!(read.prompts[0].answer.as_deref(), Some("5"));
        assert_eq!(read.prompts[1].line, 3);
        assert_eq!(read.prompts[1].prompt.messages.len(), 2);
        assert_eq!(read.prompts[1].text, None);
        let skipped = read
            .skipped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(skipped[0].ends_with(":4: the prompt must end with a user turn, not Assistant"));
        assert!(skipped[1].ends_with(":5: missing `prompt`"), "{skipped:?}");
        let error = read_prompts(&path, true, OnError::Stop).unwrap_err();
        assert!(
            error.to_string().ends_with(":3: missing string `answer`"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
