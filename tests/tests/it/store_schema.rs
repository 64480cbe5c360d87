//! The metadata DB on disk: WAL mode, schema version, refusal of a newer
//! schema; and that the store's name normalisation agrees with the registry
//! client's reference parser.

use lamina_tests::store::TestStore;

#[test]
fn fresh_store_is_wal_at_the_latest_version() {
    let s = TestStore::new();
    s.ok(&["images"]);
    let db = s.root().join("lamina.db");
    assert!(db.is_file());
    let store = s.open();
    let v = store.schema_version().unwrap();
    assert!(v >= 2, "{v}");
    drop(store);
    // WAL mode is persistent in the file header: bytes 18 and 19 are 2.
    let header = std::fs::read(&db).unwrap();
    assert_eq!(
        (header[18], header[19]),
        (2, 2),
        "lamina.db is not in WAL mode"
    );
}

#[test]
fn a_newer_schema_is_refused_with_advice() {
    let s = TestStore::new();
    s.ok(&["images"]);
    // Bump user_version (header offset 60, big endian) as a future lamina would.
    let db = s.root().join("lamina.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[60..64].copy_from_slice(&999u32.to_be_bytes());
    std::fs::write(&db, bytes).unwrap();
    let out = s.output(&["images"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema version 999") && err.contains("upgrade lamina"),
        "{err}"
    );
}

#[test]
fn store_and_registry_normalise_alike() {
    for r in [
        "alpine",
        "alpine:3.19",
        "library/alpine",
        "user/app:v1",
        "docker.io/alpine",
        "index.docker.io/user/app",
        "localhost/app",
        "localhost:5000/a/b/c:tag",
        "127.0.0.1:5000/x",
        "quay.io/org/repo:1.0-rc",
        "alpine@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "Upper/case",
        "a:",
        "",
    ] {
        let store = lamina_store::reference::normalize(r).ok();
        let registry = lamina_registry::Reference::parse(r)
            .ok()
            .map(|x| x.to_string());
        assert_eq!(store, registry, "{r:?}");
    }
}

proptest::proptest! {
    /// On arbitrary reference-like strings, the store's normaliser and the
    /// registry client's parser accept the same inputs and agree on the result.
    #[test]
    fn normalisers_agree(r in "([a-zA-Z0-9-]{1,6}(\\.[a-zA-Z-]{1,3})?(:[0-9]{0,6})?/)?[a-zA-Z0-9._-]{1,8}(/[a-z0-9_.-]{1,6}){0,2}(:[A-Za-z0-9_.-]{0,6})?(@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85[0-9a-f])?") {
        let store = lamina_store::reference::normalize(&r).ok();
        let registry = lamina_registry::Reference::parse(&r).ok().map(|x| x.to_string());
        proptest::prop_assert_eq!(store, registry, "{:?}", r);
    }
}
