#![doc = include_str!("../README.md")]
//!
//! This crate re-exports Ember's crates under short names, as `burn` does for its own.

pub use ember_instruct as instruct;
pub use ember_models as models;
pub use ember_pipeline as pipeline;
pub use ember_ppo as ppo;
pub use ember_reward as reward;
pub use ember_serve as serve;
pub use ember_tasks as tasks;
pub use ember_tokenizer as tokenizer;
pub use ember_train as train;
pub use ember_transformer as transformer;

/// burn, as Ember uses it (0.21), so that users need not pin it themselves.
pub use burn;
