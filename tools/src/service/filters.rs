//! containerd's filter syntax, the part snapshot listing uses:
//! `labels."containerd.io/snapshot.ref"==sha256:…,parent=="ns/1/x"`.
//!
//! A list of filters matches when any filter matches; a filter matches when
//! all its comma-separated clauses do. Fields: `name`, `parent`, `kind`,
//! `labels.<key>`; operators `==`, `!=`, and a bare field (present, non-empty).
//! Clauses this parser does not understand (unknown fields, `~=`) match
//! everything: listing returns a superset, and containerd re-checks what it
//! relies on.

use super::snapshots::{Kind, Record};

/// Whether `r` passes `filters` (empty: everything passes).
pub fn matches(filters: &[String], r: &Record) -> bool {
    filters.is_empty() || filters.iter().any(|f| filter_matches(f, r))
}

fn filter_matches(filter: &str, r: &Record) -> bool {
    split_unquoted(filter, ',')
        .iter()
        .all(|clause| clause_matches(clause.trim(), r))
}

fn clause_matches(clause: &str, r: &Record) -> bool {
    if clause.is_empty() {
        return true;
    }
    let (field, op, value) = match find_op(clause) {
        Some((i, op)) => (&clause[..i], op, unquote(clause[i + op.len()..].trim())),
        None => (clause, "", String::new()),
    };
    let path: Vec<String> = split_unquoted(field.trim(), '.')
        .iter()
        .map(|p| unquote(p))
        .collect();
    let actual: Option<String> = match path.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["name"] => Some(r.key.clone()),
        ["parent"] => r.parent.clone(),
        ["kind"] => Some(
            match r.kind {
                Kind::View => "view",
                Kind::Active => "active",
                Kind::Committed => "committed",
            }
            .to_owned(),
        ),
        ["labels", ref rest @ ..] if !rest.is_empty() => r.labels.get(&rest.join(".")).cloned(),
        _ => return true,
    };
    match op {
        "==" => actual.as_deref().unwrap_or("") == value,
        "!=" => actual.as_deref().unwrap_or("") != value,
        "" => actual.is_some_and(|a| !a.is_empty()),
        _ => true,
    }
}

fn find_op(clause: &str) -> Option<(usize, &'static str)> {
    let mut quoted = false;
    let bytes = clause.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b'=' | b'!' | b'~' if !quoted && bytes.get(i + 1) == Some(&b'=') => {
                return Some((
                    i,
                    match bytes[i] {
                        b'=' => "==",
                        b'!' => "!=",
                        _ => "~=",
                    },
                ));
            }
            _ => {}
        }
    }
    None
}

fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(String::new());
            continue;
        }
        parts.last_mut().expect("never empty").push(c);
    }
    parts
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::SystemTime;

    fn record() -> Record {
        Record {
            id: 1,
            key: "ns/3/sha256:aa".into(),
            parent: Some("ns/2/sha256:bb".into()),
            kind: Kind::Committed,
            labels: HashMap::from([("containerd.io/snapshot.ref".into(), "sha256:aa".into())]),
            chain_id: None,
            created: SystemTime::now(),
            updated: SystemTime::now(),
        }
    }

    #[test]
    fn containerd_target_lookup_filter() {
        let r = record();
        let yes = r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="ns/2/sha256:bb""#;
        let no = r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="ns/9/x""#;
        assert!(matches(&[yes.into()], &r));
        assert!(!matches(&[no.into()], &r));
        assert!(matches(&[no.into(), yes.into()], &r));
        assert!(matches(&[], &r));
    }

    #[test]
    fn kinds_presence_and_negation() {
        let r = record();
        assert!(matches(&["kind==committed".into()], &r));
        assert!(!matches(&["kind!=committed".into()], &r));
        assert!(matches(&["parent".into()], &r));
        assert!(!matches(&["labels.missing".into()], &r));
        assert!(matches(&["unknownfield==x".into()], &r));
    }
}
