//! `lamina save`: save images into one archive.

use crate::commands::images::open_store;
use crate::context::Context;
use anyhow::Context as _;

/// Arguments of `lamina save`.
#[derive(clap::Args)]
pub struct Args {
    /// Image references or ids.
    #[arg(required = true)]
    pub references: Vec<String>,
    /// Output file: one tar that is both a docker-archive and an OCI layout
    /// (`-` writes to standard output, which must not be a terminal).
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

/// Runs `lamina save`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    if args.output.as_os_str() == "-" {
        use std::io::{IsTerminal, Write};
        anyhow::ensure!(
            !std::io::stdout().is_terminal(),
            "refusing to write a tar to the terminal; use -o FILE or redirect standard output"
        );
        let items = lamina_store::archive::save::resolve(&store, &args.references)?;
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        lamina_store::archive::save::save(&store, &items, out, std::path::Path::new("<stdout>"))?
            .flush()
            .context("writing to standard output")?;
        return Ok(());
    }
    lamina_store::archive::save::save_to_file(&store, &args.references, &args.output)
        .with_context(|| format!("saving to {}", args.output.display()))?;
    Ok(())
}
