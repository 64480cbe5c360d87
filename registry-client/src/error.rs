//! The registry client's error type.
//!
//! Every variant that comes from talking to a registry carries the URL (never
//! with credentials: lamina never puts userinfo in URLs, and tokens and
//! passwords travel only in headers) and, where there was one, the HTTP status.

/// Result with the registry client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference that does not parse.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest string that does not parse or uses an unsupported algorithm.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The text given.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A platform string that does not parse (`os/arch[/variant]`).
    #[error("invalid platform {platform:?}: expected os/arch[/variant], e.g. linux/arm64/v8")]
    InvalidPlatform {
        /// The text given.
        platform: String,
    },
    /// The registry refused our credentials (or we had none and it wants some).
    #[error(
        "{url}: HTTP {status}: registry {registry} refused access: {message} \
         (check `lamina login {registry}` or the credentials in ~/.docker/config.json)"
    )]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// The URL that was refused.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The registry's reason.
        message: String,
    },
    /// The manifest, tag, repository or blob does not exist.
    #[error("{url}: HTTP {status}: {what} not found: {message}")]
    NotFound {
        /// The URL.
        url: String,
        /// 404 (or the status that meant "unknown").
        status: u16,
        /// What was looked for.
        what: String,
        /// The registry's message.
        message: String,
    },
    /// Any other unexpected HTTP status (after retries where they apply).
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The registry's message (its `errors` array, or the body's start).
        message: String,
    },
    /// Could not connect, or the connection broke (after retries).
    #[error("{url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What happened (connection refused, reset, TLS failure...).
        reason: String,
    },
    /// The server did not answer in time.
    #[error("{url}: timed out after {seconds}s waiting for the server{hint}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout that expired.
        seconds: u64,
        /// Extra context, e.g. " (token endpoint)".
        hint: String,
    },
    /// Too many redirects (a loop, most likely).
    #[error("{url}: too many redirects (more than {limit}); the registry's redirects loop")]
    TooManyRedirects {
        /// The URL first requested.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// Bytes received do not hash to the digest asked for.
    #[error(
        "{url}: digest mismatch: expected {expected}, got {actual}; the registry or a proxy returned corrupt data"
    )]
    DigestMismatch {
        /// The URL.
        url: String,
        /// Digest asked for.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// More or fewer bytes than the descriptor says.
    #[error("{url}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The URL.
        url: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes received (at least).
        actual: u64,
    },
    /// A manifest larger than the limit.
    #[error("{url}: HTTP {status}: manifest larger than the {limit}-byte limit; refusing it")]
    ManifestTooLarge {
        /// The URL.
        url: String,
        /// The status of the response.
        status: u16,
        /// The limit in bytes.
        limit: u64,
    },
    /// A manifest kind lamina does not handle (schema1, unknown media type).
    #[error("{url}: unsupported manifest type {media_type:?}: {reason}")]
    UnsupportedManifest {
        /// The URL.
        url: String,
        /// The media type seen.
        media_type: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A manifest that does not parse or contradicts itself.
    #[error("{url}: invalid manifest: {reason}")]
    InvalidManifest {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// An index with no manifest for the wanted platform.
    #[error("{reference}: no image for platform {wanted}; available: {}; choose one with --platform", available.join(", "))]
    NoMatchingPlatform {
        /// The reference pulled.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index lists.
        available: Vec<String>,
    },
    /// The registry is not on loopback and `--insecure` was not given, but
    /// only plain HTTP works.
    #[error("{url}: {reason}")]
    Insecure {
        /// The URL.
        url: String,
        /// Explanation and what to do.
        reason: String,
    },
    /// The token endpoint answered, but not with a usable token.
    #[error("{url}: HTTP {status}: token endpoint: {reason}")]
    Token {
        /// The token endpoint (without query credentials; there never are any).
        url: String,
        /// Its status.
        status: u16,
        /// What went wrong.
        reason: String,
    },
    /// A credentials file could not be read or written.
    #[error("credentials file {path}: {reason}")]
    CredentialsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong (never the credentials themselves).
        reason: String,
    },
    /// A docker credential helper failed.
    #[error("credential helper docker-credential-{helper} for {registry}: {reason}")]
    CredentialHelper {
        /// Helper name (without the `docker-credential-` prefix).
        helper: String,
        /// Registry asked about.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// Local I/O while reading a blob to push.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
