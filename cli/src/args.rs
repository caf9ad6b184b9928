//! Value parsers for `neuro`'s arguments: user names, keys and URIs, job ids and tokens become
//! typed values while clap parses, so a bad one is refused before any request is made: bad
//! input (exit 65, one `ERROR:` line naming the argument and the reason; see
//! `crate::parse_outcome`).

use std::ffi::OsStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use secrets_core::{
    ClusterName, ResourceUri, SecretKey, SecretRef, Token, UriContext, UriError, UserName,
};

/// A secret as the secret commands take it: `KEY`, or a URI (`secret:KEY`,
/// `secret:/OWNER/KEY`, `secret://CLUSTER/OWNER/KEY`), as [`SecretRef::parse_key_or_uri`]
/// reads it; a bad bare key is reported as a key, not as a URI.
pub fn key_or_uri(s: &str) -> Result<SecretRef, Box<dyn std::error::Error + Send + Sync>> {
    if !s.contains(':') {
        SecretKey::new(s)?;
    }
    Ok(SecretRef::parse_key_or_uri(s)?)
}

/// What `neuro share` and `neuro acl revoke` take: one secret or an owner's whole namespace
/// (`secret:/OWNER`), checked for syntax and kept as written, since the service expands the
/// short forms against the caller (and checks the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceArg(String);

impl ResourceArg {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a [`ResourceArg`]. The short forms are expanded against a stand-in caller only to
/// check the syntax: the expansion is thrown away.
pub fn resource_uri(s: &str) -> Result<ResourceArg, UriError> {
    let names = || {
        Some(UriContext {
            cluster: ClusterName::new("c").ok()?,
            user: UserName::new("u").ok()?,
        })
    };
    let ctx = names().ok_or_else(|| UriError {
        uri: s.to_owned(),
        reason: "internal: stand-in names refused".into(),
    })?;
    ResourceUri::parse(s, &ctx)?;
    Ok(ResourceArg(s.to_owned()))
}

/// A token as given to `neuro login --token` or in `NEURO_TOKEN`: surrounding whitespace is
/// dropped; what is left must be non-empty and hold no whitespace or control character. Its
/// `nst.` shape is the service's business. The reason never quotes the token.
pub fn token(value: &OsStr) -> Result<Token, &'static str> {
    let s = value.to_str().ok_or("it is not UTF-8")?.trim();
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or a control character");
    }
    Ok(Token::new(s.to_owned()))
}

/// The clap value parser of a token argument. Unlike clap's own errors, its error does not
/// repeat the value: that would print the token.
#[derive(Debug, Clone, Copy)]
pub struct TokenParser;

impl TypedValueParser for TokenParser {
    type Value = Token;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Token, clap::Error> {
        token(value).map_err(|why| {
            let arg = arg.map_or_else(|| "the token".to_owned(), |a| format!("'{a}'"));
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {arg}: {why} (the value is not shown)\n"),
            )
            .with_cmd(cmd)
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::Cli;

    /// Parses `neuro ARGS`; `Ok(debug of the command)` or `Err((exit code, what is printed))`.
    fn parse(args: &[&str]) -> Result<String, (u8, String)> {
        let argv = std::iter::once("neuro").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|c| format!("{:?}", c.command))
            .map_err(|e| {
                let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
                let o = crate::parse_outcome(&e, &args);
                (o.code, o.text)
            })
    }

    /// `expected`: `Ok(a piece of the parsed command's Debug)` or `Err(a piece of the error)`;
    /// every refused value is bad input (exit 65) on one `ERROR:` line.
    #[track_caller]
    fn check(args: &[&str], expected: Result<&str, &str>) {
        match (parse(args), expected) {
            (Ok(got), Ok(want)) => assert!(got.contains(want), "{args:?}: {got} lacks {want}"),
            (Err((code, msg)), Err(want)) => {
                assert_eq!(code, 65, "{args:?}: {msg}");
                assert!(
                    msg.starts_with("ERROR: invalid value "),
                    "{args:?}: {msg:?}"
                );
                assert_eq!(msg.lines().count(), 1, "{args:?}: {msg:?}");
                assert!(msg.contains(want), "{args:?}: {msg:?} lacks {want:?}");
            }
            (got, want) => panic!("{args:?}: got {got:?}, expected {want:?}"),
        }
    }

    /// Usage errors stay clap's, exit 2: the shape of the command line, not a value in it.
    #[test]
    fn usage_errors_are_2() {
        for args in [
            &["secret", "add", "k"][..],
            &["secret", "frobnicate"],
            &["secret", "get", "k", "--nope"],
            &["secret", "get", "k", "--file"],
            &["secret", "get", "k", "extra"],
            &["secret", "ls", "-o", "yaml"],
            &["admin", "user", "rm", "bob", "--secrets", "maybe"],
        ] {
            let (code, msg) = parse(args).unwrap_err();
            assert_eq!(code, 2, "{args:?}: {msg}");
            assert!(msg.starts_with("error: "), "{args:?}: {msg}");
        }
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.0, 0);
        // The exit codes in --help are ExitClass's, 65 for a malformed value.
        assert!(
            help.1.contains("\nExit codes:\n  0   success\n"),
            "{}",
            help.1
        );
        assert!(
            help.1
                .contains("  65  invalid input: a malformed user name, key, URI, job id, token"),
            "{}",
            help.1
        );
    }

