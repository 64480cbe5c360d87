//! `lamina export`: export a flattened tree.

use crate::commands::images::open_store;
use crate::context::Context;
use anyhow::Context as _;
use lamina_store::Error;
use std::io::Write;

/// Arguments of `lamina export`.
#[derive(clap::Args)]
pub struct Args {
    /// Container id or name, or image reference.
    pub target: String,
    /// Output file (`-` for stdout).
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

/// Runs `lamina export`: a container (its upper over its image) if one has
/// that id or name, else an image.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let layers = lamina_store::archive::export::target_layer_dirs(&store, &args.target).map_err(
        |e| match e {
            Error::ImageNotFound(_) => anyhow::Error::new(e).context(format!(
                "{:?} is neither a container nor an image",
                args.target
            )),
            e => e.into(),
        },
    )?;
    if args.output.as_os_str() == "-" {
        lamina_store::archive::export::export_layers(&layers, std::io::stdout().lock())?.flush()?;
        return Ok(());
    }
    let f = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let result = lamina_store::archive::export::export_layers(&layers, f)
        .and_then(|f| f.sync_all().map_err(|e| Error::io(&args.output, e)));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&args.output);
        return Err(anyhow::Error::new(e).context(format!(
            "exporting {} to {}",
            args.target,
            args.output.display()
        )));
    }
    Ok(())
}
