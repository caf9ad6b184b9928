//! Property tests of every parser that takes outside input: keys and names, secret URIs,
//! `--env`/`--volume` specs and the API's request bodies. Each property runs on generated
//! inputs (arbitrary strings, and strings built near the grammar so that the accepting paths
//! are reached too) and checks the parser against an independent statement of the rule, or a
//! round trip, besides not panicking.
//!
//! The suite runs 256 cases each; `PROPTEST_CASES=100000` is the long run (README, bench/fuzz.sh).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use secrets_core::api::{CreateUser, Grant, JobSpec, PutSecret, ResolveRequest};
use secrets_core::{
    ClusterName, EnvMapping, EnvName, EnvSpec, ResourceUri, SecretKey, SecretRef, UriContext,
    UserName, VolumeMapping,
};

/// Strings made mostly of the characters the grammars care about, so that near misses are
/// common, plus arbitrary Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._:/=@?#~ %\\-]{0,70}",
        1 => any::<String>(),
        1 => "(secret:|secret:/|secret://|secret:///)[a-z0-9._/:\\-]{0,40}",
        1 => "[a-z.]{250,256}",
    ]
}

fn key_rule(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        && s != "."
        && !s.starts_with("..")
}

fn lower_rule(s: &str, first: fn(u8) -> bool, rest: &[u8]) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && first(b[0])
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || rest.contains(c))
}

fn env_rule(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,40}"
}
fn user() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,20}"
}
fn cluster() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,20}"
}
fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,20}"
}

/// A URI of one of the accepted shapes, from valid parts.
fn uri() -> impl Strategy<Value = String> {
    (key(), user(), cluster(), 0..4u8).prop_map(|(k, u, c, shape)| match shape {
        0 => format!("secret:{k}"),
        1 => format!("secret:/{u}/{k}"),
        2 => format!("secret:///{u}/{k}"),
        _ => format!("secret://{c}/{u}/{k}"),
    })
}

fn ctx() -> UriContext {
    UriContext {
        cluster: ClusterName::new("neuro-compute").unwrap(),
        user: UserName::new("alice").unwrap(),
    }
}

