//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod generate;
pub mod models;
pub mod pipeline;
pub mod ppo;
pub mod pretrain;
pub mod report;
pub mod reward;
pub mod sampling;
pub mod serve;
pub mod sft;
pub mod tasks;
pub mod tokenizer;

/// Refuses to replace an existing file unless `--force` was given: a command must not lose
/// what a file held without being told to.
///
/// # Errors
/// `path` exists and `force` is off.
pub fn refuse_to_replace(path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists; pass --force to replace it (it is written whole or not at all)",
            path.display()
        );
    }
    Ok(())
}
