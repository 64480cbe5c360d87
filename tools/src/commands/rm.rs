//! `lamina rm`: remove containers (refused while mounted).

use crate::context::Context;
use anyhow::Context as _;
use lamina_store::Store;

/// Arguments of `lamina rm`.
#[derive(clap::Args)]
pub struct Args {
    /// Container ids or names.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Runs `lamina rm`: prints each removed container's id.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = Store::open(&ctx.root)
        .with_context(|| format!("opening the store at {}", ctx.root.display()))?;
    let mounts = super::mount::records(ctx);
    let mut failed = false;
    for name in &args.containers {
        let result = (|| -> anyhow::Result<String> {
            let c = store.container(name)?;
            if let Some(m) = mounts
                .iter()
                .find(|m| m.container.as_deref() == Some(c.id.as_str()))
            {
                anyhow::bail!(
                    "it is mounted at {}: run `lamina umount {}` first",
                    m.dir.display(),
                    m.dir.display()
                );
            }
            Ok(store.remove_container(&c.id)?.id)
        })();
        match result {
            Ok(id) => println!("{id}"),
            Err(e) => {
                eprintln!("lamina: cannot remove container {name}: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        anyhow::bail!("some containers were not removed");
    }
    Ok(())
}
