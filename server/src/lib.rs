//! `secretd`, the secrets service: HTTP API, storage backends, permissions and audit log.

pub mod admit;
pub mod api;
pub mod audit;
pub mod client_addr;
pub mod clock;
pub mod console;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod records;
pub mod router;
pub mod serve;
pub mod state;
pub mod store;
pub mod sync;
pub mod values;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use secrets_core::ClusterName;

pub use router::app;
pub use state::{App, AppState};

/// Command line of `secretd`.
#[derive(Debug, Parser)]
#[command(
    name = "secretd",
    version,
    args_conflicts_with_subcommands = true,
    about = "The platform secrets service",
    long_about = "The platform secrets service: stores secrets encrypted at rest, decides who \
                  reads what, and serves the HTTP API that `neuro`, secretfs and secret-inject \
                  use.\n\nOn first start it creates DATA_DIR, the master key \
                  (DATA_DIR/master.key) and the operator token (DATA_DIR/admin.token), both \
                  mode 0600.\n\nWith --store etcd://HOST:PORT,...[/PREFIX], any number of \
                  replicas share one etcd cluster: each needs the same master key (a copy of \
                  master.key, or --master-key FILE; one that does not match the store's check \
                  value stops the start before anything is written) and the same --cluster \
                  (the store keeps the first start's name), the first one creates \
                  the operator token, and `secretd migrate` moves a data directory's store to \
                  etcd and back.",
    after_help = "Connection limits: at most --max-connections (default 4096) client connections \
                  are open at once, and never more than the open-file limit minus 64 (secretd \
                  raises its soft limit to the hard one at start and logs the cap). At the cap, \
                  the connection idle the longest is closed to make room; a new connection is \
                  closed at once only when every open one has a request in flight. A request \
                  head must arrive within --header-timeout (default 10s, at most 10s) of the \
                  connection's start or of the previous response, TLS handshake included; a \
                  connection silent for --idle-timeout (default 5s) without a request in flight \
                  is closed. On SIGTERM or SIGINT it stops accepting, gives requests in \
                  flight --shutdown-grace (default 5s) to finish, writes out the audit log and \
                  exits 0. One token may have at most 64 requests in flight (a \
                  body being read, a watch waiting), one user with its jobs at most a quarter \
                  of the connection cap and at most 1024 (429 beyond); a request body must \
                  arrive within 30 s (408), on every route, the console's included. Requests \
                  without a valid token that carry a body (console log-ins and forms) share \
                  as many places as one user, a quarter of them per client address (429 \
                  beyond; --trusted-proxy says whose X-Forwarded-For names the client). A \
                  request counts as in flight until its answer has been sent; answers waiting \
                  for slow readers may hold 256 MiB in all (503 beyond), one user's with its \
                  jobs' at most 64 MiB (429 beyond).\n\n\
                  Request limits: a request body of at most 2 MiB (413); a secret value of 1 \
                  byte to 1 MiB (400); a resolve of at most 1000 URIs (400), each distinct URI \
                  read once, and at most 16 MiB (16777216 bytes) of values in one answer \
                  (413); a watch waits at most 60 s; a job token lives at most 7 days.\n\n\
                  Audit: the log fails closed. While audit lines cannot be written (an error, \
                  or a write stuck for more than 2 s, or 8192 lines waiting), secret reads and \
                  changes answer 503 and the service log says why.\n\n\
                  Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT); 1 when it cannot start."
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
    /// Open client connections at most; also capped at the open-file limit minus 64
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_connections: u32,
    /// Time allowed for a request head (and the TLS handshake), at most 10s
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = header_timeout)]
    pub header_timeout: Duration,
    /// A connection silent this long without a request in flight is closed; at most
    /// --header-timeout
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM or SIGINT, how long requests in flight may take to finish
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub shutdown_grace: Duration,
    /// Also serve GET /metrics (and /healthz, /readyz) on this address, without a token; on the
    /// API port /metrics needs the operator token
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The service log's format on stderr: text, or json (one object a line); levels by
    /// RUST_LOG (default info)
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Where secrets and records live: `embedded` (DATA_DIR/secrets.redb, the default) or
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX], shared by any number of replicas (each with
    /// the same master key)
    #[arg(long, value_name = "STORE", value_parser = StoreArg::parse)]
    pub store: Option<StoreArg>,
    /// The master key file; every replica of one store needs the same [default:
    /// DATA_DIR/master.key]
    #[arg(long, value_name = "FILE")]
    pub master_key: Option<PathBuf>,
    /// A proxy (ADDR or ADDR/PREFIX) whose X-Forwarded-For is believed for the limits kept per
    /// client address (failed console log-ins, requests without a token); repeat for several.
    /// Without it X-Forwarded-For is ignored: any client can send one
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<client_addr::Cidr>,
    /// MiB of recently opened values kept decrypted in memory, so that repeated reads skip
    /// decryption: each is used for 30s after it was opened and freed within 35s; 0 decrypts
    /// every read
    #[arg(long, value_name = "MIB", default_value_t = values::DEFAULT_MIB, value_parser = clap::value_parser!(u64).range(0..=65536))]
    pub value_cache: u64,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `secretd --log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Copies every record of one store into another, empty one: from a data directory to
    /// etcd, or back (a backup). Values stay sealed (copy master.key yourself); counts and a
    /// checksum of every record are compared after the copy. Stop secretd on a data directory
    /// first.
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The source: a data directory (its secrets.redb) or etcd://HOST:PORT[,...][/PREFIX]
    #[arg(long, value_name = "DIR|URL", value_parser = Location::parse)]
    pub from: Location,
    /// The target, which must be empty: a data directory or etcd://HOST:PORT[,...][/PREFIX]
    #[arg(long, value_name = "DIR|URL", value_parser = Location::parse)]
    pub to: Location,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// A store named on the command line of `migrate`.
#[derive(Debug, Clone)]
pub enum Location {
    Dir(PathBuf),
    Etcd(store::etcd::EtcdTarget),
}

impl Location {
    fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("etcd://") {
            return store::etcd::EtcdTarget::parse(s).map(Location::Etcd);
        }
        if s.contains("://") {
            return Err(format!("'{s}' is neither a directory nor an etcd:// URL"));
        }
        Ok(Location::Dir(PathBuf::from(s)))
    }

    fn describe(&self) -> String {
        match self {
            Location::Dir(d) => format!("'{}'", d.join("secrets.redb").display()),
            Location::Etcd(t) => t.to_string(),
        }
    }

    async fn open(&self, etcd: &EtcdArgs) -> anyhow::Result<Arc<dyn store::Store>> {
        match self {
            // A secretd serving the directory holds its lock.
            Location::Dir(d) => open_store(&StoreArg::Embedded, d, &etcd.options())
                .await
                .with_context(|| {
                    format!(
                        "migrating with '{}' (stop secretd on it first, if it runs)",
                        d.display()
                    )
                }),
            Location::Etcd(t) => {
                open_store(&StoreArg::Etcd(t.clone()), Path::new(""), &etcd.options()).await
            }
        }
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e}"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("'{s}' is shorter than 100ms"));
    }
    Ok(d)
}

fn header_timeout(s: &str) -> Result<Duration, String> {
    let d = positive_duration(s)?;
    if d > Duration::from_secs(10) {
        return Err(format!("'{s}' is longer than 10s"));
    }
    Ok(d)
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("neuro-secrets"));
    }
    let home =
        std::env::var_os("HOME").context("neither --data-dir, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/neuro-secrets"))
}

/// Which store to open.
#[derive(Debug, Clone)]
pub enum StoreArg {
    /// `DATA_DIR/secrets.redb`
    Embedded,
    Etcd(store::etcd::EtcdTarget),
}

impl StoreArg {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "embedded" {
            return Ok(StoreArg::Embedded);
        }
        if !s.contains("://") {
            return Err(format!(
                "'{s}' is neither 'embedded' nor an etcd://HOST:PORT[,HOST:PORT...][/PREFIX] URL"
            ));
        }
        store::etcd::EtcdTarget::parse(s).map(StoreArg::Etcd)
    }
}

/// How to reach etcd (with `--store etcd://...`, and for `migrate`).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// CA certificate (PEM) of etcd's server certificates; the connection to etcd uses TLS
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), where etcd authenticates clients by certificate
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, where etcd has authentication enabled
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding --etcd-user's password (one line)
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Requests are refused (503) once etcd has not confirmed for this long that this
    /// replica's view is current (etcd lost its quorum, or every endpoint is down)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    pub max_staleness: Duration,
}

