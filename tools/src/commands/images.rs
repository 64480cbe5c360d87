//! `lamina images`: list images, one row per name (`<none>` for dangling
//! images), like `docker images`.

use crate::context::Context;
use anyhow::Context as _;
use lamina_store::reference::split_repo_tag;
use lamina_store::{ImageLayer, ImageRecord, Store};

/// Arguments of `lamina images`.
#[derive(clap::Args)]
pub struct Args {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Only print image ids (short, or full with --no-trunc), one per image.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print full image ids.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Runs `lamina images`.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = open_store(ctx)?;
    let images = store.images()?;
    let id = |img: &ImageRecord| {
        if args.no_trunc {
            img.id.to_string()
        } else {
            img.id.short().to_string()
        }
    };
    if args.quiet {
        for img in &images {
            println!("{}", id(img));
        }
        return Ok(());
    }
    match args.format.as_str() {
        "json" => {
            let out: Vec<serde_json::Value> = images.iter().map(image_json).collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        "table" => {
            let mut rows = vec![[
                "REPOSITORY".to_string(),
                "TAG".into(),
                "IMAGE ID".into(),
                "CREATED".into(),
                "SIZE".into(),
            ]];
            for img in &images {
                let created = human_ago(img.created.as_deref());
                let size = human_size(img.size);
                let names: Vec<(String, String)> = if img.names.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    img.names
                        .iter()
                        .map(|n| {
                            let (r, t) = split_repo_tag(n);
                            (r.to_string(), t.to_string())
                        })
                        .collect()
                };
                for (repo, tag) in names {
                    rows.push([repo, tag, id(img), created.clone(), size.clone()]);
                }
            }
            print_table(&rows);
        }
        other => anyhow::bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(())
}

/// Opens the store at the context's root, with a message that says where.
pub(crate) fn open_store(ctx: &Context) -> anyhow::Result<Store> {
    Store::open(&ctx.root)
        .with_context(|| format!("cannot open the store at {}", ctx.root.display()))
}

/// `--format text|json` of the commands that print one report (`gc`, `fsck`).
#[derive(clap::Args)]
pub struct ReportFormat {
    /// Output format: `text` or `json`.
    #[arg(long, default_value = "text")]
    pub format: String,
}

impl ReportFormat {
    /// Prints `report` as pretty JSON, or with `text` for `text` (or `table`).
    pub(crate) fn print<T: serde::Serialize>(
        &self,
        report: &T,
        text: impl FnOnce(&T),
    ) -> anyhow::Result<()> {
        match self.format.as_str() {
            "json" => println!("{}", serde_json::to_string_pretty(report)?),
            "text" | "table" => text(report),
            other => anyhow::bail!("unknown --format {other:?}: use `text` or `json`"),
        }
        Ok(())
    }
}

/// The JSON form of an image in listings.
pub(crate) fn image_json(img: &ImageRecord) -> serde_json::Value {
    serde_json::json!({
        "id": img.id,
        "short_id": img.id.short(),
        "names": img.names,
        "manifest_digest": img.manifest_digest,
        "manifest_media_type": img.manifest_media_type,
        "config_digest": img.config_digest,
        "created": img.created,
        "os": img.os,
        "architecture": img.architecture,
        "size": img.size,
        "layers": img.layers.len(),
    })
}

/// The JSON form of an image's layer (`inspect`, `layers`).
pub(crate) fn layer_json(store: &Store, l: &ImageLayer) -> serde_json::Value {
    serde_json::json!({
        "digest": l.digest,
        "media_type": l.media_type,
        "size": l.size,
        "diff_id": l.diff_id,
        "chain_id": l.chain_id,
        "unpacked_size": l.unpacked_size,
        "dir": store.layer_dir(&l.chain_id),
    })
}

/// Prints rows as left-aligned columns separated by three spaces.
pub(crate) fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Sizes as docker prints them (decimal units): `7.8MB`.
pub(crate) fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{:.3}", v)
            .chars()
            .take(4)
            .collect::<String>()
            .trim_end_matches('.')
            .to_string()
            + units[i]
    }
}

/// "3 hours ago" from an RFC 3339 time.
pub(crate) fn human_ago(created: Option<&str>) -> String {
    let Some(t) = created.and_then(lamina_store::time::parse_rfc3339) else {
        return "N/A".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let s = (now - t).max(0);
    let (n, unit) = match s {
        0..60 => return "Less than a minute ago".into(),
        60..3600 => (s / 60, "minute"),
        3600..86400 => (s / 3600, "hour"),
        86400..604800 => (s / 86400, "day"),
        604800..2592000 => (s / 604800, "week"),
        2592000..31536000 => (s / 2592000, "month"),
        _ => (s / 31536000, "year"),
    };
    if n == 1 {
        if unit == "hour" {
            "About an hour ago".to_string()
        } else {
            format!("1 {unit} ago")
        }
    } else {
        format!("{n} {unit}s ago")
    }
}
