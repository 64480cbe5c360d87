//! `lamina load`: load images from an archive.

use crate::commands::images::open_store;
use crate::context::Context;
use anyhow::Context as _;

/// Arguments of `lamina load`.
#[derive(clap::Args)]
pub struct Args {
    /// Input file: a docker-archive (old or new layout) or an OCI archive;
    /// `-` or none reads standard input.
    #[arg(short, long, default_value = "-")]
    pub input: std::path::PathBuf,
}

/// Runs `lamina load`; prints what it loaded, as docker does.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let loaded = if args.input.as_os_str() == "-" {
        let stdin = std::io::stdin().lock();
        lamina_store::archive::load::load(
            &store,
            std::io::BufReader::with_capacity(1 << 20, stdin),
            None,
            std::path::Path::new("<stdin>"),
        )
        .context("loading from standard input")?
    } else {
        lamina_store::archive::load::load_file(&store, &args.input)
            .with_context(|| format!("loading {}", args.input.display()))?
    };
    for img in loaded {
        if img.names.is_empty() {
            println!("Loaded image ID: {}", img.id);
        }
        for n in img.names {
            println!("Loaded image: {n}");
        }
    }
    Ok(())
}
