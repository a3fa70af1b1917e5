//! One module per subcommand.

pub mod generate;
pub mod pretrain;
pub mod tokenizer;
