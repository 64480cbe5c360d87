//! `lamina`: pull images, mount them, work in a writable layer, commit, save
//! and push. This file only parses, dispatches and turns errors into messages.

mod commands;
mod context;
mod logging;
mod service;
mod transfer;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// lamina: a layered union filesystem and image store.
#[derive(Parser)]
#[command(name = "lamina", version, about)]
struct Cli {
    /// Store root (default: /var/lib/lamina for root, $XDG_DATA_HOME/lamina otherwise).
    #[arg(long, global = true, env = "LAMINA_ROOT")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull an image from a registry.
    Pull(commands::pull::Args),
    /// Push an image to a registry.
    Push(commands::push::Args),
    /// Store credentials for a registry.
    Login(commands::login::Args),
    /// List images.
    Images(commands::images::Args),
    /// Show an image's manifest, config and layers.
    Inspect(commands::inspect::Args),
    /// Show an image's history.
    History(commands::history::Args),
    /// List an image's layers.
    Layers(commands::layers::Args),
    /// Give an image another name.
    Tag(commands::tag::Args),
    /// Remove image names.
    Rmi(commands::rmi::Args),
    /// Create a container (an image plus a writable layer); prints its id.
    Create(commands::create::Args),
    /// List containers.
    Ps(commands::ps::Args),
    /// Remove containers.
    Rm(commands::rm::Args),
    /// Mount an image (read-only) or a container (read-write).
    Mount(commands::mount::Args),
    /// Unmount a lamina mount.
    Umount(commands::umount::Args),
    /// Show a container's changes (A/C/D).
    Diff(commands::diff::Args),
    /// Turn a container's changes into a new image.
    Commit(commands::commit::Args),
    /// Save images into one docker-archive + OCI-layout tar.
    Save(commands::save::Args),
    /// Load images from a docker-archive or OCI archive.
    Load(commands::load::Args),
    /// Write an image's or container's flattened tree as a tar.
    Export(commands::export::Args),
    /// Make a one-layer image from a tar.
    Import(commands::import::Args),
    /// Remove blobs and layers that nothing references.
    Gc(commands::gc::Args),
    /// Check the store's consistency.
    Fsck(commands::fsck::Args),
    /// Serve the local API and containerd snapshotter.
    Serve(commands::serve::Args),
    /// Serve an overlay mount in the foreground (used by `mount`).
    #[command(hide = true)]
    MountServe(commands::mount::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let ctx = context::Context::new(cli.root);
    let result = match cli.command {
        Command::Pull(a) => commands::pull::run(&ctx, a),
        Command::Push(a) => commands::push::run(&ctx, a),
        Command::Login(a) => commands::login::run(&ctx, a),
        Command::Images(a) => commands::images::run(&ctx, a),
        Command::Inspect(a) => commands::inspect::run(&ctx, a),
        Command::History(a) => commands::history::run(&ctx, a),
        Command::Layers(a) => commands::layers::run(&ctx, a),
        Command::Tag(a) => commands::tag::run(&ctx, a),
        Command::Rmi(a) => commands::rmi::run(&ctx, a),
        Command::Create(a) => commands::create::run(&ctx, a),
        Command::Ps(a) => commands::ps::run(&ctx, a),
        Command::Rm(a) => commands::rm::run(&ctx, a),
        Command::Mount(a) => commands::mount::run(&ctx, a),
        Command::Umount(a) => commands::umount::run(&ctx, a),
        Command::Diff(a) => commands::diff::run(&ctx, a),
        Command::Commit(a) => commands::commit::run(&ctx, a),
        Command::Save(a) => commands::save::run(&ctx, a),
        Command::Load(a) => commands::load::run(&ctx, a),
        Command::Export(a) => commands::export::run(&ctx, a),
        Command::Import(a) => commands::import::run(&ctx, a),
        Command::Gc(a) => commands::gc::run(&ctx, a),
        Command::Fsck(a) => commands::fsck::run(&ctx, a),
        Command::Serve(a) => commands::serve::run(&ctx, a),
        Command::MountServe(a) => commands::mount::serve(&ctx, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lamina: {err:#}");
            ExitCode::FAILURE
        }
    }
}
