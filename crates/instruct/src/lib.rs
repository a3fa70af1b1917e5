#![doc = include_str!("../README.md")]

mod batch;
mod conversation;
mod error;
pub mod formats;
mod template;

pub use batch::{pack_rows, pad_rows, Row, PAD_SEGMENT};
pub use conversation::{Conversation, Message, Role};
pub use error::{Error, Result};
pub use formats::{read, Dataset, Format, OnError};
pub use template::{ChatTemplate, Rendered};