impl EtcdArgs {
    /// The `--etcd-*` options mean nothing to the embedded store: saying so beats ignoring
    /// them (a forgotten `--store` would otherwise start an empty embedded service).
    fn refuse_unless_etcd(&self) -> anyhow::Result<()> {
        let given: Vec<&str> = [
            ("--etcd-ca", self.etcd_ca.is_some()),
            ("--etcd-cert", self.etcd_cert.is_some()),
            ("--etcd-key", self.etcd_key.is_some()),
            ("--etcd-user", self.etcd_user.is_some()),
            ("--etcd-password-file", self.etcd_password_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if !given.is_empty() {
            bail!(
                "{} only apply with --store etcd://...; this secretd uses the embedded store",
                given.join(", ")
            );
        }
        Ok(())
    }

    pub fn options(&self) -> store::etcd::EtcdOptions {
        store::etcd::EtcdOptions {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
            max_staleness: self.max_staleness,
        }
    }
}

/// Opens the store: the embedded one in `data_dir`, or etcd.
pub async fn open_store(
    which: &StoreArg,
    data_dir: &Path,
    etcd: &store::etcd::EtcdOptions,
) -> anyhow::Result<Arc<dyn store::Store>> {
    Ok(match which {
        StoreArg::Embedded => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .with_context(|| format!("creating data directory '{}'", data_dir.display()))?;
            Arc::new(
                store::embedded::EmbeddedStore::open(&data_dir.join("secrets.redb"))
                    .with_context(|| format!("opening the store in '{}'", data_dir.display()))?,
            )
        }
        StoreArg::Etcd(target) => Arc::new(
            store::etcd::EtcdStore::open(target.clone(), etcd)
                .await
                .with_context(|| format!("opening the store at {target}"))?,
        ),
    })
}

/// The key check value's name in the store's settings.
const KEY_CHECK: &str = "master-key-check";
/// The name of the cluster the store serves, beside the key check value: every grant and job
/// names secrets by URIs with it, so replicas with different `--cluster` names on one store
/// would each refuse to revoke the other's grants.
const CLUSTER_NAME: &str = "cluster-name";

/// Stores `cluster` as the store's cluster name on its first start (or the first start since
/// the name was kept), and refuses a start with another name before anything is written.
async fn check_cluster(store: &dyn store::Store, cluster: &ClusterName) -> anyhow::Result<()> {
    use store::Table;
    let ours = cluster.as_str().as_bytes();
    let mut stored = store.get(Table::Settings, CLUSTER_NAME).await?;
    if stored.is_none()
        && !store
            .insert_new(Table::Settings, CLUSTER_NAME, ours)
            .await?
    {
        // Another replica stored its name first: read it once this replica has caught up.
        store.sync().await?;
        stored = store.get(Table::Settings, CLUSTER_NAME).await?;
    }
    match stored {
        Some(v) if v != ours => bail!(
            "this store serves cluster '{}', but this secretd was started with --cluster '{}': \
             every replica of one store needs the same --cluster (the name is part of every \
             secret URI its grants and jobs hold); nothing was written",
            String::from_utf8_lossy(&v),
            cluster
        ),
        _ => Ok(()),
    }
}

/// Loads the master key (creating it for a new store) and checks it against the store's key
/// check value, which the first start stores. A key that does not match stops the start before
/// anything is written.
async fn master_key(store: &dyn store::Store, path: &Path) -> anyhow::Result<(crypto::Keys, bool)> {
    use store::Table;
    let stored = store.get(Table::Settings, KEY_CHECK).await?;
    if stored.is_some() && !path.exists() {
        bail!(
            "the master key '{}' does not exist, but the store holds data sealed with one: copy \
             master.key from a replica of this store (or pass --master-key FILE); nothing was \
             written",
            path.display()
        );
    }
    let (keys, created) = crypto::Keys::load_or_create(path)?;
    let mismatch = |path: &Path| {
        anyhow::anyhow!(
            "the master key '{}' does not match the store's: every replica needs the same \
             master.key (copy it from the replica that created the store); nothing was written",
            path.display()
        )
    };
    let undo = |created: bool| {
        if created {
            let _ = std::fs::remove_file(path);
        }
    };
    let ours = keys.check_value().as_bytes();
    match stored {
        Some(v) if v != ours => {
            undo(created);
            return Err(mismatch(path));
        }
        Some(_) => {}
        None => {
            if !store.insert_new(Table::Settings, KEY_CHECK, ours).await? {
                // Another replica stored its check value first: read it once this replica's
                // copy of the store has caught up.
                store.sync().await?;
                let now = store.get(Table::Settings, KEY_CHECK).await?;
                if now.as_deref() != Some(ours) {
                    undo(created);
                    return Err(mismatch(path));
                }
            }
        }
    }
    Ok((keys, created))
}

/// Opens (or creates) the data directory and everything in it, on the embedded store.
pub async fn open_service(
    data_dir: &Path,
    cluster: ClusterName,
    audit_log: Option<PathBuf>,
) -> anyhow::Result<App> {
    let store = open_store(&StoreArg::Embedded, data_dir, &Default::default()).await?;
    open_service_on(store, data_dir, None, cluster, audit_log).await
}

/// Opens the service on `store`: the data directory (master key, operator token, audit log),
/// the key check, and the operator token of a new store.
pub async fn open_service_on(
    store: Arc<dyn store::Store>,
    data_dir: &Path,
    master_key_path: Option<PathBuf>,
    cluster: ClusterName,
    audit_log: Option<PathBuf>,
) -> anyhow::Result<App> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating data directory '{}'", data_dir.display()))?;
    let key_path = master_key_path.unwrap_or_else(|| data_dir.join("master.key"));
    let (keys, created) = master_key(store.as_ref(), &key_path).await?;
    if let Err(e) = check_cluster(store.as_ref(), &cluster).await {
        if created {
            let _ = std::fs::remove_file(&key_path);
        }
        return Err(e);
    }
    let shared = store.changes().is_some();
    let admin_path = data_dir.join("admin.token");
    if admin_path.exists() {
        crypto::check_private(&admin_path, "operator token")?;
    } else if created || shared {
        match domain::auth::issue_operator(store.as_ref(), &keys).await? {
            Some(token) => {
                let line = zeroize::Zeroizing::new(format!("{}\n", token.expose()));
                crypto::create_private(&admin_path, line.as_bytes())
                    .with_context(|| format!("creating '{}'", admin_path.display()))?;
                tracing::info!(path = %admin_path.display(), "created the operator token");
            }
            None if shared => tracing::info!(
                "the operator token exists already (another replica created it); copy its \
                 admin.token to '{}' to log in as the operator with this replica's hint",
                admin_path.display()
            ),
            None => bail!(
                "'{}' is missing; restore it, or start with a new data directory",
                admin_path.display()
            ),
        }
    } else {
        bail!(
            "'{}' is missing; restore it, or start with a new data directory",
            admin_path.display()
        );
    }
    let audit_path = audit_log.unwrap_or_else(|| data_dir.join("audit.log"));
    let audit = audit::Audit::open(&audit_path)
        .with_context(|| format!("opening audit log '{}'", audit_path.display()))?;
    let values = values::ValueCache::new((values::DEFAULT_MIB << 20) as usize);
    values.sweep_every();
    Ok(App::new(domain::Domain::new(
        store, keys, cluster, audit, values,
    )))
}