proptest! {
    // Failures print their minimal input; nothing is written next to the sources.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn names_follow_their_rules(s in text()) {
        prop_assert_eq!(SecretKey::new(&s).is_ok(), key_rule(&s), "key {:?}", s);
        prop_assert_eq!(
            UserName::new(&s).is_ok(),
            lower_rule(&s, |c| c.is_ascii_lowercase(), b"_-"),
            "user {:?}", s
        );
        prop_assert_eq!(
            ClusterName::new(&s).is_ok(),
            lower_rule(&s, |c| c.is_ascii_lowercase() || c.is_ascii_digit(), b"-"),
            "cluster {:?}", s
        );
        prop_assert_eq!(EnvName::new(&s).is_ok(), env_rule(&s), "env {:?}", s);
        if let Err(e) = SecretKey::new(&s) {
            // The message names the input, whatever it is, and never panics on it.
            prop_assert!(e.to_string().contains(&s));
        }
    }

    #[test]
    fn uris_parse_or_say_why(s in prop_oneof![text(), uri()]) {
        match SecretRef::parse(&s) {
            Ok(r) => {
                prop_assert!(s.starts_with("secret:"));
                // What is printed parses back to the same reference.
                prop_assert_eq!(SecretRef::parse(&r.to_string()).unwrap(), r.clone());
                let full = r.resolve(&ctx());
                prop_assert_eq!(SecretRef::parse(&full.to_string()).unwrap().resolve(&ctx()), full);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        if let Ok(r) = ResourceUri::parse(&s, &ctx()) {
            prop_assert_eq!(ResourceUri::parse(&r.to_string(), &ctx()).unwrap(), r);
        }
        let _ = SecretRef::parse_key_or_uri(&s);
    }

    #[test]
    fn generated_uris_keep_their_parts(k in key(), u in user(), c in cluster()) {
        prop_assume!(key_rule(&k));
        let r = SecretRef::parse(&format!("secret://{c}/{u}/{k}")).unwrap();
        prop_assert_eq!(r.cluster.as_ref().unwrap().as_str(), c.as_str());
        prop_assert_eq!(r.owner.as_ref().unwrap().as_str(), u.as_str());
        prop_assert_eq!(r.key.as_str(), k.as_str());
        let r = SecretRef::parse(&format!("secret:{k}")).unwrap();
        prop_assert!(r.owner.is_none() && r.cluster.is_none());
    }

    #[test]
    fn env_specs_both_spellings(n in prop_oneof![env_name(), text()], u in prop_oneof![uri(), text()]) {
        let eq = EnvSpec::parse(&format!("{n}={u}"));
        let colon = EnvSpec::parse(&format!("{n}:{u}"));
        if env_rule(&n) && SecretRef::parse(&u).is_ok() {
            let want = EnvSpec::Secret(EnvMapping {
                name: EnvName::new(&n).unwrap(),
                secret: SecretRef::parse(&u).unwrap(),
            });
            prop_assert_eq!(eq.clone().unwrap(), want.clone());
            prop_assert_eq!(colon.unwrap(), want);
        }
        if let Ok(EnvSpec::Plain { name, value }) = eq {
            prop_assert!(!value.starts_with("secret:"));
            prop_assert_eq!(format!("{name}={value}"), format!("{n}={u}"));
        }
        let _ = EnvMapping::parse(&format!("{n}{u}"));
    }

    #[test]
    fn volume_specs(s in prop_oneof![
        text(),
        (uri(), "(/[a-zA-Z0-9._ -]{1,12}){1,5}").prop_map(|(u, p)| format!("{u}:{p}")),
        (uri(), "[a-z/.:]{0,20}", "(:ro|:rw|:)?").prop_map(|(u, p, x)| format!("{u}:{p}{x}")),
    ]) {
        if let Ok(v) = VolumeMapping::parse(&s) {
            // The spec a mapping prints (what `neuro job manifest` passes on) parses back.
            let again = VolumeMapping::parse(&v.spec()).unwrap();
            prop_assert_eq!(again, v.clone());
            prop_assert!(v.path.is_absolute());
            prop_assert!(!v.path.components().any(|c| matches!(c, std::path::Component::ParentDir)));
        }
    }

    #[test]
    fn api_bodies_never_panic(raw in prop_oneof![
        any::<Vec<u8>>(),
        text().prop_map(String::into_bytes),
        json_body().prop_map(String::into_bytes),
    ]) {
        let _ = serde_json::from_slice::<PutSecret>(&raw);
        let _ = serde_json::from_slice::<JobSpec>(&raw);
        let _ = serde_json::from_slice::<ResolveRequest>(&raw);
        let _ = serde_json::from_slice::<Vec<Grant>>(&raw);
        let _ = serde_json::from_slice::<CreateUser>(&raw);
    }

    #[test]
    fn put_secret_bodies_keep_the_bytes(k in key(), v in proptest::collection::vec(any::<u8>(), 1..300)) {
        prop_assume!(key_rule(&k));
        use base64::Engine as _;
        let body = format!(
            r#"{{"key":"{k}","value":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(&v)
        );
        let p: PutSecret = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(p.key.as_str(), k.as_str());
        prop_assert_eq!(p.value.expose(), v.as_slice());
    }
}

/// JSON objects shaped like the API's bodies, with fields of the right and wrong types.
pub fn json_body() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        text().prop_map(|s| serde_json::Value::String(s).to_string()),
        uri().prop_map(|s| format!("\"{s}\"")),
        Just("null".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"aGVsbG8=\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ];
    let field = prop_oneof![
        Just("key"),
        Just("value"),
        Just("owner"),
        Just("uris"),
        Just("name"),
        Just("uri"),
        Just("action"),
        Just("secret_env"),
        Just("secret_volumes"),
        Just("ttl_s"),
        Just("src_secret_uri"),
        Just("dst_path"),
    ];
    proptest::collection::vec((field, scalar), 0..6).prop_map(|fs| {
        let inner: Vec<String> = fs.iter().map(|(f, v)| format!("\"{f}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    })
}
