//! Ember facade.
pub use ember_tokenizer as tokenizer;