    /// The reason is on one line, its control characters escaped.
    #[test]
    fn a_refused_value_is_one_escaped_line() {
        let (code, msg) = parse(&["secret", "add", "a\nb\x1b[31m", "v"]).unwrap_err();
        assert_eq!(code, 65);
        assert_eq!(msg.lines().count(), 1, "{msg:?}");
        assert!(!msg.contains('\x1b'), "{msg:?}");
        assert!(msg.contains("for '<KEY>': invalid secret key"), "{msg:?}");
    }

    const TOKEN: &str = "nst.0123456789abcdef.feedface";

    #[test]
    fn value_parsers() {
        // User names.
        check(
            &["admin", "user", "add", "alice"],
            Ok(r#"UserName("alice")"#),
        );
        check(
            &["admin", "user", "add", "b-2_x"],
            Ok(r#"UserName("b-2_x")"#),
        );
        check(
            &["admin", "user", "add", "Alice"],
            Err("invalid value 'Alice' for '<NAME>': invalid user name 'Alice'"),
        );
        check(&["admin", "user", "add", ""], Err("invalid user name ''"));
        check(
            &["admin", "user", "add", "../x"],
            Err("invalid user name '../x'"),
        );
        check(
            &["admin", "user", "rm", "a b", "--secrets", "keep"],
            Err("for '<NAME>': invalid user name 'a b'"),
        );
        check(&["admin", "token", "add", "1x"], Err("for '<USER>'"));
        check(
            &["admin", "token", "ls", "x/y"],
            Err("invalid user name 'x/y'"),
        );
        check(
            &["share", "secret:k", "Bob"],
            Err("for '<USER>': invalid user name 'Bob'"),
        );
        check(
            &["acl", "revoke", "secret:k", "bob?"],
            Err("invalid user name 'bob?'"),
        );
        // Keys and URIs of one secret.
        check(&["secret", "get", "k"], Ok(r#"SecretKey("k")"#));
        check(
            &["secret", "get", "secret:/alice/k"],
            Ok(r#"UserName("alice")"#),
        );
        check(
            &["secret", "get", "secret://c1/alice/k"],
            Ok(r#"ClusterName("c1")"#),
        );
        check(
            &["secret", "add", "..k", "v"],
            Err("for '<KEY>': invalid secret key '..k': must not start with '..'"),
        );
        check(&["secret", "add", "a/b", "v"], Err("'/' is not allowed"));
        check(
            &["secret", "rm", "secret:/alice"],
            Err("expected secret:KEY"),
        );
        check(
            &["secret", "get", "http://c/a/k"],
            Err("scheme 'http' is not 'secret'"),
        );
        check(
            &["secret", "get", "secret:k?x"],
            Err("a query ('?') is not allowed"),
        );
        check(&["secret", "get", ""], Err("must not be empty"));
        // Resources: one secret or a namespace, kept as written.
        check(
            &["share", "secret:k", "bob"],
            Ok(r#"ResourceArg("secret:k")"#),
        );
        check(
            &["share", "secret:/alice", "bob"],
            Ok(r#"ResourceArg("secret:/alice")"#),
        );
        check(
            &["acl", "revoke", "secret://other/alice/k", "bob"],
            Ok(r#"ResourceArg("secret://other/alice/k")"#),
        );
        check(
            &["share", "secret:k#f", "bob"],
            Err("for '<URI>': invalid secret URI"),
        );
        check(&["share", "k", "bob"], Err("missing 'secret:' scheme"));
        check(
            &["acl", "revoke", "secret:/Alice", "bob"],
            Err("invalid user name 'Alice'"),
        );
        // Actions.
        check(&["share", "secret:k", "bob"], Ok("Read"));
        check(&["share", "secret:k", "bob", "manage"], Ok("Manage"));
        check(
            &["share", "secret:k", "bob", "admin"],
            Err("invalid action 'admin'"),
        );
        // Job ids.
        check(
            &["job", "rm", "job-0123456789abcdef"],
            Ok(r#"JobId("job-0123456789abcdef")"#),
        );
        check(
            &["job", "rm", "../x"],
            Err("for '<JOB_ID>': invalid job id '../x'"),
        );
        check(
            &["job", "rm", "job-0123456789ABCDEF"],
            Err("invalid job id"),
        );
        check(&["job", "rm", "job-1"], Err("invalid job id 'job-1'"));
        // Tokens: never echoed.
        check(
            &["login", "--token", TOKEN],
            Ok("Login { token: Token(****) }"),
        );
        check(
            &["login", "--token", &format!(" {TOKEN}\n")],
            Ok("token: Token(****)"),
        );
        for bad in [
            "nst.0123 456789abcdef.feedface",
            "nst.0123456789abcdef\n.feedface",
            "nst.0123\t456789abcdef",
            "nst.\u{7f}x",
        ] {
            let (code, msg) = parse(&["login", "--token", bad]).unwrap_err();
            assert_eq!(code, 65, "{msg}");
            assert!(msg.contains("invalid value for '--token <TOKEN>'"), "{msg}");
            assert!(msg.contains("whitespace or a control character"), "{msg}");
            assert!(!msg.contains("0123"), "the token is echoed: {msg}");
        }
        check(&["login", "--token", ""], Err("it is empty"));
        check(&["login", "--token", "  \n"], Err("it is empty"));
    }
}
