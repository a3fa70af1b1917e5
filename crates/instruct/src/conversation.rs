//! Conversations: who said what.

use serde::{Deserialize, Serialize};

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person.
    User,
    /// The model: the only role it learns to write.
    Assistant,
}

/// One turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What they say.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A conversation: an optional system message first, then user and assistant turns.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Conversation {
    /// The turns, in order.
    pub messages: Vec<Message>,
}

impl Conversation {
    /// A conversation of these turns.
    pub fn new(messages: Vec<Message>) -> Self {
        Self { messages }
    }

    /// One instruction and its answer.
    pub fn single_turn(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        Self::new(vec![Message::user(prompt), Message::assistant(answer)])
    }

    /// Checks the order of turns: an optional system message first, then user and assistant
    /// alternating from a user turn, the last one `last`'s.
    ///
    /// # Errors
    /// What is out of order, as a sentence.
    pub fn check_turns(&self, last: Role) -> Result<(), String> {
        let messages = &self.messages;
        let turns = match messages.first() {
            Some(m) if m.role == Role::System => &messages[1..],
            _ => &messages[..],
        };
        if turns.is_empty() {
            return Err("no user or assistant turn".into());
        }
        for (i, message) in turns.iter().enumerate() {
            let expected = if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            if message.role != expected {
                return Err(format!(
                    "turn {} is {:?} but {expected:?} was expected (a system message may only come first)",
                    i + 1,
                    message.role
                ));
            }
        }
        let final_role = turns[turns.len() - 1].role;
        if final_role != last {
            return Err(format!(
                "the conversation must end with a {last:?} turn, not {final_role:?}"
            ));
        }
        Ok(())
    }
}
