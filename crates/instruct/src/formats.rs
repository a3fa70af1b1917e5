//! Readers for the instruction formats people already have. Each record becomes a
//! [`Conversation`]; a malformed one is reported with its file and line, and the caller
//! chooses to stop there or to skip it and count.

use std::path::Path;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{Conversation, Error, Message, Result, Role};

/// A file format of instruction data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// JSONL, `{"messages": [{"role": "user", "content": "…"}, …]}` (OpenAI, TRL).
    Messages,
    /// JSONL, `{"prompt": "…", "completion": "…"}` (TRL's prompt–completion).
    PromptCompletion,
    /// JSON array or JSONL, `{"instruction": "…", "input": "…", "output": "…"}` (Alpaca).
    Alpaca,
    /// JSON array or JSONL, `{"conversations": [{"from": "human", "value": "…"}, …]}`.
    ShareGpt,
}

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop at the first one, with its error.
    #[default]
    Stop,
    /// Skip it and keep its error in [`Dataset::skipped`].
    Skip,
}

/// The conversations read from a file.
#[derive(Debug, Default)]
pub struct Dataset {
    /// The well-formed records, in file order.
    pub conversations: Vec<Conversation>,
    /// The malformed records that were skipped (empty unless [`OnError::Skip`]).
    pub skipped: Vec<Error>,
}

/// Reads `path` in `format`, or in the format its first record looks like.
///
/// # Errors
/// A file that cannot be read; the first malformed record under [`OnError::Stop`]; a file
/// whose format cannot be told.
pub fn read(path: &Path, format: Option<Format>, on_error: OnError) -> Result<Dataset> {
    parse(path, &read_text(path)?, format, on_error)
}

/// The text of a data file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// [`read`] on text already read from `path` (which only names the file in errors).
///
/// # Errors
/// As [`read`].
pub fn parse(
    path: &Path,
    text: &str,
    format: Option<Format>,
    on_error: OnError,
) -> Result<Dataset> {
    let records = parse_records(path, text)?;
    let format = match format {
        Some(f) => f,
        None => detect(path, &records)?,
    };
    let mut dataset = Dataset::default();
    for (line, record) in records {
        let bad = |reason: String| Error::BadRecord {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let parsed = match record {
            Err(reason) => Err(bad(reason)),
            Ok(value) => convert(format, value).map_err(bad),
        };
        match (parsed, on_error) {
            (Ok(conversation), _) => dataset.conversations.push(conversation),
            (Err(e), OnError::Stop) => return Err(e),
            (Err(e), OnError::Skip) => dataset.skipped.push(e),
        }
    }
    Ok(dataset)
}

/// The records of a JSON array or a JSONL file, each with the line it starts on and either
/// its JSON object or why it is not one.
pub type Records = Vec<(usize, std::result::Result<Map<String, Value>, String>)>;

/// Reads the records of a JSON array or JSONL file, for readers of other record kinds (the
/// reward model's rankings, for example).
///
/// # Errors
/// A file that cannot be read, or a JSON array that does not parse.
pub fn read_records(path: &Path) -> Result<Records> {
    parse_records(path, &read_text(path)?)
}

fn object(value: Value) -> std::result::Result<Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!("expected a JSON object, found {}", kind(&other))),
    }
}

/// What kind of JSON value this is, for error messages ("a string", "an array", …).
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// [`read_records`] on text already read from `path` (which only names the file in errors).
///
/// # Errors
/// A JSON array that does not parse.
pub fn parse_records(path: &Path, text: &str) -> Result<Records> {
    if text.trim_start().starts_with('[') {
        // A JSON array: find where each element starts to report its line.
        let elements: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| Error::BadRecord {
                path: path.to_path_buf(),
                line: e.line(),
                reason: format!("not a JSON array of records: {e}"),
            })?;
        let base = text.as_ptr() as usize;
        return Ok(elements
            .into_iter()
            .map(|raw| {
                let offset = raw.get().as_ptr() as usize - base;
                let line = text[..offset].matches('\n').count() + 1;
                (
                    line,
                    serde_json::from_str(raw.get())
                        .map_err(|e| e.to_string())
                        .and_then(object),
                )
            })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            (
                i + 1,
                serde_json::from_str(l)
                    .map_err(|e| format!("invalid JSON: {e}"))
                    .and_then(object),
            )
        })
        .collect())
}

