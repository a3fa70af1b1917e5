//! One module per subcommand.

pub mod data;
pub mod generate;
pub mod pretrain;
pub mod sft;
pub mod tokenizer;
