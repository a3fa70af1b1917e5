//! The special tokens the whole pipeline reserves.

use serde::{Deserialize, Serialize};

/// A special token of Ember's vocabulary. Each is a single id that ordinary text never
/// produces by accident and that encoding never splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Special {
    /// Begin of a text or a conversation.
    Bos,
    /// End of a text: generation stops here. Documents are separated by it in pretraining.
    Eos,
    /// Padding. Distinct from [`Special::Eos`] so that a reward model can find the last real
    /// token of an answer, and so that padding never teaches the model to stop.
    Pad,
    /// Start of a system message.
    SystemStart,
    /// End of a system message.
    SystemEnd,
    /// Start of a user message.
    UserStart,
    /// End of a user message.
    UserEnd,
    /// Start of an assistant message.
    AssistantStart,
    /// End of an assistant message.
    AssistantEnd,
}

impl Special {
    /// Every special token, in the order of their ids in a tokenizer that Ember trains.
    pub const ALL: [Special; 9] = [
        Special::Bos,
        Special::Eos,
        Special::Pad,
        Special::SystemStart,
        Special::SystemEnd,
        Special::UserStart,
        Special::UserEnd,
        Special::AssistantStart,
        Special::AssistantEnd,
    ];

    /// The token's text in the vocabulary.
    pub fn as_str(self) -> &'static str {
        match self {
            Special::Bos => "<|bos|>",
            Special::Eos => "<|eos|>",
            Special::Pad => "<|pad|>",
            Special::SystemStart => "<|system_start|>",
            Special::SystemEnd => "<|system_end|>",
            Special::UserStart => "<|user_start|>",
            Special::UserEnd => "<|user_end|>",
            Special::AssistantStart => "<|assistant_start|>",
            Special::AssistantEnd => "<|assistant_end|>",
        }
    }
}

impl std::fmt::Display for Special {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
