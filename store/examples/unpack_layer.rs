//! Unpacks one layer blob into a directory, for benchmarks and debugging:
//! `unpack_layer LAYER DEST [LOWER...]` (DEST must be empty or absent).

use std::path::PathBuf;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.len() < 2 {
        eprintln!("usage: unpack_layer LAYER DEST [LOWER...]");
        std::process::exit(2);
    }
    let file = std::fs::File::open(&args[0]).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[0].display());
        std::process::exit(1)
    });
    std::fs::create_dir_all(&args[1]).expect("create DEST");
    let name = args[0].display().to_string();
    match lamina_store::layers::unpack::unpack(file, &args[1], &args[2..], &name) {
        Ok(stats) => println!("{} {} {}", stats.diff_id, stats.size, stats.entries),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
