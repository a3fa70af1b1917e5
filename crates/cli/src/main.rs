//! `ember`: every stage of the pipeline as a subcommand.

mod commands;
mod device;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train a ChatGPT-style assistant end to end on burn: tokenizer, pretraining, instruction
/// tuning, reward model, RLHF with PPO, chat.
#[derive(Debug, Parser)]
#[command(name = "ember", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every stage in order on the built-in tasks — data, pretraining, SFT, rankings, reward
    /// model, PPO, evaluation — into one run folder, with a report. Resumes where it stopped.
    Pipeline(commands::pipeline::Args),
    /// Sum up several pipeline runs (seeds): per run and pooled, each model's gain over SFT
    /// with paired bootstrap 95 % intervals over prompts, per family.
    Report(commands::report::Args),
    /// Train a byte-level BPE tokenizer.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Pretrain a decoder on raw text: tokenizer, token shards, training, a sample (stage 1).
    Pretrain(commands::pretrain::Args),
    /// Fine-tune a pretrained model on conversations, learning from the answers only (stage 2).
    Sft(commands::sft::Args),
    /// Chat with a tuned model, multi-turn through the chat template, streaming its answers.
    Chat(commands::chat::Args),
    /// Reward model: collect ranked answers, train, evaluate, score (stage 3).
    #[command(subcommand)]
    Reward(commands::reward::Command),
    /// RLHF: improve the SFT policy with PPO against a reward model (stage 4).
    Ppo(commands::ppo::Args),
    /// Score a model on the built-in tasks' held-out prompts, per task family.
    Eval(commands::eval::Args),
    /// Continue prompts with a trained model (KV cache; greedy, temperature, top-k or top-p).
    Generate(commands::generate::Args),
    /// The built-in tasks: export their corpus and conversations.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Look at instruction data.
    #[command(subcommand)]
    Data(DataCommand),
    /// Read a real model (a GGUF file or a Hugging Face folder: Llama-family with grouped-query
    /// attention, GPT-2) into an Ember model folder that every stage and `ember chat` take.
    Import(commands::models::ImportArgs),
    /// Write an Ember model folder as a Hugging Face folder or a GGUF file, for
    /// `transformers`, llama.cpp and the tools built on them.
    Export(commands::models::ExportArgs),
    /// Serve a model folder over HTTP: OpenAI's chat-completions API (streaming, continuous
    /// batching) and a web chat page at `/`. Stops cleanly on SIGTERM or Ctrl-C.
    Serve(commands::serve::Args),
    /// Training-step and generation throughput on the chosen device (tokens/s, GFLOP/s), as
    /// a table; see docs/benchmarks.md for the kernel benches and the PyTorch comparison.
    Bench(commands::bench::Args),
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// Write `corpus.txt` (pretraining), `sft.jsonl` (training conversations, some of them
    /// flawed), `sft_flawless.jsonl` and `heldout.jsonl` (evaluation prompts) for the
    /// built-in tasks.
    Export(commands::tasks::ExportArgs),
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Print rendered conversations with the trained-on spans marked.
    Show(commands::data::ShowArgs),
}

#[derive(Debug, Subcommand)]
enum TokenizerCommand {
    /// Train a byte-level BPE on text files and write `tokenizer.json` (HF's format).
    Train(commands::tokenizer::TrainArgs),
}

fn main() -> ExitCode {
    ember_train::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tokenizer(TokenizerCommand::Train(args)) => commands::tokenizer::train(args),
        Command::Pipeline(args) => commands::pipeline::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Pretrain(args) => commands::pretrain::run(args),
        Command::Sft(args) => commands::sft::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Reward(command) => commands::reward::run(command),
        Command::Ppo(args) => commands::ppo::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Tasks(TasksCommand::Export(args)) => commands::tasks::export(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Data(DataCommand::Show(args)) => commands::data::show(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Import(args) => commands::models::import(args),
        Command::Export(args) => commands::models::export(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
