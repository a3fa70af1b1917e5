//! `ember chat`: an interactive, multi-turn conversation through the chat template.

use std::io::BufRead as _;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use ember_instruct::{Conversation, Message, Role};
use ember_pipeline::ModelFolder;
use ember_transformer::{generate_streaming, GenerateConfig};

use super::sampling::{SamplingArgs, StreamPrinter};
use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model folder (`model.json`, `model.mpk`, `tokenizer.json`), for example RUN/model of
    /// `ember sft`.
    #[arg(long)]
    pub model: PathBuf,
    /// A system message that frames the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// Runs `ember chat`: one line of standard input is one user turn; `/reset` starts over;
/// end of input ends the chat.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.sampling.settings()?;
    with_backend!(args.device, |B, AD, device| chat::<B>(&args, &device))
}

fn chat<B: Backend>(args: &Args, device: &B::Device) -> anyhow::Result<()> {
    let folder = ModelFolder::new(&args.model);
    let template = folder.template()?;
    let tokenizer = template.tokenizer().clone();
    let model = folder.load::<B>(device)?;
    let settings = args.sampling.settings()?;
    let context = model.config().max_seq_len;
    let fresh = || Conversation::new(args.system.iter().map(Message::system).collect());
    let mut conversation = fresh();
    let mut turn = 0u64;
    eprintln!(
        "chatting with {} (one line per turn, /reset to start over, Ctrl-D to quit)",
        args.model.display()
    );
    let mut input = std::io::stdin().lock();
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        if input.read_until(b'\n', &mut bytes)? == 0 {
            break;
        }
        // A bad line is reported and left out; the conversation goes on.
        let Ok(line) = std::str::from_utf8(&bytes) else {
            eprintln!("(that line is not UTF-8 text; it was not sent)");
            continue;
        };
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim() == "/reset" {
            conversation = fresh();
            eprintln!("(a new conversation)");
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        // A message too long for the context even alone is not sent (the history stays).
        let mut alone = fresh();
        alone.messages.push(Message::user(line));
        let alone = template.render_prompt(&alone)?.len();
        if alone + 8 > context {
            eprintln!(
                "(that message is {alone} tokens with the template, and the model's context is \
                 {context}: it was not sent)"
            );
            continue;
        }
        conversation.messages.push(Message::user(line));
        // Keep the newest turns that leave room to answer; the system message stays.
        let mut prompt = template.render_prompt(&conversation)?;
        let first_turn = usize::from(conversation.messages[0].role == Role::System);
        while prompt.len() + 8 > context && conversation.messages.len() - first_turn > 1 {
            conversation.messages.drain(first_turn..first_turn + 2);
            prompt = template.render_prompt(&conversation)?;
        }
        let config = GenerateConfig {
            max_new_tokens: settings.max_new_tokens,
            sampling: settings.sampling,
            stop_tokens: vec![template.stop_token(), template.eos_token()],
            pad_token: template.pad_token(),
            seed: settings.seed.wrapping_add(turn),
        };
        turn += 1;
        let mut printer = StreamPrinter::new(&tokenizer);
        let stops = config.stop_tokens.clone();
        let output = generate_streaming(&model, &[prompt], &config, |_, token| {
            if !stops.contains(&token) {
                printer.push(token);
            }
        })?;
        println!();
        conversation.messages.push(Message::assistant(
            tokenizer.decode_skip_special(output[0].content())?,
        ));
    }
    Ok(())
}
