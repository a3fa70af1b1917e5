//! `ember report --runs a b c`: several finished pipeline runs (seeds) summed up, per run and
//! pooled, with paired bootstrap 95 % intervals over prompts.

use std::path::PathBuf;

use ember_pipeline::write_runs_report;

/// Arguments of `ember report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Finished `ember pipeline` run folders, for example one per seed
    /// (`ember pipeline --seed 1 --run runs/seed1`).
    #[arg(long, num_args = 1.., required = true)]
    pub runs: Vec<PathBuf>,
    /// The markdown file to write.
    #[arg(long, default_value = "runs/seeds.md")]
    pub out: PathBuf,
}

/// Runs `ember report`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let md = write_runs_report(&args.runs, &args.out)?;
    println!("{md}\nwrote {}", args.out.display());
    Ok(())
}
