//! `lamina login`: store credentials for a registry.

use crate::context::Context;

/// Arguments of `lamina login`.
#[derive(clap::Args)]
pub struct Args {
    /// Registry host, e.g. `registry.example.com` or `localhost:5000`.
    pub registry: String,
    /// User name.
    #[arg(short, long)]
    pub username: String,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Runs `lamina login`.
pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lamina login` is not implemented yet")
}
