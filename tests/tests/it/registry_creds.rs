//! A long-lived client (one object, as `lamina serve` keeps) re-reads its
//! credentials: after a refusal, when the auth file was replaced, and it
//! drops tokens fetched with credentials that changed. Against a real
//! `docker-registry` with htpasswd or token auth; credentials come from an
//! auth file the test writes as `lamina login` does.

use crate::registry_client::two_layer_image;
use lamina_registry::credentials::{self, CredentialSources};
use lamina_registry::{Client, ClientOptions, Credentials, Digest, Error, Platform, Reference};
use lamina_tests::registry::{Auth, Placed, Registry, runtime};
use lamina_tests::require_tools;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// One client reading credentials only from the auth file `file` (which
/// may not exist yet), with the default cache lifetime.
fn file_client(file: &Path) -> Client {
    Client::new(ClientOptions {
        credentials: CredentialSources {
            lamina_file: Some(file.to_path_buf()),
            ..CredentialSources::none()
        },
        ..ClientOptions::default()
    })
    .unwrap()
}

fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: password.into(),
    }
}

fn placed(auth: Auth) -> Option<(Placed, Reference, PathBuf)> {
    let p = Registry::with_image(auth, "test/app:v1", two_layer_image)?;
    let r = Reference::parse(&p.name).unwrap();
    let file = p.dir.path().join("auth/auth.json");
    Some((p, r, file))
}

/// The manifest, then every layer blob, verified against its digest.
fn pull(client: &Client, r: &Reference) -> lamina_registry::Result<usize> {
    runtime().block_on(async {
        let image = client.resolve(r, &Platform::host()).await?;
        for l in &image.manifest.layers {
            let data = client.blob_bytes(r, &l.digest, l.size, 1 << 30).await?;
            assert_eq!(Digest::of(&data), l.digest);
        }
        Ok(image.manifest.layers.len())
    })
}

fn assert_refused(err: Error, secret: &str) {
    let shown = format!("{err} {err:?}");
    assert!(
        matches!(err, Error::Unauthorized { status: 401, .. }),
        "{shown}"
    );
    assert!(!shown.contains(secret), "{shown}");
}

#[test]
fn one_client_uses_a_login_made_after_its_refusal() {
    require_tools!("umoci", "skopeo", "htpasswd");
    let Some((p, r, file)) = placed(Auth::htpasswd("alice", "s3cret-pw")) else {
        return;
    };
    let client = file_client(&file);
    // No credentials anywhere yet: the registry refuses.
    assert_refused(pull(&client, &r).unwrap_err(), "s3cret-pw");
    // What `lamina login` writes; the same client object then pulls.
    credentials::store(&file, &p.reg.host, &creds("alice", "s3cret-pw")).unwrap();
    assert_eq!(pull(&client, &r).unwrap(), 2);
    // A logout (the entry removed) is seen too: refused again.
    std::fs::write(&file, "{\"auths\":{}}\n").unwrap();
    assert_refused(pull(&client, &r).unwrap_err(), "s3cret-pw");
}

#[test]
fn a_wrong_password_edited_in_place_is_reread_after_the_refusal() {
    require_tools!("umoci", "skopeo", "htpasswd");
    let Some((p, r, file)) = placed(Auth::htpasswd("alice", "s3cret-pw")) else {
        return;
    };
    // Same length as the right one, so the edit below keeps the size.
    credentials::store(&file, &p.reg.host, &creds("alice", "wrong-pw1")).unwrap();
    let client = file_client(&file);
    assert_refused(pull(&client, &r).unwrap_err(), "wrong-pw1");

    // Fix the password in place, keeping inode, size and mtime: the file
    // looks unchanged to a stat, so only the refusal makes the client read
    // it again (within the 30 s the cached lookup is otherwise trusted).
    let sources = client.options().credentials.clone();
    let before = sources.stamp();
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let fixed = text.replace(&b64("alice:wrong-pw1"), &b64("alice:s3cret-pw"));
    assert_ne!(fixed, text);
    assert_eq!(fixed.len(), text.len());
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::io::Write::write_all(&mut &f, fixed.as_bytes()).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(
        sources.stamp(),
        before,
        "the edit must be invisible to stat"
    );

    assert_eq!(pull(&client, &r).unwrap(), 2);
}

#[test]
fn token_auth_a_wrong_password_replaced_by_the_right_one() {
    require_tools!("umoci", "skopeo", "openssl");
    let Some((p, r, file)) = placed(Auth::token("bob", "tok-pw", false)) else {
        return;
    };
    let issuer = p.reg.issuer.as_ref().unwrap();
    credentials::store(&file, &p.reg.host, &creds("bob", "bad-pw")).unwrap();
    let client = file_client(&file);
    let err = pull(&client, &r).unwrap_err();
    assert!(err.to_string().contains("/token"), "{err}");
    assert_refused(err, "bad-pw");
    let refused = issuer.refused.load(Ordering::SeqCst);
    assert!(refused >= 1);

    credentials::store(&file, &p.reg.host, &creds("bob", "tok-pw")).unwrap();
    let issued = issuer.issued.load(Ordering::SeqCst);
    assert_eq!(pull(&client, &r).unwrap(), 2);
    // One token for the whole pull, fetched with the new password.
    assert_eq!(issuer.issued.load(Ordering::SeqCst), issued + 1);
    assert_eq!(issuer.refused.load(Ordering::SeqCst), refused);
}

#[test]
fn tokens_of_replaced_credentials_are_not_used() {
    require_tools!("umoci", "skopeo", "openssl");
    // The issuer grants pull tokens anonymously, and refuses a wrong password.
    let Some((p, r, file)) = placed(Auth::token("bob", "tok-pw", true)) else {
        return;
    };
    let issuer = p.reg.issuer.as_ref().unwrap();
    let issued = || issuer.issued.load(Ordering::SeqCst);
    let client = file_client(&file);
    let start = issued();
    assert_eq!(pull(&client, &r).unwrap(), 2);
    assert_eq!(pull(&client, &r).unwrap(), 2);
    assert_eq!(issued(), start + 1, "an anonymous token, reused");

    // Credentials appear: the anonymous token is dropped, one is fetched
    // with them and reused.
    credentials::store(&file, &p.reg.host, &creds("bob", "tok-pw")).unwrap();
    assert_eq!(pull(&client, &r).unwrap(), 2);
    assert_eq!(pull(&client, &r).unwrap(), 2);
    assert_eq!(issued(), start + 2, "a token with the credentials, reused");

    // They are replaced by a wrong password: the token obtained with the
    // right one is not used any more; the issuer refuses the new ones.
    let refused = issuer.refused.load(Ordering::SeqCst);
    credentials::store(&file, &p.reg.host, &creds("bob", "nope-pw")).unwrap();
    assert_refused(pull(&client, &r).unwrap_err(), "nope-pw");
    assert!(issuer.refused.load(Ordering::SeqCst) > refused);
    assert_eq!(issued(), start + 2);
}