/// Reads the certificate chain and key for HTTPS (HTTP/1.1 only).
fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS certificate '{}'", cert.display()))?;
    if certs.is_empty() {
        bail!("TLS certificate '{}' holds no certificate", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS key '{}'", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .with_context(|| {
            format!(
                "loading TLS certificate '{}' and key '{}'",
                cert.display(),
                key.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The listening socket, with a backlog of 1024 (the kernel caps it at net.core.somaxconn):
/// with the usual 128, a burst of clients overflows the queue while the accept loop catches up,
/// and each dropped SYN costs its client a 1 s retransmission.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Refuses a `migrate` target directory (or the store file in it) that another user could
/// read or change: one that is a symbolic link, owned by another user, or writable by group or
/// others. What is missing is created 0700 (the directory) and 0600 (the store) by `open_store`.
fn check_own_target(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let me = nix::unistd::geteuid().as_raw();
    let check = |path: &Path, what: &str| -> anyhow::Result<()> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading '{}'", path.display())),
        };
        if meta.file_type().is_symlink() {
            bail!(
                "the target {what} '{}' is a symbolic link; name the real one",
                path.display()
            );
        }
        if meta.uid() != me {
            bail!(
                "the target {what} '{}' belongs to uid {}, not to this user (uid {me}): another \
                 user could read or change the copy; migrate into a directory of your own",
                path.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o022 != 0 {
            bail!(
                "the target {what} '{}' has mode {:o}: group or others may write to it; \
                 chmod go-w it, or migrate into a new directory",
                path.display(),
                meta.mode() & 0o7777
            );
        }
        Ok(())
    };
    check(dir, "directory")?;
    check(&dir.join("secrets.redb"), "store")
}

/// Copies every record of `--from` into `--to`, then compares counts and checksums.
pub async fn migrate(m: MigrateArgs) -> anyhow::Result<ExitCode> {
    // Opening a directory creates a store in it: a mistyped source would "copy" nothing.
    if let Location::Dir(d) = &m.from
        && !d.join("secrets.redb").exists()
    {
        bail!(
            "there is no store in '{}' (no secrets.redb): nothing to migrate from",
            d.display()
        );
    }
    if let Location::Dir(d) = &m.to {
        check_own_target(d)?;
    }
    let from = m.from.open(&m.etcd).await?;
    let to = m.to.open(&m.etcd).await?;
    if !to.is_empty().await? {
        let how = match &m.to {
            Location::Dir(d) => format!("remove '{}'", d.join("secrets.redb").display()),
            Location::Etcd(t) => format!("etcdctl del --prefix /{}/", t.prefix),
        };
        bail!(
            "the target {} is not empty; migrate only into an empty store (a copy that was \
             interrupted leaves part of one: {how}, then migrate again)",
            m.to.describe()
        );
    }
    let records = from.export().await?;
    let before = store::Summary::of(&records);
    to.import(records).await?;
    let after = store::Summary::of(&to.export().await?);
    if before != after {
        bail!(
            "the copy differs from the source: source {before}, target {after}; the target {} \
             holds a partial copy: empty it before trying again",
            m.to.describe()
        );
    }
    println!(
        "copied {} to {}: {after}",
        m.from.describe(),
        m.to.describe()
    );
    println!(
        "values stay sealed: start secretd on the target with the same master.key (--master-key \
         or DATA_DIR/master.key)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the service until SIGTERM or SIGINT, or runs `migrate`.
pub async fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Command::Migrate(m)) = args.command.take() {
        return migrate(m).await;
    }
    // Values are opened in this process and some stay for a while (`values`): no core file
    // holds them, and no other user's process may ptrace it or read /proc/PID/mem.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .context("setting the core file size limit to 0")?;
    nix::sys::prctl::set_dumpable(false).context("making the process non-dumpable")?;
    if args.idle_timeout > args.header_timeout {
        bail!(
            "--idle-timeout ({}) must not be longer than --header-timeout ({})",
            humantime::format_duration(args.idle_timeout),
            humantime::format_duration(args.header_timeout)
        );
    }
    let (max_connections, fd_limit) =
        serve::connection_cap(usize::try_from(args.max_connections).unwrap_or(usize::MAX))
            .map_err(anyhow::Error::msg)?;
    let limits = serve::Limits {
        max_connections,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        grace: args.shutdown_grace,
    };
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let which = args.store.clone().unwrap_or(StoreArg::Embedded);
    if matches!(which, StoreArg::Embedded) {
        args.etcd.refuse_unless_etcd()?;
    }
    let store = open_store(&which, &data_dir, &args.etcd.options()).await?;
    let store: Arc<dyn store::Store> = Arc::new(store::timed::Timed::new(store, metrics::global()));
    let mut service = open_service_on(
        store,
        &data_dir,
        args.master_key.clone(),
        args.cluster.clone(),
        args.audit_log,
    )
    .await?;
    service.inflight = limits::InFlight::sized_for(max_connections);
    service.trusted_proxies = args.trusted_proxies.clone();
    service.tls = tls.is_some();
    service.domain.values = values::ValueCache::new(usize::try_from(args.value_cache << 20)?);
    service.domain.values.sweep_every();
    let (per_token, per_user) = service.inflight.limits();
    let audit = service.domain.audit.clone();
    let state = Arc::new(service);
    let router = app(state.clone());
    let ops = match args.metrics_listen {
        Some(a) => Some(listen(a).with_context(|| format!("listening on {a} (--metrics-listen)"))?),
        None => None,
    };
    let listener = listen(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Caught from before the address is announced: a SIGTERM right after start is a clean stop.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    // The first stdout line is the contract tests and scripts read the address from.
    println!("secretd listening on {scheme}://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(
        %addr,
        cluster = %args.cluster,
        data_dir = %data_dir.display(),
        max_connections,
        fd_limit,
        header_timeout = %humantime::format_duration(limits.header_timeout),
        idle_timeout = %humantime::format_duration(limits.idle_timeout),
        per_token,
        per_user,
        "serving"
    );
    let admin_token = data_dir.join("admin.token");
    let json = args.log_format == LogFormat::Json;
    if !admin_token.exists() {
        let hint = format!(
            "The operator token was created by another replica of this store: copy its \
             admin.token to '{}' to use the hint below here.",
            admin_token.display()
        );
        if json {
            tracing::info!("{hint}");
        } else {
            eprintln!("{hint}");
        }
    }
    let hint = format!(
        "Log in as the operator with:\n  neuro login --url {scheme}://{addr} --token \"$(cat {})\"\nthen create users with: neuro admin user add NAME",
        admin_token.display()
    );
    if json {
        tracing::info!("{hint}");
    } else {
        eprintln!("{hint}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(ops) = ops {
        let ops_addr = ops.local_addr()?;
        tracing::info!(addr = %ops_addr, "serving /metrics, /healthz and /readyz");
        let router = router::ops_app(state.clone());
        let mut stop = stop_rx.clone();
        // The same accept loop, with its timeouts, and a small cap: scrapers and probes only.
        let ops_limits = serve::Limits {
            max_connections: 64,
            ..limits
        };
        tokio::spawn(async move {
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = serve::serve(ops, router, None, ops_limits, done).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: no new connections; requests in flight may finish");
        let _ = stop_tx.send(true);
        state.domain.stop_watchers();
        drop(state);
    };
    serve::serve(listener, router, tls, limits, shutdown).await?;
    drop(stop_rx);
    if audit.flush(limits.grace).await {
        tracing::info!("stopped; the audit log is written out");
    } else {
        tracing::error!("stopped; some audit lines could not be written");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// `--help` states every limit with the number the code enforces.
    #[test]
    fn help_names_the_limits_the_code_enforces() {
        let help = super::Args::command().render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in [
            format!("body of at most {} MiB", crate::admit::MAX_BODY >> 20),
            format!("resolve of at most {} URIs", crate::domain::MAX_RESOLVE),
            format!("({} bytes) of values", crate::domain::MAX_RESOLVE_BYTES),
            format!("{} lines waiting", crate::audit::QUEUE),
            format!("more than {} s", crate::audit::STALL.as_secs()),
            format!(
                "value of 1 byte to {} MiB",
                secrets_core::MAX_VALUE_LEN >> 20
            ),
            format!("watch waits at most {} s", crate::domain::MAX_WATCH_S),
            format!("at most {} requests in flight", crate::limits::PER_TOKEN),
            format!("and at most {} (429", crate::limits::PER_USER),
            format!("within {} s (408)", crate::admit::BODY_TIMEOUT.as_secs()),
            format!("may hold {} MiB in all", crate::limits::ANSWER_BUDGET >> 20),
            format!(
                "jobs' at most {} MiB (429",
                crate::limits::ANSWER_SHARE >> 20
            ),
            format!(
                "lives at most {} days",
                crate::domain::MAX_JOB_TTL_S / 86400
            ),
        ] {
            assert!(help.contains(&needle), "--help lacks '{needle}':\n{help}");
        }
    }
}
