//! `ember import` and `ember export`: real models in and out of Ember's model folders.

use std::path::PathBuf;

use burn::backend::Flex;
use ember_models::GgmlType;
use ember_pipeline::{export_model, import_model, ExportFormat, ModelFolder};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `ember import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A GGUF file (llama or gpt2 architecture; F32, F16, BF16, Q8_0, Q4_0 or Q4_1 tensors) or
    /// a Hugging Face folder (`config.json`, `*.safetensors`, `tokenizer.json`).
    pub source: PathBuf,
    /// The Ember model folder to write (weights in f32, tokenizer, chat template).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Replace `--output` if it exists.
    #[arg(long)]
    pub force: bool,
}

/// The formats of `ember export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A Hugging Face folder (`config.json`, F32 `model.safetensors`, `tokenizer.json`,
    /// `tokenizer_config.json` with the chat template).
    Hf,
    /// A GGUF file with F32 matrices.
    GgufF32,
    /// A GGUF file with F16 matrices.
    GgufF16,
    /// A GGUF file with Q8_0 matrices (norms stay F32).
    GgufQ8_0,
}

/// Arguments of `ember export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// An Ember model folder (from `ember import`, `ember sft`, `ember ppo`, a pipeline run).
    pub model: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: Format,
    /// Where: a folder for `hf`, a file for the GGUF formats.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Replace `--output` if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs `ember import`.
pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    super::refuse_to_replace(&args.output, args.force)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("reading tensors {bar:30} {pos}/{len}")
            .expect("a valid template"),
    );
    let summary = import_model::<Flex>(
        &args.source,
        &ModelFolder::new(&args.output),
        &Default::default(),
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let c = &summary.config;
    println!(
        "imported {} ({:?}): {:?}, {} parameters, {} blocks of width {}, {} heads ({} key/value), \
         context {}, vocabulary {}, {} template → {}",
        summary.source.display(),
        summary.kind,
        c.architecture,
        c.num_params(),
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.kv_heads(),
        c.max_seq_len,
        summary.vocab_size,
        summary.template,
        args.output.display()
    );
    Ok(())
}

/// Runs `ember export`.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    super::refuse_to_replace(&args.output, args.force)?;
    let format = match args.format {
        Format::Hf => ExportFormat::HfFolder,
        Format::GgufF32 => ExportFormat::Gguf(GgmlType::F32),
        Format::GgufF16 => ExportFormat::Gguf(GgmlType::F16),
        Format::GgufQ8_0 => ExportFormat::Gguf(GgmlType::Q8_0),
    };
    export_model::<Flex>(
        &ModelFolder::new(&args.model),
        &args.output,
        format,
        &Default::default(),
    )?;
    println!("wrote {}", args.output.display());
    Ok(())
}
