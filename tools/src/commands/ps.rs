//! `lamina ps`: list containers.

use crate::context::Context;
use anyhow::Context as _;
use lamina_store::Store;

/// Arguments of `lamina ps`.
#[derive(clap::Args)]
pub struct Args {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// Runs `lamina ps`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = Store::open(&ctx.root)
        .with_context(|| format!("opening the store at {}", ctx.root.display()))?;
    let containers = store.containers().context("listing containers")?;
    let mounts = super::mount::records(ctx);
    match args.format.as_str() {
        "json" => {
            let rows: Vec<serde_json::Value> = containers
                .iter()
                .map(|c| {
                    let mut v = serde_json::to_value(c).unwrap_or_default();
                    let mounted: Vec<String> = mounts
                        .iter()
                        .filter(|m| m.container.as_deref() == Some(c.id.as_str()))
                        .map(|m| m.dir.display().to_string())
                        .collect();
                    v["upper_dir"] = c.upper_dir().display().to_string().into();
                    v["mounts"] = mounted.into();
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        "table" => {
            println!(
                "{:<14}{:<40}{:<22}{:<20}MOUNTED AT",
                "CONTAINER ID", "IMAGE", "CREATED", "NAME"
            );
            for c in &containers {
                let image = c
                    .image_name
                    .clone()
                    .unwrap_or_else(|| c.manifest_digest.to_string());
                let mounted: Vec<String> = mounts
                    .iter()
                    .filter(|m| m.container.as_deref() == Some(c.id.as_str()))
                    .map(|m| m.dir.display().to_string())
                    .collect();
                println!(
                    "{:<14}{:<40}{:<22}{:<20}{}",
                    c.short_id(),
                    image,
                    lamina_store::time::rfc3339(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(c.created.max(0) as u64)
                    ),
                    c.name.as_deref().unwrap_or(""),
                    mounted.join(",")
                );
            }
        }
        other => anyhow::bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(())
}
