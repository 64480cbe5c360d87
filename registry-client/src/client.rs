//! The HTTP core: one [`Client`] per process, shared by concurrent
//! downloads. It owns the connection pool, the per-registry state (scheme and
//! auth challenge, learnt from `GET /v2/`) and the token cache, and sends every
//! request through [`Client::send`], which adds auth, retries with backoff on
//! 429/5xx and connection failures, and turns failures into [`Error`]s that
//! name the URL and status and never contain credentials.
//!
//! Plain HTTP is used only for loopback registries, or for others when
//! `insecure` is set (then HTTPS without certificate checks is tried first).
//!
//! # Credentials in a long-lived client
//!
//! A client may live as long as a daemon (`lamina serve`), so the credential
//! lookup it caches per registry is not trusted forever. The policy:
//!
//! - **Changed files.** Each use of a cached lookup stats the credential
//!   files of [`CredentialSources`] (device, inode, size, mtime; no read).
//!   If any differs from when the lookup was made, the sources are read
//!   again. `lamina login` (and docker) replace the file by a rename, so a
//!   login is seen by the very next request.
//! - **Age.** A lookup older than [`ClientOptions::credentials_ttl`] is read
//!   again: this covers credential helpers, which have no file to stat, and
//!   in-place edits that keep size and mtime.
//! - **Refusal.** When the registry refuses with 401 or 403 (a request, the
//!   token endpoint, or [`Client::check_login`]'s authenticated ping), the
//!   sources are read again at once, whatever the cache says, and the
//!   request is retried once: with the new credentials when they differ;
//!   for a 401 also with the same ones (a fresh token, maybe with the scope
//!   the challenge named). A second refusal is the caller's error.
//! - **Tokens follow credentials.** Every lookup that returns different
//!   credentials than the cached ones starts a new credential *generation*
//!   for that registry; bearer tokens remember the generation they were
//!   fetched with and are dropped (and never used) once it is not current,
//!   so no request goes out with a token of credentials that were replaced
//!   or removed.
//!
//! The registry's scheme and challenge (`GET /v2/`) and connections are
//! kept for the client's life. Credentials are never logged nor put in an
//! [`Error`].

use crate::auth::{Challenge, Token};
use crate::credentials::{CredentialSources, Credentials, SourcesStamp};
use crate::error::{Error, Result};
use crate::reference::{api_host, is_loopback_host};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tunables of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Allow plain HTTP and unverified TLS for non-loopback registries.
    pub insecure: bool,
    /// Where credentials come from.
    pub credentials: CredentialSources,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for any read (headers or the next body bytes).
    pub read_timeout: Duration,
    /// Whole-request timeout for the token endpoint.
    pub token_timeout: Duration,
    /// Retries after the first attempt on 429/5xx/connection failures.
    pub retries: u32,
    /// First backoff delay; doubles each retry (with jitter), capped at 10 s.
    pub backoff: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_size: u64,
    /// Blobs larger than this are pushed in chunks of this size (PATCH);
    /// smaller ones in one PUT.
    pub chunk_size: u64,
    /// `User-Agent`.
    pub user_agent: String,
    /// Longest time a credential lookup is reused without reading the
    /// sources again, even when their files look unchanged (see the module
    /// docs for the whole policy).
    pub credentials_ttl: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            credentials: CredentialSources::from_env(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            token_timeout: Duration::from_secs(60),
            retries: 4,
            backoff: Duration::from_millis(200),
            max_redirects: 10,
            max_manifest_size: 4 << 20,
            chunk_size: 64 << 20,
            user_agent: concat!("lamina/", env!("CARGO_PKG_VERSION")).to_string(),
            credentials_ttl: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
struct RegistryState {
    base: String,
    challenge: Option<Challenge>,
}

struct Inner {
    http: reqwest::Client,
    /// Only with `opts.insecure`: building a client loads the system's CA
    /// certificates (tens of ms), which a pull should not pay for nothing.
    http_insecure: Option<reqwest::Client>,
    opts: ClientOptions,
    registries: tokio::sync::Mutex<HashMap<String, RegistryState>>,
    /// Bearer tokens by (registry, scopes), with the credential generation
    /// they were fetched with.
    tokens: Mutex<HashMap<(String, String), (u64, Token)>>,
    creds: Mutex<HashMap<String, CachedCredentials>>,
}

/// A registry's credential lookup as the client caches it.
struct CachedCredentials {
    creds: Option<Credentials>,
    /// When the sources were read.
    read_at: Instant,
    /// The sources' files just before they were read.
    stamp: SourcesStamp,
    /// Bumped whenever a lookup returns other credentials than `creds`.
    generation: u64,
}

/// The credentials a request uses, and their generation.
#[derive(Clone)]
struct CurrentCredentials {
    creds: Option<Credentials>,
    generation: u64,
}

/// A registry client. Cheap to clone; clones share connections and tokens.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What a request needs from auth: the registry and the scopes.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    pub(crate) registry: String,
    pub(crate) scopes: Vec<String>,
}

