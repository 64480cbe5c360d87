//! `lamina login`: verify credentials against a registry, then store them in
//! lamina's auth file (`$LAMINA_AUTH_FILE`, else
//! `$XDG_CONFIG_HOME/lamina/auth.json` or `~/.config/lamina/auth.json`;
//! docker `config.json` format, mode 0600).

use crate::context::Context;
use anyhow::{Context as _, bail};
use lamina_registry::credentials::{self, CredentialSources, Credentials};
use std::io::Read as _;

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
    /// Allow plain HTTP and unverified TLS for a non-loopback registry.
    #[arg(long)]
    pub insecure: bool,
}

/// Runs `lamina login`.
pub fn run(_ctx: &Context, args: Args) -> anyhow::Result<()> {
    if !args.password_stdin {
        bail!(
            "give the password on standard input with --password-stdin (lamina never takes it as an argument)"
        );
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("empty password on standard input");
    }
    let registry = registry_name(&args.registry);
    let creds = Credentials {
        username: args.username.clone(),
        password,
    };
    let mut opts = lamina_registry::ClientOptions {
        insecure: args.insecure,
        ..Default::default()
    };
    opts.credentials = CredentialSources {
        explicit: vec![(registry.clone(), creds.clone())],
        ..CredentialSources::none()
    };
    let client = lamina_registry::Client::new(opts)?;
    let rt = crate::transfer::runtime()?;
    rt.block_on(client.check_login(&registry))?;
    let file = credentials::lamina_auth_file()
        .context("no HOME: set LAMINA_AUTH_FILE to where lamina should keep credentials")?;
    credentials::store(&file, &registry, &creds)?;
    println!("Login Succeeded ({registry}, saved in {})", file.display());
    Ok(())
}

/// `https://host:port/path` → `host:port`; Docker Hub spellings → `docker.io`.
fn registry_name(input: &str) -> String {
    let s = input
        .strip_prefix("https://")
        .or_else(|| input.strip_prefix("http://"))
        .unwrap_or(input);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}
