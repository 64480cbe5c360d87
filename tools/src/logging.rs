//! Logging for both binaries: `LAMINA_LOG` (an `EnvFilter`, default `warn`)
//! to stderr, with colours only on a terminal, since the background servers'
//! stderr is a log file.

/// Installs the global tracing subscriber.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAMINA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
