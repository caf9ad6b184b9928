//! `secretd`, the secrets service: HTTP API, storage backends, permissions and audit log.

pub mod api;
pub mod audit;
pub mod auth;
pub mod crypto;
pub mod error;
pub mod health;
pub mod store;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser;
use secrets_core::ClusterName;

pub use api::{AppState, Service, app};

/// Command line of `secretd`.
#[derive(Debug, Parser)]
#[command(
    name = "secretd",
    version,
    about = "The platform secrets service",
    long_about = "The platform secrets service: stores secrets encrypted at rest, decides who \
                  reads what, and serves the HTTP API that `neuro`, secretfs and secret-inject \
                  use.\n\nOn first start it creates DATA_DIR, the master key \
                  (DATA_DIR/master.key) and the operator token (DATA_DIR/admin.token), both \
                  mode 0600.",
    after_help = "Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT); 1 when it cannot start."
)]
pub struct Args {
    /// Where the store, master key, operator token and audit log live
    /// [default: $XDG_DATA_HOME/neuro-secrets, or ~/.local/share/neuro-secrets]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (the first line on stdout tells which)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The cluster name that appears in secret URIs
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = ClusterName::new)]
    pub cluster: ClusterName,
    /// PEM certificate chain; with --tls-key, serve HTTPS
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Audit log file (JSON lines) [default: DATA_DIR/audit.log]
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("neuro-secrets"));
    }
    let home =
        std::env::var_os("HOME").context("neither --data-dir, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/neuro-secrets"))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating '{}'", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Opens (or creates) the data directory and everything in it.
pub async fn open_service(
    data_dir: &Path,
    cluster: ClusterName,
    audit_log: Option<PathBuf>,
) -> anyhow::Result<Service> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating data directory '{}'", data_dir.display()))?;
    let (keys, created) = crypto::Keys::load_or_create(&data_dir.join("master.key"))?;
    let store: Arc<dyn store::Store> = Arc::new(
        store::embedded::EmbeddedStore::open(&data_dir.join("secrets.redb"))
            .with_context(|| format!("opening the store in '{}'", data_dir.display()))?,
    );
    let admin_path = data_dir.join("admin.token");
    if admin_path.exists() {
        crypto::check_private(&admin_path, "operator token")?;
    }
    if created || !admin_path.exists() {
        if !created {
            bail!(
                "'{}' is missing; restore it, or start with a new data directory",
                admin_path.display()
            );
        }
        let (_, token) = auth::issue(store.as_ref(), &keys, auth::Subject::Operator, None).await?;
        write_private(&admin_path, &format!("{}\n", token.expose()))?;
        tracing::info!(path = %admin_path.display(), "created the operator token");
    }
    let audit_path = audit_log.unwrap_or_else(|| data_dir.join("audit.log"));
    let audit = audit::Audit::open(&audit_path)
        .with_context(|| format!("opening audit log '{}'", audit_path.display()))?;
    Ok(Service {
        store,
        keys,
        cluster,
        audit,
        auth: auth::Authenticator::default(),
        changed: tokio::sync::watch::channel(0).0,
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    let service = open_service(&data_dir, args.cluster.clone(), args.audit_log).await?;
    let router = app(Arc::new(service));
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    // The first stdout line is the contract tests and scripts read the address from.
    println!("secretd listening on {scheme}://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, cluster = %args.cluster, data_dir = %data_dir.display(), "serving");
    eprintln!(
        "Log in as the operator with:\n  neuro login --url {scheme}://{addr} --token \"$(cat {})\"\nthen create users with: neuro admin user add NAME",
        data_dir.join("admin.token").display()
    );
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
            .await
            .with_context(|| {
                format!(
                    "loading TLS certificate '{}' and key '{}'",
                    cert.display(),
                    key.display()
                )
            })?;
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        });
        axum_server::from_tcp_rustls(listener, cfg)
            .handle(handle)
            .serve(router.into_make_service())
            .await?;
    } else {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
