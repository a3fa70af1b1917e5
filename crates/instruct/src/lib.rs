#![doc = include_str!("../README.md")]

mod batch;
mod conversation;
mod error;
pub mod formats;
mod prompts;
mod template;

pub use batch::{pack_rows, pad_rows, Row, PAD_SEGMENT};
pub use conversation::{Conversation, Message, Role};
pub use error::{Error, Result};
pub use formats::{parse, parse_records, read, Dataset, Format, Invalid, OnError};
pub use prompts::{check_prompt, parse_prompt, parse_prompts, read_prompts, PromptRecord, Prompts};
pub use template::{ChatTemplate, Rendered, TemplateSpec};
