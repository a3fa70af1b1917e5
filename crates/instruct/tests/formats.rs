//! Each reader on good and malformed records: the error names the file and the line.

use std::path::{Path, PathBuf};

use ember_instruct::{read, Conversation, Error, Format, Message, OnError};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn bad_line(error: &Error) -> usize {
    match error {
        Error::BadRecord { line, .. } => *line,
        other => panic!("expected a bad record, got {other}"),
    }
}

#[test]
fn messages_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "chat.jsonl",
        concat!(
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}"#,
            "\n\n",
            r#"{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}"#,
            "\n",
        ),
    );
    let data = read(&path, None, OnError::Stop).unwrap();
    assert_eq!(data.conversations.len(), 2);
    assert_eq!(
        data.conversations[0],
        Conversation::new(vec![
            Message::system("Be brief."),
            Message::user("Hi"),
            Message::assistant("Hello.")
        ])
    );
    let bad = write(
        dir.path(),
        "bad.jsonl",
        concat!(
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
            "\n",
            r#"{"messages": [{"role": "wizard", "content": "a"}]}"#,
            "\n",
            "{not json\n",
        ),
    );
    let err = read(&bad, Some(Format::Messages), OnError::Stop).unwrap_err();
    assert_eq!(bad_line(&err), 2);
    assert!(
        err.to_string().starts_with(&format!(
            "{}:2: turn 1: unknown role \"wizard\"",
            bad.display()
        )),
        "{err}"
    );
    let data = read(&bad, Some(Format::Messages), OnError::Skip).unwrap();
    assert_eq!(data.conversations.len(), 1);
    assert_eq!(
        data.skipped.iter().map(bad_line).collect::<Vec<_>>(),
        [2, 3]
    );
}

#[test]
fn prompt_completion_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "pc.jsonl",
        concat!(
            r#"{"prompt": "Translate into English: 无监督训练。 Translation:", "completion": "Unsupervised training."}"#,
            "\n",
            r#"{"prompt": "x", "completion": "  "}"#,
            "\n",
            r#"{"prompt": 3, "completion": "y"}"#,
            "\n",
        ),
    );
    let data = read(&path, None, OnError::Skip).unwrap();
    assert_eq!(
        data.conversations,
        [Conversation::single_turn(
            "Translate into English: 无监督训练。 Translation:",
            "Unsupervised training."
        )]
    );
    let reasons = data
        .skipped
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>();
    assert!(
        reasons[0].ends_with(":2: an assistant turn is empty: there is nothing to learn from it"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].ends_with(":3: `prompt` must be a string, found a number"),
        "{reasons:?}"
    );
}

#[test]
fn alpaca_json_array_reports_the_line_of_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "alpaca.json",
        r#"[
  {"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
  {"instruction": "Say hi.", "input": "", "output": "Hi!"},
  {
    "instruction": "Count the letters.",
    "output": 7
  }
]"#,
    );
    let err = read(&path, None, OnError::Stop).unwrap_err();
    assert_eq!(bad_line(&err), 4);
    assert!(
        err.to_string().contains("`output` must be a string"),
        "{err}"
    );
    let data = read(&path, None, OnError::Skip).unwrap();
    assert_eq!(
        data.conversations[0],
        Conversation::single_turn("Reverse the word.\n\nstone", "enots")
    );
    assert_eq!(
        data.conversations[1],
        Conversation::single_turn("Say hi.", "Hi!")
    );
    // Alpaca as JSONL too.
    let jsonl = write(
        dir.path(),
        "alpaca.jsonl",
        r#"{"instruction": "Say hi.", "output": "Hi!"}"#,
    );
    assert_eq!(
        read(&jsonl, Some(Format::Alpaca), OnError::Stop)
            .unwrap()
            .conversations
            .len(),
        1
    );
}

#[test]
fn sharegpt_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "sharegpt.json",
        r#"[{"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
 {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]},
 {"conversations": "nope"}]"#,
    );
    let data = read(&path, None, OnError::Skip).unwrap();
    assert_eq!(
        data.conversations,
        [Conversation::new(vec![
            Message::system("Be kind."),
            Message::user("Hi"),
            Message::assistant("Hello!")
        ])]
    );
    let reasons = data
        .skipped
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>();
    assert!(
        reasons[0].ends_with(":2: turn 2: missing `value`"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].ends_with(":3: expected a list of turns, found a string"),
        "{reasons:?}"
    );
}

#[test]
fn files_that_cannot_be_read_or_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let missing = read(&dir.path().join("none.jsonl"), None, OnError::Stop).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("none.jsonl"));
    let unknown = write(dir.path(), "x.jsonl", r#"{"question": "a", "answer": "b"}"#);
    let err = read(&unknown, None, OnError::Stop).unwrap_err();
    assert!(err.to_string().contains("cannot tell the format"), "{err}");
    let broken_array = write(dir.path(), "broken.json", "[\n{\"prompt\": \"a\",\n");
    let err = read(&broken_array, None, OnError::Skip).unwrap_err();
    assert_eq!(bad_line(&err), 3);
}

#[test]
fn turns_out_of_order_are_a_bad_record_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "order.jsonl",
        concat!(
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
            "\n",
            r#"{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "c"}, {"role": "user", "content": "d"}, {"role": "assistant", "content": "e"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}"#,
            "\n",
        ),
    );
    let error = read(&path, None, OnError::Stop).unwrap_err();
    assert_eq!(bad_line(&error), 2);
    assert!(error.to_string().contains("order.jsonl"), "{error}");
    // In skip mode each bad record is left out with its line, the good one kept.
    let data = read(&path, None, OnError::Skip).unwrap();
    assert_eq!(data.conversations.len(), 1);
    assert_eq!(
        data.skipped.iter().map(bad_line).collect::<Vec<_>>(),
        [2, 3, 4]
    );
}
