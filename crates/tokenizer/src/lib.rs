#![doc = include_str!("../README.md")]

mod atomic;
mod bpe;
mod error;
mod shards;
mod special;

pub use atomic::write_atomically;
pub use bpe::{BpeConfig, TextStream, Tokenizer, MAX_WORD_BYTES};
pub use error::{Error, Result};
pub use shards::{
    corpus_files, read_text, write_shard, write_shards, ShardConfig, ShardMeta, TokenShard,
};
pub use special::Special;
