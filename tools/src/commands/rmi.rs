//! `lamina rmi`: remove image names; an image without names and containers
//! is deleted (its blobs and layer dirs are freed by `lamina gc`).

use crate::commands::images::open_store;
use crate::context::Context;

/// Arguments of `lamina rmi`.
#[derive(clap::Args)]
pub struct Args {
    /// Image references or ids.
    #[arg(required = true)]
    pub references: Vec<String>,
    /// Remove every name of an image given by id.
    #[arg(short, long)]
    pub force: bool,
}

/// Runs `lamina rmi`: every reference is tried; fails if any failed.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let mut failed = 0;
    for r in &args.references {
        match store.remove_image(r, args.force) {
            Ok(removed) => {
                for n in &removed.untagged {
                    println!("Untagged: {n}");
                }
                if let Some(id) = removed.deleted {
                    println!("Deleted: {id}");
                }
            }
            Err(e) => {
                eprintln!("lamina: rmi {r}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} images could not be removed",
            args.references.len()
        );
    }
    Ok(())
}
