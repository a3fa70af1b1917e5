//! `ember generate`.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use ember_instruct::{read_prompts, ChatTemplate, OnError};
use ember_pipeline::ModelFolder;
use ember_transformer::{generate_streaming, GenerateConfig};

use super::sampling::{SamplingArgs, StreamPrinter};
use crate::device::{with_backend, DeviceKind};

/// Arguments of `ember generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model folder (`model.json`, `model.mpk`, `tokenizer.json`), as `ember pretrain`
    /// writes into `RUN/model`.
    #[arg(long)]
    pub model: PathBuf,
    /// A prompt; repeat for a batch. Without one, generation starts from the begin-of-text
    /// token.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A JSONL file of `{"prompt": "..."}` lines to continue in batches; the results go to
    /// standard output as JSONL (`prompt`, `completion`, `finish`).
    #[arg(long, conflicts_with = "prompt")]
    pub prompts: Option<PathBuf>,
    /// Prompts per batch with `--prompts`.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// What an empty prompt starts from: the template's start-of-text token (Ember's `<|bos|>`),
/// or, for a template without one (ChatML), its end-of-text token, as GPT-2 does.
fn start_token(template: &ChatTemplate) -> u32 {
    template
        .bos()
        .first()
        .copied()
        .unwrap_or(template.eos_token())
}

/// Runs `ember generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.sampling.settings()?; // Report a bad config before loading anything.
    with_backend!(args.device, |B, AD, device| generate_on::<B>(
        &args, &device
    ))
}

fn generate_on<B: Backend>(args: &Args, device: &B::Device) -> anyhow::Result<()> {
    let folder = ModelFolder::new(&args.model);
    let template = folder.template()?;
    let tokenizer = template.tokenizer().clone();
    let model = folder.load::<B>(device)?;
    let prompts = if args.prompt.is_empty() {
        vec![String::new()]
    } else {
        args.prompt.clone()
    };
    let bos = start_token(&template);
    let encoded = prompts
        .iter()
        .map(|p| {
            let ids = tokenizer.encode(p)?;
            Ok(if ids.is_empty() { vec![bos] } else { ids })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = args.sampling.settings()?;
    let config = GenerateConfig {
        max_new_tokens: settings.max_new_tokens,
        sampling: settings.sampling,
        stop_tokens: vec![template.eos_token()],
        pad_token: template.pad_token(),
        seed: settings.seed,
    };

    if let Some(file) = &args.prompts {
        return generate_file(&model, &template, &config, file, args.batch_size);
    }
    if encoded.len() == 1 {
        // One prompt: stream the text as it is generated.
        print!("{}", prompts[0]);
        let mut printer = StreamPrinter::new(&tokenizer);
        generate_streaming(&model, &encoded, &config, |_, token| printer.push(token))?;
        println!();
        return Ok(());
    }
    let outputs = generate_streaming(&model, &encoded, &config, |_, _| {})?;
    for (prompt, output) in prompts.iter().zip(outputs) {
        println!("--- {prompt}");
        println!("{prompt}{}", tokenizer.decode(&output.tokens)?);
    }
    Ok(())
}

/// Continues the prompts of a JSONL file in batches and prints JSONL results.
fn generate_file<B: Backend>(
    model: &ember_transformer::Decoder<B>,
    template: &ChatTemplate,
    config: &GenerateConfig,
    file: &std::path::Path,
    batch_size: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(batch_size > 0, "--batch-size must be at least 1");
    let mut prompts = Vec::new();
    for record in read_prompts(file, false, OnError::Stop)?.prompts {
        let Some(text) = record.text else {
            anyhow::bail!(
                "{}:{}: a raw continuation needs {{\"prompt\": \"...\"}}, a string (use `ember chat` for messages)",
                file.display(),
                record.line
            );
        };
        prompts.push(text);
    }
    let tokenizer = template.tokenizer();
    let bos = start_token(template);
    for chunk in prompts.chunks(batch_size) {
        let encoded = chunk
            .iter()
            .map(|p| {
                Ok(Some(tokenizer.encode(p)?)
                    .filter(|ids| !ids.is_empty())
                    .unwrap_or(vec![bos]))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let outputs = generate_streaming(model, &encoded, config, |_, _| {})?;
        for (prompt, output) in chunk.iter().zip(outputs) {
            let completion = tokenizer.decode_skip_special(&output.tokens)?;
            let line = serde_json::json!({ "prompt": prompt, "completion": completion, "finish": output.finish });
            println!("{line}");
        }
    }
    Ok(())
}