fn detect(path: &Path, records: &Records) -> Result<Format> {
    let first = records.iter().find_map(|(_, r)| r.as_ref().ok());
    let format = first.and_then(|map| {
        [
            ("messages", Format::Messages),
            ("conversations", Format::ShareGpt),
            ("instruction", Format::Alpaca),
            ("prompt", Format::PromptCompletion),
        ]
        .into_iter()
        .find(|(key, _)| map.contains_key(*key))
        .map(|(_, f)| f)
    });
    format.ok_or_else(|| Error::BadRecord {
        path: path.to_path_buf(),
        line: records.first().map_or(1, |r| r.0),
        reason: "cannot tell the format: expected a `messages`, `conversations`, `instruction` or `prompt` key".into(),
    })
}

/// The string at `key`, or why there is none.
///
/// # Errors
/// A missing key, or a value that is not a string.
pub fn text_field(map: &Map<String, Value>, key: &str) -> std::result::Result<String, Invalid> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Invalid(format!(
            "`{key}` must be a string, found {}",
            kind(other)
        ))),
        None => Err(Invalid(format!("missing `{key}`"))),
    }
}

/// Why a record does not fit its format, before the file and line are known (readers wrap
/// it into [`Error::BadRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for String {
    fn from(invalid: Invalid) -> Self {
        invalid.0
    }
}

fn role(name: &str) -> std::result::Result<Role, String> {
    match name {
        "system" => Ok(Role::System),
        "user" | "human" => Ok(Role::User),
        "assistant" | "gpt" | "model" => Ok(Role::Assistant),
        other => Err(format!("unknown role {other:?}")),
    }
}

/// A list of turns, each an object with a role (`system`, `user`/`human`,
/// `assistant`/`gpt`/`model`) at `role_key` and the text at `content_key`.
///
/// # Errors
/// Not a list, a turn that is not an object, a missing field or an unknown role.
pub fn turns(
    list: &Value,
    role_key: &str,
    content_key: &str,
) -> std::result::Result<Vec<Message>, Invalid> {
    let Value::Array(items) = list else {
        return Err(Invalid(format!(
            "expected a list of turns, found {}",
            kind(list)
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = |e: &dyn std::fmt::Display| Invalid(format!("turn {}: {e}", i + 1));
            let Value::Object(turn) = item else {
                return Err(Invalid(format!("turn {} is not an object", i + 1)));
            };
            let who = text_field(turn, role_key).map_err(|e| at(&e))?;
            let content = text_field(turn, content_key).map_err(|e| at(&e))?;
            Ok(Message {
                role: role(&who).map_err(|e| at(&e))?,
                content,
            })
        })
        .collect()
}

fn convert(format: Format, map: Map<String, Value>) -> std::result::Result<Conversation, String> {
    let messages = match format {
        Format::Messages => turns(
            map.get("messages").ok_or("missing `messages`")?,
            "role",
            "content",
        )?,
        Format::ShareGpt => turns(
            map.get("conversations").ok_or("missing `conversations`")?,
            "from",
            "value",
        )?,
        Format::PromptCompletion => {
            vec![
                Message::user(text_field(&map, "prompt")?),
                Message::assistant(text_field(&map, "completion")?),
            ]
        }
        Format::Alpaca => {
            let instruction = text_field(&map, "instruction")?;
            let input = match map.get("input") {
                None | Some(Value::Null) => String::new(),
                Some(_) => text_field(&map, "input")?,
            };
            let prompt = if input.trim().is_empty() {
                instruction
            } else {
                format!("{instruction}\n\n{input}")
            };
            vec![
                Message::user(prompt),
                Message::assistant(text_field(&map, "output")?),
            ]
        }
    };
    if messages
        .iter()
        .any(|m| m.role == Role::Assistant && m.content.trim().is_empty())
    {
        return Err("an assistant turn is empty: there is nothing to learn from it".into());
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err("no assistant turn".into());
    }
    // Turns out of order are this record's fault: said here, with its file and line (not
    // later, when the template renders it, with neither).
    let conversation = Conversation::new(messages);
    conversation.check_turns(Role::Assistant)?;
    Ok(conversation)
}
