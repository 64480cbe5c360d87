//! `lamina commit`: turn a container's changes into a new image.

use crate::commands::images::open_store;
use crate::context::Context;
use anyhow::Context as _;
use lamina_store::archive::Compression;
use lamina_store::archive::commit::{CommitOptions, commit};

/// Arguments of `lamina commit`.
#[derive(clap::Args)]
pub struct Args {
    /// Container id or name.
    pub container: String,
    /// New image reference (omit for an unnamed image; its id is printed).
    pub reference: Option<String>,
    /// Commit message.
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author.
    #[arg(long)]
    pub author: Option<String>,
    /// Layer compression: `gzip` (default), `zstd` or `none`.
    #[arg(long, default_value = "gzip")]
    pub compression: Compression,
    /// Store files with holes as plain data instead of sparse entries.
    #[arg(long)]
    pub no_sparse: bool,
}

/// Runs `lamina commit`; prints the new image id.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let opts = CommitOptions {
        message: args.message,
        author: args.author,
        compression: args.compression,
        sparse: !args.no_sparse,
    };
    let done = commit(&store, &args.container, args.reference.as_deref(), &opts)
        .with_context(|| format!("committing container {}", args.container))?;
    println!("{}", done.image.id);
    Ok(())
}