impl Client {
    /// A client with these options.
    pub fn new(opts: ClientOptions) -> Result<Self> {
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .user_agent(opts.user_agent.clone())
                .connect_timeout(opts.connect_timeout)
                .read_timeout(opts.read_timeout)
                .redirect(reqwest::redirect::Policy::limited(opts.max_redirects))
                .danger_accept_invalid_certs(insecure)
                .pool_max_idle_per_host(16)
                .build()
                .map_err(|e| Error::Transport {
                    url: String::new(),
                    reason: format!("building the HTTP client: {e}"),
                })
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http: build(false)?,
                http_insecure: if opts.insecure {
                    Some(build(true)?)
                } else {
                    None
                },
                opts,
                registries: tokio::sync::Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
                creds: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    fn http_for(&self, registry: &str) -> &reqwest::Client {
        match &self.inner.http_insecure {
            Some(insecure) if !is_loopback_host(registry) => insecure,
            _ => &self.inner.http,
        }
    }

    /// The credentials for `registry`: the cached lookup while it is young
    /// and its files are unchanged, else a fresh one (see the module docs).
    fn credentials(&self, registry: &str) -> Result<CurrentCredentials> {
        self.lookup_credentials(registry, false)
    }

    /// Reads the credential sources for `registry` again, whatever the
    /// cache says (after a refusal).
    fn reread_credentials(&self, registry: &str) -> Result<CurrentCredentials> {
        self.lookup_credentials(registry, true)
    }

    fn lookup_credentials(&self, registry: &str, force: bool) -> Result<CurrentCredentials> {
        let sources = &self.inner.opts.credentials;
        // Stamp before reading: a change in between is seen next time.
        let stamp = sources.stamp();
        if !force
            && let Some(c) = self.inner.creds.lock().expect("creds lock").get(registry)
            && c.stamp == stamp
            && c.read_at.elapsed() < self.inner.opts.credentials_ttl
        {
            return Ok(CurrentCredentials {
                creds: c.creds.clone(),
                generation: c.generation,
            });
        }
        let read_at = Instant::now();
        let creds = sources.lookup(registry)?;
        let mut map = self.inner.creds.lock().expect("creds lock");
        let entry = map
            .entry(registry.to_string())
            .or_insert_with(|| CachedCredentials {
                creds: creds.clone(),
                read_at,
                stamp: stamp.clone(),
                generation: 0,
            });
        if entry.creds != creds {
            entry.generation += 1;
            entry.creds = creds;
            tracing::debug!(
                registry,
                generation = entry.generation,
                "credentials changed; dropping the registry's tokens"
            );
            self.inner
                .tokens
                .lock()
                .expect("tokens lock")
                .retain(|(r, _), _| r != registry);
        }
        entry.read_at = read_at;
        entry.stamp = stamp;
        Ok(CurrentCredentials {
            creds: entry.creds.clone(),
            generation: entry.generation,
        })
    }

    /// Checks that the registry answers the v2 API and that the credentials
    /// (if any) are accepted: pings, then (for token auth) fetches a token
    /// with no repository scope, as `docker login` does.
    pub async fn check_login(&self, registry: &str) -> Result<()> {
        let state = self.registry_state(registry).await?;
        let url = format!("{}/v2/", state.base);
        match &state.challenge {
            None => Ok(()),
            Some(ch) if ch.is_bearer() => {
                self.fetch_token(registry, ch, &[]).await?;
                Ok(())
            }
            Some(_) => {
                let mut current = self.credentials(registry)?;
                let mut retried = false;
                loop {
                    let mut req = self.http_for(registry).get(&url);
                    if let Some(c) = &current.creds {
                        let mut v = HeaderValue::from_str(&c.basic_header())
                            .expect("base64 is a valid header");
                        v.set_sensitive(true);
                        req = req.header(AUTHORIZATION, v);
                    }
                    let resp = req
                        .send()
                        .await
                        .map_err(|e| transport(&url, e, self.inner.opts.read_timeout, ""))?;
                    if refused(resp.status()) && !retried {
                        retried = true;
                        let fresh = self.reread_credentials(registry)?;
                        if fresh.generation != current.generation {
                            current = fresh;
                            continue;
                        }
                    }
                    return check(resp, registry, "registry").await.map(drop);
                }
            }
        }
    }

    /// Scheme and challenge of a registry, learnt once with `GET /v2/`.
    async fn registry_state(&self, registry: &str) -> Result<RegistryState> {
        let mut map = self.inner.registries.lock().await;
        if let Some(s) = map.get(registry) {
            return Ok(s.clone());
        }
        let host = api_host(registry);
        let loopback = is_loopback_host(registry);
        let schemes: &[&str] = if loopback {
            &["http"]
        } else if self.inner.opts.insecure {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last_err = None;
        for scheme in schemes {
            let base = format!("{scheme}://{host}");
            let url = format!("{base}/v2/");
            match self
                .send_retrying(|| self.http_for(registry).get(&url), &url)
                .await
            {
                Ok(resp) => {
                    let challenge = if resp.status() == StatusCode::UNAUTHORIZED {
                        resp.headers()
                            .get(WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(Challenge::parse)
                    } else {
                        None
                    };
                    let state = RegistryState { base, challenge };
                    map.insert(registry.to_string(), state.clone());
                    return Ok(state);
                }
                Err(e) => last_err = Some(e),
            }
        }
        let err = last_err.expect("at least one scheme tried");
        if !loopback
            && !self.inner.opts.insecure
            && let Error::Transport { url, reason } = err
        {
            return Err(Error::Transport {
                url,
                reason: format!(
                    "{reason} (lamina uses HTTPS for non-loopback registries; pass --insecure for a plain-HTTP or self-signed registry)"
                ),
            });
        }
        Err(err)
    }

    /// The base URL (`scheme://host`) of a registry.
    pub(crate) async fn base(&self, registry: &str) -> Result<String> {
        Ok(self.registry_state(registry).await?.base)
    }

    /// Sends with retries on 429/5xx and connection failures only (no auth).
    async fn send_retrying(
        &self,
        build: impl Fn() -> RequestBuilder,
        url: &str,
    ) -> Result<Response> {
        let opts = &self.inner.opts;
        let mut attempt = 0;
        loop {
            match build().send().await {
                Ok(resp) if retryable_status(resp.status()) && attempt < opts.retries => {
                    let delay = retry_delay(opts.backoff, attempt, resp.headers().get(RETRY_AFTER));
                    tracing::debug!(url, status = resp.status().as_u16(), ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if retryable_error(&e) && attempt < opts.retries => {
                    let delay = retry_delay(opts.backoff, attempt, None);
                    tracing::debug!(url, error = %e, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    return Err(match transport(url, e, opts.read_timeout, "") {
                        Error::TooManyRedirects { url, .. } => Error::TooManyRedirects {
                            url,
                            limit: opts.max_redirects,
                        },
                        other => other,
                    });
                }
            }
            attempt += 1;
        }
    }

    /// Sends a request to a registry with auth for `scope`, retrying on
    /// 429/5xx/connection failures, and once after a refusal: on 401 it
    /// re-reads the credentials and re-authenticates (a fresh token); on 403
    /// it retries only when the credentials read again differ from those
    /// used. Returns the response whatever its final status; see [`check`].
    pub(crate) async fn send(
        &self,
        scope: &Scope,
        method: Method,
        url: &str,
        customise: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let registry = scope.registry.as_str();
        let state = self.registry_state(registry).await?;
        let mut challenge = state.challenge.clone();
        let mut reauthed = false;
        loop {
            let (auth, generation) = self
                .auth_header(registry, challenge.as_ref(), &scope.scopes)
                .await?;
            let build = || {
                let mut req = self.http_for(registry).request(method.clone(), url);
                if let Some(a) = &auth {
                    req = req.header(AUTHORIZATION, a.clone());
                }
                customise(req)
            };
            let resp = self.send_retrying(build, url).await?;
            if !refused(resp.status()) || reauthed {
                return Ok(resp);
            }
            reauthed = true;
            // The registry refused: read the credentials again; a change
            // also retires the tokens fetched with the old ones.
            let fresh = self.reread_credentials(registry)?;
            let changed = generation.is_some_and(|g| g != fresh.generation);
            if resp.status() == StatusCode::FORBIDDEN {
                if changed {
                    tracing::debug!(url, "403 with credentials that changed since; retrying");
                    continue;
                }
                return Ok(resp);
            }
            let Some(c) = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse)
            else {
                if changed {
                    continue;
                }
                return Ok(resp);
            };
            let mut scopes = scope.scopes.clone();
            if let Some(s) = c.params.get("scope")
                && !scopes.contains(s)
            {
                scopes.push(s.clone());
            }
            // Drop the cached token and fetch a new one for the scopes asked for.
            let key = (registry.to_string(), scope.scopes.join(" "));
            self.inner.tokens.lock().expect("tokens lock").remove(&key);
            if c.is_bearer() {
                let token = self.fetch_token(registry, &c, &scopes).await?;
                self.inner
                    .tokens
                    .lock()
                    .expect("tokens lock")
                    .insert(key, token);
            }
            challenge = Some(c);
        }
    }

    /// The `Authorization` value for a request, and the credential
    /// generation it was made from (`None` when no credentials were
    /// consulted: no challenge, or a scheme lamina does not speak).
    async fn auth_header(
        &self,
        registry: &str,
        challenge: Option<&Challenge>,
        scopes: &[String],
    ) -> Result<(Option<HeaderValue>, Option<u64>)> {
        let Some(ch) = challenge else {
            return Ok((None, None));
        };
        let (value, generation) = if ch.is_bearer() {
            // Looked up first so that a change retires the cached tokens.
            let current = self.credentials(registry)?;
            let key = (registry.to_string(), scopes.join(" "));
            let cached = self
                .inner
                .tokens
                .lock()
                .expect("tokens lock")
                .get(&key)
                .filter(|(g, t)| *g == current.generation && t.fresh())
                .cloned();
            let (generation, token) = match cached {
                Some(t) => t,
                None => {
                    let t = self.fetch_token(registry, ch, scopes).await?;
                    self.inner
                        .tokens
                        .lock()
                        .expect("tokens lock")
                        .insert(key, t.clone());
                    t
                }
            };
            (format!("Bearer {}", token.value), generation)
        } else if ch.scheme == "basic" {
            let current = self.credentials(registry)?;
            match &current.creds {
                Some(c) => (c.basic_header(), current.generation),
                None => return Ok((None, Some(current.generation))),
            }
        } else {
            return Ok((None, None));
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| Error::Token {
            url: ch.params.get("realm").cloned().unwrap_or_default(),
            status: 0,
            reason: "token is not a valid header value".into(),
        })?;
        v.set_sensitive(true);
        Ok((Some(v), Some(generation)))
    }

    /// A token for `scopes` with the current credentials, and their
    /// generation. When the token endpoint refuses, the credentials are read
    /// again and, if they changed, asked for once more.
    async fn fetch_token(
        &self,
        registry: &str,
        ch: &Challenge,
        scopes: &[String],
    ) -> Result<(u64, Token)> {
        let current = self.credentials(registry)?;
        let refusal = match self
            .request_token(registry, ch, scopes, current.creds.as_ref())
            .await
        {
            Ok(token) => return Ok((current.generation, token)),
            Err(e @ Error::Unauthorized { .. }) => e,
            Err(e) => return Err(e),
        };
        let fresh = self.reread_credentials(registry)?;
        if fresh.generation == current.generation {
            return Err(refusal);
        }
        tracing::debug!(
            registry,
            "token refused; retrying with the credentials read again"
        );
        let token = self
            .request_token(registry, ch, scopes, fresh.creds.as_ref())
            .await?;
        Ok((fresh.generation, token))
    }

    /// One token request to the challenge's realm, with `creds` if any.
    async fn request_token(
        &self,
        registry: &str,
        ch: &Challenge,
        scopes: &[String],
        creds: Option<&Credentials>,
    ) -> Result<Token> {
        let realm = ch.params.get("realm").cloned().unwrap_or_default();
        let mut url = reqwest::Url::parse(&realm).map_err(|e| Error::Token {
            url: realm.clone(),
            status: 0,
            reason: format!("the registry's realm is not a URL: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = ch.params.get("service") {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let url_s = url.to_string();
        let timeout = self.inner.opts.token_timeout;
        let build = || {
            let mut req = self.http_for(registry).get(url.clone()).timeout(timeout);
            if let Some(c) = &creds {
                let mut v =
                    HeaderValue::from_str(&c.basic_header()).expect("base64 is a valid header");
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
            req
        };
        let resp = match self.send_retrying(build, &url_s).await {
            Ok(r) => r,
            Err(Error::Timeout { url, .. }) => {
                return Err(Error::Timeout {
                    url,
                    seconds: timeout.as_secs(),
                    hint: " (token endpoint)".into(),
                });
            }
            Err(e) => return Err(e),
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let message = error_message(resp).await;
            return Err(Error::Unauthorized {
                registry: registry.to_string(),
                url: url_s,
                status: status.as_u16(),
                message: if creds.is_some() {
                    format!("credentials rejected by the token endpoint: {message}")
                } else {
                    format!("anonymous access refused by the token endpoint: {message}")
                },
            });
        }
        if !status.is_success() {
            let message = error_message(resp).await;
            return Err(Error::Token {
                url: url_s,
                status: status.as_u16(),
                reason: message,
            });
        }
        let body = read_limited(resp, 1 << 20, &url_s)
            .await
            .map_err(|e| match e {
                Error::Timeout { url, .. } => Error::Timeout {
                    url,
                    seconds: timeout.as_secs(),
                    hint: " (token endpoint)".into(),
                },
                e => e,
            })?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| Error::Token {
            url: url_s.clone(),
            status: status.as_u16(),
            reason: format!("answer is not token JSON: {e}"),
        })?;
        let value = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Token {
                url: url_s.clone(),
                status: status.as_u16(),
                reason: "answer has no token".into(),
            })?;
        Ok(Token::new(value, t.expires_in))
    }
}

/// 401 or 403: the registry refused the request's credentials (or their absence).
fn refused(s: StatusCode) -> bool {
    s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN
}

fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

fn retryable_error(e: &reqwest::Error) -> bool {
    !e.is_timeout() && !e.is_redirect() && (e.is_connect() || e.is_request() || e.is_body())
}

pub(crate) fn retry_delay(
    base: Duration,
    attempt: u32,
    retry_after: Option<&HeaderValue>,
) -> Duration {
    if let Some(secs) = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Duration::from_secs(secs.min(10));
    }
    let exp = base
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(10));
    let jitter = rand::random::<f64>() * 0.3 + 0.85;
    exp.mul_f64(jitter)
}

/// Turns a reqwest failure into an [`Error`] naming the URL.
pub(crate) fn transport(url: &str, e: reqwest::Error, timeout: Duration, hint: &str) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            url: url.to_string(),
            seconds: timeout.as_secs(),
            hint: hint.to_string(),
        };
    }
    if e.is_redirect() {
        return Error::TooManyRedirects {
            url: url.to_string(),
            limit: 0,
        };
    }
    let mut reason = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        if !reason.is_empty() {
            reason.push_str(": ");
        }
        reason.push_str(&s.to_string());
        src = s.source();
    }
    if reason.is_empty() {
        reason = e.without_url().to_string();
    }
    Error::Transport {
        url: url.to_string(),
        reason,
    }
}

/// The registry's error message from a failed response: the
/// distribution-spec `errors` array if present, else the start of the body.
pub(crate) async fn error_message(resp: Response) -> String {
    let status = resp.status();
    let body = match read_limited(resp, 64 << 10, "").await {
        Ok(b) => b,
        Err(_) => return status.canonical_reason().unwrap_or("").to_string(),
    };
    #[derive(serde::Deserialize)]
    struct Errs {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(errs) = serde_json::from_slice::<Errs>(&body) {
        let parts: Vec<String> = errs
            .errors
            .iter()
            .map(|e| match (&e.code, &e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => String::new(),
            })
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("").to_string()
    } else {
        text
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(mut resp: Response, limit: u64, url: &str) -> Result<Vec<u8>> {
    let status = resp.status().as_u16();
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(Error::ManifestTooLarge {
            url: url.to_string(),
            status,
            limit,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport(url, e, Duration::ZERO, ""))?
    {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::ManifestTooLarge {
                url: url.to_string(),
                status,
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Maps a non-success response to an error (401/403 → Unauthorized, 404 →
/// NotFound, others → Http); passes success through.
pub(crate) async fn check(resp: Response, registry: &str, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let url = resp.url().to_string();
    let message = error_message(resp).await;
    let status = status.as_u16();
    Err(match status {
        401 | 403 => Error::Unauthorized {
            registry: registry.to_string(),
            url,
            status,
            message,
        },
        404 => Error::NotFound {
            url,
            status,
            what: what.to_string(),
            message,
        },
        _ => Error::Http {
            url,
            status,
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::store;

    fn client(file: &std::path::Path, ttl: Duration) -> Client {
        Client::new(ClientOptions {
            credentials: CredentialSources {
                lamina_file: Some(file.to_path_buf()),
                ..CredentialSources::none()
            },
            credentials_ttl: ttl,
            ..ClientOptions::default()
        })
        .unwrap()
    }

    fn creds(password: &str) -> Credentials {
        Credentials {
            username: "u".into(),
            password: password.into(),
        }
    }

    fn token_count(c: &Client) -> usize {
        c.inner.tokens.lock().unwrap().len()
    }

    #[test]
    fn a_replaced_file_is_read_again_and_retires_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        let c = client(&file, Duration::from_secs(3600));
        let first = c.credentials("r:1").unwrap();
        assert_eq!((first.creds, first.generation), (None, 0));

        store(&file, "r:1", &creds("one")).unwrap();
        let second = c.credentials("r:1").unwrap();
        assert_eq!(second.creds, Some(creds("one")));
        assert_eq!(second.generation, 1);
        // Unchanged file: the cached lookup, same generation.
        assert_eq!(c.credentials("r:1").unwrap().generation, 1);

        for reg in ["r:1", "other:2"] {
            c.inner.tokens.lock().unwrap().insert(
                (reg.into(), "repository:a:pull".into()),
                (1, Token::new("t".into(), None)),
            );
        }
        store(&file, "r:1", &creds("two")).unwrap();
        let third = c.credentials("r:1").unwrap();
        assert_eq!((third.creds, third.generation), (Some(creds("two")), 2));
        // Only the registry whose credentials changed loses its tokens.
        assert_eq!(token_count(&c), 1);
        assert!(
            c.inner
                .tokens
                .lock()
                .unwrap()
                .keys()
                .all(|(r, _)| r == "other:2")
        );

        // Another registry's entry changing does not touch r:1.
        store(&file, "other:2", &creds("x")).unwrap();
        assert_eq!(c.credentials("r:1").unwrap().generation, 2);
    }

    /// Rewrites `file` in place, password `from` becoming `to`, keeping its inode,
    /// size and mtime: invisible to the stamp.
    fn edit_unseen(file: &std::path::Path, from: &str, to: &str) {
        let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        let fixed = text.replace(
            creds(from).basic_header().trim_start_matches("Basic "),
            creds(to).basic_header().trim_start_matches("Basic "),
        );
        assert_ne!(text, fixed);
        let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        std::io::Write::write_all(&mut &f, fixed.as_bytes()).unwrap();
        f.set_modified(mtime).unwrap();
    }

    #[test]
    fn an_unseen_edit_is_read_after_the_ttl_or_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        store(&file, "r:1", &creds("pw-1")).unwrap();

        let long = client(&file, Duration::from_secs(3600));
        let zero = client(&file, Duration::ZERO);
        assert_eq!(long.credentials("r:1").unwrap().creds, Some(creds("pw-1")));
        assert_eq!(zero.credentials("r:1").unwrap().creds, Some(creds("pw-1")));
        let stamp = long.options().credentials.stamp();
        edit_unseen(&file, "pw-1", "pw-2");
        assert_eq!(long.options().credentials.stamp(), stamp);

        // Young cache, same stamp: trusted.
        assert_eq!(long.credentials("r:1").unwrap().creds, Some(creds("pw-1")));
        // Expired: read again.
        let z = zero.credentials("r:1").unwrap();
        assert_eq!((z.creds, z.generation), (Some(creds("pw-2")), 1));
        // A refusal forces the read.
        let l = long.reread_credentials("r:1").unwrap();
        assert_eq!((l.creds, l.generation), (Some(creds("pw-2")), 1));
        assert_eq!(long.credentials("r:1").unwrap().generation, 1);
    }
}
