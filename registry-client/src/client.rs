//! The HTTP core: one [`Client`] per process, shared by concurrent
//! downloads. It owns the connection pool, the per-registry state (scheme and
//! auth challenge, learnt from `GET /v2/`) and the token cache, and sends every
//! request through [`Client::send`], which adds auth, retries with backoff on
//! 429/5xx and connection failures, and turns failures into [`Error`]s that
//! name the URL and status and never contain credentials.
//!
//! Plain HTTP is used only for loopback registries, or for others when
//! `insecure` is set (then HTTPS without certificate checks is tried first).

use crate::auth::{Challenge, Token};
use crate::credentials::{CredentialSources, Credentials};
use crate::error::{Error, Result};
use crate::reference::{api_host, is_loopback_host};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    tokens: Mutex<HashMap<(String, String), Token>>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
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

    fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(c) = self.inner.creds.lock().expect("creds lock").get(registry) {
            return Ok(c.clone());
        }
        let c = self.inner.opts.credentials.lookup(registry)?;
        self.inner
            .creds
            .lock()
            .expect("creds lock")
            .insert(registry.to_string(), c.clone());
        Ok(c)
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
                let creds = self.credentials(registry)?;
                let mut req = self.http_for(registry).get(&url);
                if let Some(c) = &creds {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| transport(&url, e, self.inner.opts.read_timeout, ""))?;
                check(resp, registry, "registry").await.map(drop)
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
    /// 429/5xx/connection failures and re-authenticating once on 401.
    /// Returns the response whatever its final status; see [`check`].
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
            let auth = self
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
            if resp.status() == StatusCode::UNAUTHORIZED && !reauthed {
                reauthed = true;
                if let Some(c) = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Challenge::parse)
                {
                    let mut scopes = scope.scopes.clone();
                    if let Some(s) = c.params.get("scope")
                        && !scopes.contains(s)
                    {
                        scopes.push(s.clone());
                    }
                    // Drop the cached token and fetch a new one for the scopes asked for.
                    self.inner
                        .tokens
                        .lock()
                        .expect("tokens lock")
                        .remove(&(registry.to_string(), scope.scopes.join(" ")));
                    if c.is_bearer() {
                        let token = self.fetch_token(registry, &c, &scopes).await?;
                        self.inner
                            .tokens
                            .lock()
                            .expect("tokens lock")
                            .insert((registry.to_string(), scope.scopes.join(" ")), token);
                    }
                    challenge = Some(c);
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    async fn auth_header(
        &self,
        registry: &str,
        challenge: Option<&Challenge>,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>> {
        let Some(ch) = challenge else { return Ok(None) };
        let value = if ch.is_bearer() {
            let key = (registry.to_string(), scopes.join(" "));
            let cached = self
                .inner
                .tokens
                .lock()
                .expect("tokens lock")
                .get(&key)
                .filter(|t| t.fresh())
                .cloned();
            let token = match cached {
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
            format!("Bearer {}", token.value)
        } else if ch.scheme == "basic" {
            match self.credentials(registry)? {
                Some(c) => c.basic_header(),
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| Error::Token {
            url: ch.params.get("realm").cloned().unwrap_or_default(),
            status: 0,
            reason: "token is not a valid header value".into(),
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    async fn fetch_token(
        &self,
        registry: &str,
        ch: &Challenge,
        scopes: &[String],
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
        let creds = self.credentials(registry)?;
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
