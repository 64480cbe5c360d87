//! Pull/push progress: a bar per layer on a terminal (indicatif), otherwise
//! one parseable line per event on stdout:
//!
//! ```text
//! layer <digest> <size> present|resume <offset>|download
//! layer <digest> done <bytes fetched>
//! layer <digest> unpacked
//! ```

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;
use std::sync::Mutex;

/// Reports progress one way or the other.
pub struct Progress {
    multi: Option<MultiProgress>,
    bars: Mutex<Vec<Option<ProgressBar>>>,
    /// Reports nothing (a daemon fetching layers).
    quiet: bool,
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn new(layers: usize) -> Self {
        let multi = std::io::stderr().is_terminal().then(MultiProgress::new);
        Progress {
            multi,
            bars: Mutex::new(vec![None; layers]),
            quiet: false,
        }
    }

    /// Reports nothing at all.
    pub fn quiet(layers: usize) -> Self {
        Progress {
            multi: None,
            bars: Mutex::new(vec![None; layers]),
            quiet: true,
        }
    }

    /// Prints a line (above the bars on a terminal).
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => println!("{text}"),
        }
    }

    /// A layer starts: `state` is `present`, `download` or `resume <offset>`.
    pub fn start(&self, idx: usize, digest: &str, size: u64, offset: u64, state: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let bar = m.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                bar.set_prefix(short(digest).to_string());
                bar.set_position(offset);
                bar.set_message(state.to_string());
                self.bars.lock().unwrap()[idx] = Some(bar);
            }
            None => println!("layer {digest} {size} {state}"),
        }
    }

    /// Bytes arrived for a layer.
    pub fn advance(&self, idx: usize, n: u64) {
        if let Some(Some(bar)) = self.bars.lock().unwrap().get(idx) {
            bar.inc(n);
        }
    }

    /// A layer event (`done N`, `unpacked`).
    pub fn event(&self, idx: usize, digest: &str, what: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(_) => {
                if let Some(Some(bar)) = self.bars.lock().unwrap().get(idx) {
                    if what == "unpacked" || what == "present" {
                        bar.finish_with_message(what.to_string());
                    } else {
                        bar.set_message(what.to_string());
                    }
                }
            }
            None => println!("layer {digest} {what}"),
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}
