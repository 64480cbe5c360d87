//! `lamina fsck`: verify blob digests and that every recorded layer and
//! container dir exists. Exits non-zero when a problem is found.

use crate::commands::images::{ReportFormat, open_store};
use crate::context::Context;

/// Arguments of `lamina fsck`.
#[derive(clap::Args)]
pub struct Args {
    /// How to print the report.
    #[command(flatten)]
    pub output: ReportFormat,
}

/// Runs `lamina fsck`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let r = store.fsck()?;
    args.output.print(&r, |r| {
        for p in &r.problems {
            println!("problem: {p}");
        }
        for g in &r.garbage {
            println!("garbage: {g}");
        }
        println!(
            "checked {} blobs, {} layers, {} images, {} containers: {} problems, {} garbage (run `lamina gc`)",
            r.blobs_checked,
            r.layers_checked,
            r.images_checked,
            r.containers_checked,
            r.problems.len(),
            r.garbage.len()
        );
    })?;
    if !r.is_ok() {
        anyhow::bail!("the store has {} problems (see above)", r.problems.len());
    }
    Ok(())
}
