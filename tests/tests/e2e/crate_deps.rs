//! What each binary's crate compiles: `cargo tree` over the lock file. Building `neuro`,
//! `secretfs` or `secret-inject` alone needs no `protoc` and compiles none of the server's
//! store, HTTP server or crypto; `secrets-core` (the types) and `secret-inject` compile no HTTP
//! client or async runtime.

use std::process::Command;

/// Crates only `secretd` needs: etcd and its gRPC stack (whose build script needs `protoc`),
/// the HTTP server, the embedded store, the value cipher and token hash, the allocator and
/// the log subscriber.
const SERVER_ONLY: &[&str] = &[
    "secrets-server",
    "etcd-client",
    "tonic",
    "tonic-build",
    "tonic-prost",
    "prost",
    "prost-build",
    "h2",
    "axum",
    "axum-core",
    "matchit",
    "redb",
    "chacha20poly1305",
    "blake3",
    "mimalloc",
    "tracing-subscriber",
];

/// The crates `package` compiles (normal and build dependencies, as `cargo build -p
/// PACKAGE` resolves features), by name.
fn compiled(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--offline", "--locked", "-p", package])
        .args(["-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut names: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[track_caller]
fn check(package: &str, forbidden: &[&str]) {
    let names = compiled(package);
    let found: Vec<&&str> = forbidden
        .iter()
        .filter(|f| names.iter().any(|n| n == **f))
        .collect();
    assert!(found.is_empty(), "{package} compiles {found:?}");
}

#[test]
fn client_binaries_compile_nothing_of_the_server() {
    for package in ["secrets-cli", "secrets-fs", "secrets-injector"] {
        check(package, SERVER_ONLY);
    }
    // The FUSE library is secretfs's alone.
    for package in ["secrets-cli", "secrets-injector"] {
        check(package, &["fuser"]);
    }
}

/// The types need no I/O library; secret-inject speaks HTTP itself, on no async runtime.
#[test]
fn the_types_and_the_wrapper_compile_no_http_client() {
    let client = [
        "reqwest",
        "hyper",
        "hyper-util",
        "tokio",
        "h2",
        "hickory-resolver",
    ];
    check("secrets-injector", &client);
    check("secrets-core", &client);
    check("secrets-core", &["clap", "serde_yaml_ng", "rustls", "libc"]);
}
