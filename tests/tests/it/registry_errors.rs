//! Hostile or broken registry answers, served by a scripted server: each
//! must end `lamina pull` with a clear error naming the URL and the status,
//! and leave no image behind.

use crate::registry_pull::{err, lamina_cmd};
use lamina_tests::registry::{FaultServer, Response};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn image_manifest() -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
        digest(1)
    )
}

fn scripted(req: &lamina_tests::registry::Request, host: &str) -> Response {
    let path = req.path.as_str();
    let json = |status: u16, code: &str, msg: &str| {
        Response::new(
            status,
            format!(r#"{{"errors":[{{"code":"{code}","message":"{msg}"}}]}}"#),
        )
        .header("Content-Type", "application/json")
    };
    match path {
        "/v2/" => Response::new(200, "{}"),
        p if p.starts_with("/v2/e401/") => json(401, "UNAUTHORIZED", "authentication required")
            .header("WWW-Authenticate", r#"Basic realm="scripted""#),
        p if p.starts_with("/v2/e403/") => {
            json(403, "DENIED", "requested access to the resource is denied")
        }
        p if p.starts_with("/v2/e404/") => json(404, "MANIFEST_UNKNOWN", "manifest unknown"),
        p if p.starts_with("/v2/e429/") => {
            json(429, "TOOMANYREQUESTS", "slow down").header("Retry-After", "0")
        }
        p if p.starts_with("/v2/e500/") => Response::new(500, "internal server error"),
        p if p.starts_with("/v2/huge/") => {
            let mut body = image_manifest().into_bytes();
            body.pop();
            body.extend(std::iter::repeat_n(b' ', 8 << 20));
            body.push(b'}');
            Response::new(200, body).header("Content-Type", OCI_MANIFEST)
        }
        p if p.starts_with("/v2/loop/") => {
            Response::new(302, "").header("Location", &format!("http://{host}{p}"))
        }
        p if p.starts_with("/v2/schema1/") => Response::new(
            200,
            r#"{"schemaVersion":1,"name":"x","tag":"v1","fsLayers":[]}"#,
        )
        .header(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        p if p.starts_with("/v2/liar/") => Response::new(200, image_manifest())
            .header("Content-Type", "application/vnd.oci.image.index.v1+json"),
        _ => json(404, "NAME_UNKNOWN", "unknown"),
    }
}

fn pull_error(server: &FaultServer, repo: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = lamina_cmd(
        &root,
        dir.path(),
        &["pull", &format!("{}/{repo}:v1", server.host)],
    )
    .env("LAMINA_REGISTRY_TIMEOUT", "3")
    .output()
    .unwrap();
    let e = err(&out);
    let store = lamina_store::Store::open(&root).unwrap();
    assert!(store.images().unwrap().is_empty());
    e
}

#[test]
fn http_errors_name_url_and_status() {
    let server = FaultServer::start(scripted);
    for (repo, status, words) in [
        ("e401/app", "401", "refused"),
        ("e403/app", "403", "DENIED"),
        ("e404/app", "404", "MANIFEST_UNKNOWN"),
        ("e429/app", "429", "TOOMANYREQUESTS"),
        ("e500/app", "500", "internal server error"),
    ] {
        let e = pull_error(&server, repo);
        eprintln!("{repo}: {e}");
        let url = format!("http://{}/v2/{repo}/manifests/v1", server.host);
        assert!(
            e.contains(&url) && e.contains(&format!("HTTP {status}")) && e.contains(words),
            "{repo}: {e}"
        );
    }
    // 429 and 500 were retried (LAMINA_REGISTRY_RETRIES=1: two attempts).
    let reqs = server.requests.lock().unwrap();
    for repo in ["e429", "e500"] {
        let n = reqs
            .iter()
            .filter(|r| r.path.starts_with(&format!("/v2/{repo}/")))
            .count();
        assert_eq!(n, 2, "{repo} attempts");
    }
}

#[test]
fn hostile_manifests_are_refused() {
    let server = FaultServer::start(scripted);
    let e = pull_error(&server, "huge/app");
    eprintln!("{e}");
    assert!(
        e.contains("larger than")
            && e.contains("/v2/huge/app/manifests/v1")
            && e.contains("HTTP 200"),
        "{e}"
    );
    let e = pull_error(&server, "loop/app");
    eprintln!("{e}");
    assert!(
        e.contains("too many redirects") && e.contains("/v2/loop/app/manifests/v1"),
        "{e}"
    );
    let e = pull_error(&server, "schema1/app");
    assert!(
        e.contains("schema1") && e.contains("/v2/schema1/app/manifests/v1"),
        "{e}"
    );
    let e = pull_error(&server, "liar/app");
    eprintln!("{e}");
    assert!(
        e.contains("Content-Type") && e.contains("/v2/liar/app/manifests/v1"),
        "{e}"
    );
}

#[test]
fn token_endpoint_that_never_answers_times_out() {
    let server = FaultServer::start(|req, host| match req.path.as_str() {
        p if p.starts_with("/token") => Response::hang(),
        _ => Response::new(401, "").header(
            "WWW-Authenticate",
            &format!(
                r#"Bearer realm="http://{host}/token",service="scripted",scope="repository:x:pull""#
            ),
        ),
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("auth.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dXNlcjpzdXBlci1zZWNyZXQ="}}}}}}"#,
            server.host
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = lamina_cmd(
        &dir.path().join("root"),
        dir.path(),
        &["pull", &format!("{}/x/app:v1", server.host)],
    )
    .env("LAMINA_REGISTRY_TIMEOUT", "2")
    .output()
    .unwrap();
    let e = err(&out);
    eprintln!("{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        e.contains("timed out")
            && e.contains("token endpoint")
            && e.contains(&format!("http://{}/token", server.host)),
        "{e}"
    );
    assert!(
        !e.contains("super-secret") && !e.contains("dXNlcjpzdXBlci1zZWNyZXQ"),
        "{e}"
    );
}
