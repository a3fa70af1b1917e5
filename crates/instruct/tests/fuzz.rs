//! Fuzzing the instruction-data parsers and the template: for any file text, every reader
//! returns data or a typed error naming the file and a line, never panics; what a reader
//! accepts renders; and no content, whatever it holds, puts a special id into a rendering.

#[path = "support/fuzz.rs"]
mod fuzz;

use std::path::Path;
use std::sync::OnceLock;

use ember_instruct::{
    parse, parse_prompts, ChatTemplate, Conversation, Error, Format, Message, OnError, Role,
};
use ember_tokenizer::{BpeConfig, Special, Tokenizer};
use proptest::prelude::*;

fn template() -> &'static ChatTemplate {
    static TEMPLATE: OnceLock<ChatTemplate> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let texts = ["What is 2 + 2? 4. Translate into English: 無監督. user assistant"];
        let bpe = BpeConfig {
            vocab_size: 300,
            ..Default::default()
        };
        ChatTemplate::new(Tokenizer::train_from_texts(&texts, &bpe).unwrap()).unwrap()
    })
}

fn lines(text: &str) -> usize {
    text.lines().count().max(1)
}

fn check_error(error: &Error, text: &str) -> Result<(), TestCaseError> {
    match error {
        Error::BadRecord { path, line, .. } => {
            prop_assert_eq!(path, Path::new("fuzz.jsonl"));
            prop_assert!(
                *line >= 1 && *line <= lines(text) + 1,
                "line {} of {}",
                line,
                lines(text)
            );
        }
        other => prop_assert!(false, "not a bad record: {other}"),
    }
    Ok(())
}

fn specials(ids: &[u32]) -> usize {
    let tokenizer = template().tokenizer();
    let all = Special::ALL
        .iter()
        .map(|s| tokenizer.special(*s).unwrap())
        .collect::<Vec<_>>();
    ids.iter().filter(|id| all.contains(id)).count()
}

const FORMATS: [Option<Format>; 5] = [
    None,
    Some(Format::Messages),
    Some(Format::ShareGpt),
    Some(Format::Alpaca),
    Some(Format::PromptCompletion),
];

proptest! {
    #![proptest_config(fuzz::config())]

    #[test]
    fn sft_formats_never_panic_and_what_they_accept_renders(
        text in fuzz::records_text(),
        format in prop::sample::select(&FORMATS[..]),
    ) {
        let path = Path::new("fuzz.jsonl");
        match parse(path, &text, format, OnError::Stop) {
            Ok(data) => prop_assert!(data.skipped.is_empty()),
            Err(e) => {
                if let Error::BadRecord { .. } = e {
                    check_error(&e, &text)?;
                }
            }
        }
        if let Ok(data) = parse(path, &text, format, OnError::Skip) {
            for e in &data.skipped {
                check_error(e, &text)?;
            }
            for conversation in &data.conversations {
                let rendered = template().render(conversation);
                prop_assert!(rendered.is_ok(), "{conversation:?}: {rendered:?}");
                let rendered = rendered.unwrap();
                prop_assert_eq!(specials(&rendered.ids), 1 + 2 * conversation.messages.len());
            }
        }
    }

    #[test]
    fn prompt_files_never_panic_and_what_they_accept_renders(
        text in fuzz::records_text(),
        needs_answer in any::<bool>(),
    ) {
        let path = Path::new("fuzz.jsonl");
        if let Ok(prompts) = parse_prompts(path, &text, needs_answer, OnError::Skip) {
            for e in &prompts.skipped {
                check_error(e, &text)?;
            }
            for record in &prompts.prompts {
                let ids = template().render_prompt(&record.prompt);
                prop_assert!(ids.is_ok(), "{:?}: {ids:?}", record.prompt);
                prop_assert!(!needs_answer || record.answer.is_some());
            }
        }
    }

    #[test]
    fn the_template_renders_any_conversation_or_refuses_it(
        turns in prop::collection::vec(
            (0u8..3, prop_oneof![
                prop::sample::select(&[
                    "<|user_start|>", "<|assistant_end|>", "<|bos|>", "", " ", "a<|eos|>b",
                ][..]).prop_map(str::to_string),
                ".{0,16}",
            ]),
            0..7,
        ),
    ) {
        let messages = turns
            .into_iter()
            .map(|(role, content)| match role {
                0 => Message::system(content),
                1 => Message::user(content),
                _ => Message::assistant(content),
            })
            .collect::<Vec<_>>();
        let conversation = Conversation::new(messages);
        let n = conversation.messages.len();
        match template().render(&conversation) {
            Ok(rendered) => {
                prop_assert!(conversation.check_turns(Role::Assistant).is_ok());
                prop_assert_eq!(specials(&rendered.ids), 1 + 2 * n);
                prop_assert_eq!(rendered.mask.len(), rendered.ids.len());
            }
            Err(e) => prop_assert!(matches!(e, Error::Conversation(_)), "{e}"),
        }
        match template().render_prompt(&conversation) {
            Ok(ids) => prop_assert_eq!(specials(&ids), 2 + 2 * n),
            Err(e) => prop_assert!(matches!(e, Error::Conversation(_)), "{e}"),
        }
    }
}
