//! `lamina import`: make a one-layer image from a tar (plain, gzip or zstd;
//! a path, a fifo, or `-` for stdin). Prints the image id.

use crate::commands::images::open_store;
use crate::context::Context;
use anyhow::Context as _;

/// Arguments of `lamina import`.
#[derive(clap::Args)]
pub struct Args {
    /// Tar file (plain, gzip or zstd), or `-` for stdin.
    pub file: std::path::PathBuf,
    /// Image reference for the result.
    pub reference: String,
}

/// Runs `lamina import`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let img = if args.file.as_os_str() == "-" {
        store.import_tar(std::io::stdin().lock(), &args.reference, "lamina import")?
    } else {
        let f = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        store
            .import_tar(f, &args.reference, "lamina import")
            .with_context(|| format!("importing {}", args.file.display()))?
    };
    println!("{}", img.id);
    Ok(())
}
