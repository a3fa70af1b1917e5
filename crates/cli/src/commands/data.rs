//! `ember data show`: what the model will learn from a file of instruction data.

use std::path::PathBuf;

use ember_instruct::{read, ChatTemplate, Format, OnError};
use ember_pipeline::ModelFolder;
use ember_tokenizer::Tokenizer;

/// Arguments of `ember data show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// A file of conversations: messages JSONL, prompt–completion JSONL, Alpaca or ShareGPT.
    pub file: PathBuf,
    /// The tokenizer to render with (a `tokenizer.json`, or a model folder holding one).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The file's format; detected from its first record when left out.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// How many conversations to show.
    #[arg(long, short = 'n', default_value_t = 3)]
    pub count: usize,
    /// Stop at the first malformed record instead of skipping and counting them.
    #[arg(long)]
    pub strict: bool,
}

/// [`Format`] on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// `{"messages": [...]}` per line.
    Messages,
    /// `{"prompt": ..., "completion": ...}` per line.
    PromptCompletion,
    /// `{"instruction", "input", "output"}`.
    Alpaca,
    /// `{"conversations": [{"from", "value"}]}`.
    ShareGpt,
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Messages => Format::Messages,
            FormatArg::PromptCompletion => Format::PromptCompletion,
            FormatArg::Alpaca => Format::Alpaca,
            FormatArg::ShareGpt => Format::ShareGpt,
        }
    }
}

/// Prints rendered conversations with the trained-on spans between ⟦ and ⟧.
pub fn show(args: ShowArgs) -> anyhow::Result<()> {
    let template = if args.tokenizer.is_dir() {
        ModelFolder::new(&args.tokenizer).template()?
    } else {
        ChatTemplate::new(Tokenizer::from_file(&args.tokenizer)?)?
    };
    let on_error = if args.strict {
        OnError::Stop
    } else {
        OnError::Skip
    };
    let data = read(&args.file, args.format.map(Format::from), on_error)?;
    let (mut tokens, mut trained) = (0usize, 0usize);
    for (i, conversation) in data.conversations.iter().enumerate() {
        let rendered = template.render(conversation)?;
        tokens += rendered.len();
        trained += rendered.mask.iter().filter(|&&m| m).count();
        if i < args.count {
            println!(
                "── conversation {} ({} tokens, {} trained on)",
                i + 1,
                rendered.len(),
                rendered.mask.iter().filter(|&&m| m).count()
            );
            println!("{}\n", template.annotate(&rendered)?);
        }
    }
    println!(
        "{} conversations, {tokens} tokens, {trained} trained on ({:.1}%); ⟦…⟧ marks what the model learns to write",
        data.conversations.len(),
        100.0 * trained as f64 / tokens.max(1) as f64
    );
    if !data.skipped.is_empty() {
        println!("skipped {} malformed record(s):", data.skipped.len());
        for error in data.skipped.iter().take(10) {
            println!("  {error}");
        }
    }
    Ok(())
}
