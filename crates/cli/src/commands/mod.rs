//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod generate;
pub mod pipeline;
pub mod ppo;
pub mod pretrain;
pub mod report;
pub mod reward;
pub mod sampling;
pub mod sft;
pub mod tasks;
pub mod tokenizer;
