//! `lamina history`: an image's history from its config, newest first, like
//! `docker history` (the top row shows the image id, older ones `<missing>`).

use crate::commands::images::{human_ago, human_size, open_store, print_table};
use crate::context::Context;

/// Arguments of `lamina history`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference or id.
    pub reference: String,
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Do not truncate the CREATED BY column.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Runs `lamina history`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let img = store.image(&args.reference)?;
    let (config, _) = store.config(&img.config_digest)?;
    // Non-empty history entries map to layers in order.
    let mut layers = img.layers.iter();
    let mut entries = Vec::new();
    for h in &config.history {
        let layer = if h.empty_layer { None } else { layers.next() };
        entries.push((h, layer));
    }
    entries.reverse();
    match args.format.as_str() {
        "json" => {
            let out: Vec<serde_json::Value> = entries
                .iter()
                .enumerate()
                .map(|(i, (h, l))| {
                    serde_json::json!({
                        "id": if i == 0 { Some(&img.id) } else { None },
                        "created": h.created,
                        "created_by": h.created_by,
                        "author": h.author,
                        "comment": h.comment,
                        "empty_layer": h.empty_layer,
                        "size": l.map(|l| l.unpacked_size).unwrap_or(0),
                        "diff_id": l.map(|l| &l.diff_id),
                        "chain_id": l.map(|l| &l.chain_id),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        "table" => {
            let mut rows = vec![[
                "IMAGE".to_string(),
                "CREATED".into(),
                "CREATED BY".into(),
                "SIZE".into(),
                "COMMENT".into(),
            ]];
            for (i, (h, l)) in entries.iter().enumerate() {
                let mut by = h.created_by.clone().unwrap_or_default().replace('\n', " ");
                if !args.no_trunc && by.chars().count() > 45 {
                    by = by.chars().take(44).collect::<String>() + "…";
                }
                rows.push([
                    if i == 0 {
                        img.id.short().to_string()
                    } else {
                        "<missing>".into()
                    },
                    human_ago(h.created.as_deref()),
                    by,
                    human_size(l.map(|l| l.unpacked_size).unwrap_or(0)),
                    h.comment.clone().unwrap_or_default(),
                ]);
            }
            print_table(&rows);
        }
        other => anyhow::bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(())
}
