//! `secret-inject`: the job container's entrypoint. Resolves `NAME=secret:KEY` mappings in one
//! request, builds the job's environment explicitly (never touching its own), and execs the
//! job, or, as PID 1 or with `--init`, runs it as a minimal init.
//!
//! It never prints a value, never puts one in argv, and never sets a variable in its own
//! environment: values exist only in this process's memory until the exec. In init mode the
//! wrapper lives on beside the job: its `Resolved` copies are wiped once the job is spawned,
//! but the copies `Command` made of the environment are only freed, not wiped (the wrapper
//! is not dumpable, so the job cannot read them through /proc).

pub mod http;
pub mod init;
pub mod tls;
// The crate's one unsafe item: a clean signal mask at exec, and wiping its own credential.
#[allow(unsafe_code)]
mod sys;

use secrets_core::exit::escape_control as escaped;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use secrets_client::{ClientConfig, ClientError, ConnArgs, GroupMayRead};
use secrets_core::api::{JobSpec, ResolveStatus};
use secrets_core::{EnvMapping, EnvName, ExitClass, SecretRef, Token};
use zeroize::Zeroizing;

/// The kernel's limit on one argv or environment string, terminating NUL included.
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// The variables that carry the wrapper's own credentials; never passed to the job.
const OWN_VARS: [&str; 2] = ["NEURO_TOKEN", "NEURO_TOKEN_FILE"];

/// The `Exit codes:` section of `--help`, written out: clap builds the whole command, help
/// text included, at every start, and formatting this took ~1.5% of the wrapper's start-up.
/// `exit_codes_are_exit_class_help` checks that it is what [`exit_codes`] words.
const EXIT_CODES: &str = concat!(
    "Exit codes:\n",
    "  1   any other failure: --install could not write its copy; the process could not be\n",
    "      made non-dumpable, or init mode could not block the signals it forwards\n",
    "  2   usage error\n",
    "  65  invalid input: a bad mapping or variable name, a protected name without\n",
    "      --allow-override, a value containing NUL, an invalid URI, a --token-file that\n",
    "      others may read or group or others may write (its group may read it only when\n",
    "      that group is how this process reads it, as with a Kubernetes fsGroup): chmod\n",
    "      600 it\n",
    "  69  the service is unavailable: it could not be reached or kept failing (connection\n",
    "      refused, timeout, 429, 5xx) until --timeout; at once when its TLS certificate is\n",
    "      not accepted or the URL's scheme (http/https) is not what it speaks\n",
    "  72  not found: a mapped secret does not exist\n",
    "  77  not authenticated or not permitted: no token, the token is not accepted, or it may\n",
    "      not read a mapped secret\n",
    "  126 the command cannot be executed\n",
    "  127 the command was not found\n",
    "When several fail at once, the code is the first of:\n",
    "  invalid (65), forbidden (77), not found (72), unavailable (69).\n",
    "These are before the job starts; afterwards the code is the job's own (in init mode,\n",
    "128+N when signal N killed it).",
);

/// The `Exit codes:` section of `--help`, as `ExitClass::help` words every binary's.
#[cfg(test)]
fn exit_codes() -> String {
    let mut h = ExitClass::help(&[
        (
            ExitClass::Other,
            "--install could not write its copy; the process could not be\n\
             made non-dumpable, or init mode could not block the signals it forwards",
        ),
        (ExitClass::Usage, ""),
        (
            ExitClass::Invalid,
            "a bad mapping or variable name, a protected name without\n\
             --allow-override, a value containing NUL, an invalid URI, a --token-file that\n\
             others may read or group or others may write (its group may read it only when\n\
             that group is how this process reads it, as with a Kubernetes fsGroup): chmod\n\
             600 it",
        ),
        (
            ExitClass::Unavailable,
            "it could not be reached or kept failing (connection\n\
             refused, timeout, 429, 5xx) until --timeout; at once when its TLS certificate is\n\
             not accepted or the URL's scheme (http/https) is not what it speaks",
        ),
        (ExitClass::NotFound, "a mapped secret does not exist"),
        (
            ExitClass::Forbidden,
            "no token, the token is not accepted, or it may\n\
             not read a mapped secret",
        ),
        (ExitClass::CannotExecute, ""),
        (ExitClass::CommandNotFound, ""),
    ]);
    h.push_str(
        "\nThese are before the job starts; afterwards the code is the job's own (in init mode,\n\
         128+N when signal N killed it).",
    );
    h
}

/// Command line of `secret-inject`.
#[derive(Debug, Parser)]
#[command(
    name = "secret-inject",
    version,
    about = "Resolve secret environment mappings, then exec the job",
    long_about = "Resolve NAME=secret:KEY mappings (from --env and --spec) in one request, then \
        exec CMD with them added to the inherited environment, minus the wrapper's own \
        credentials (NEURO_TOKEN). Any failure stops it before CMD starts, with one line per \
        failing mapping. As PID 1, or with --init, it stays as a minimal init: it forwards \
        SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the job once, reaps \
        zombies, and exits with the job's code.",
    after_help = EXIT_CODES
)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// A job spec (JSON of POST /api/v1/jobs); its secret_env mappings are used
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// NAME=secret:KEY or NAME:secret:KEY (short, shared and full URIs); repeatable
    #[arg(long = "env", value_name = "MAPPING")]
    pub envs: Vec<String>,
    /// Allow mappings to set PATH, LD_*, and other names that change how programs load
    #[arg(long)]
    pub allow_override: bool,
    /// Stay as a minimal init even when not PID 1
    #[arg(long)]
    pub init: bool,
    /// Log each step (names, URIs, versions, timings; never values) to stderr
    #[arg(long, short)]
    pub verbose: bool,
    /// Copy this binary to PATH (mode 0555) and exit: how a pod's init container puts the
    /// wrapper into a shared volume, so that any job image can run it
    #[arg(long, value_name = "PATH", exclusive = true)]
    pub install: Option<PathBuf>,
    /// The job's command and arguments
    #[arg(last = true, required_unless_present = "install", value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// One failing mapping (or the whole request): what, which URI, which class, why, and what
/// to do about it.
#[derive(Debug)]
pub struct MappingFailure {
    pub var: Option<String>,
    pub uri: Option<String>,
    pub class: ExitClass,
    pub detail: String,
    /// Advice in this program's words, printed on a line of its own.
    pub hint: Option<String>,
}

impl MappingFailure {
    /// A failure of the request as a whole. Of the client's errors only `Incompatible` is
    /// all in our words (a TLS failure, an answer that is not HTTP), so only its hint keeps
    /// a line of its own; a `Status` message is the service's text, hint or not.
    fn request(e: &ClientError, detail: String) -> Self {
        let (detail, hint) = match (e, detail.split_once("\nhint: ")) {
            (ClientError::Incompatible { .. }, Some((d, h))) => (d.to_owned(), Some(h.to_owned())),
            _ => (detail, None),
        };
        MappingFailure {
            var: None,
            uri: None,
            class: ExitClass::from(e),
            detail,
            hint,
        }
    }

    /// The error line. Every part is escaped: the URI and detail may be the service's text,
    /// and no text, whoever wrote it, may color the terminal, move its cursor or start a
    /// line that looks like another error.
    fn line(&self) -> String {
        let mut s = String::from("secret-inject: ERROR: ");
        if let Some(v) = &self.var {
            s.push_str(&format!("{}: ", escaped(v)));
        }
        if let Some(u) = &self.uri {
            s.push_str(&format!("{}: ", escaped(u)));
        }
        s.push_str(self.class.name());
        if !self.detail.is_empty() || self.hint.is_some() {
            s.push_str(&format!(" ({}", escaped(&self.detail)));
            if let Some(h) = &self.hint {
                s.push_str(&format!("\nhint: {}", escaped(h)));
            }
            s.push(')');
        }
        s
    }
}

fn invalid(var: Option<&str>, uri: Option<&str>, detail: impl Into<String>) -> MappingFailure {
    MappingFailure {
        var: var.map(str::to_owned),
        uri: uri.map(str::to_owned),
        class: ExitClass::Invalid,
        detail: detail.into(),
        hint: None,
    }
}

/// The mappings of `--spec` then `--env`, validated; a name may appear once.
pub fn mappings(args: &Args) -> Result<Vec<EnvMapping>, Vec<MappingFailure>> {
    let mut out: Vec<EnvMapping> = Vec::new();
    let mut errs = Vec::new();
    if let Some(p) = &args.spec {
        match std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|raw| serde_json::from_slice::<JobSpec>(&raw).map_err(|e| e.to_string()))
        {
            Ok(spec) => {
                for (name, uri) in spec.secret_env {
                    match (EnvName::new(&name), SecretRef::parse(&uri)) {
                        (Ok(name), Ok(secret)) => out.push(EnvMapping { name, secret }),
                        (Err(e), _) => errs.push(invalid(Some(&name), Some(&uri), e.to_string())),
                        (_, Err(e)) => errs.push(invalid(Some(&name), Some(&uri), e.reason)),
                    }
                }
            }
            Err(e) => errs.push(invalid(None, None, format!("spec '{}': {e}", p.display()))),
        }
    }
    for spec in &args.envs {
        match EnvMapping::parse(spec) {
            Ok(m) => out.push(m),
            Err(e) => errs.push(invalid(None, None, e.to_string())),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for m in &out {
        let uri = m.secret.to_string();
        if !seen.insert(m.name.clone()) {
            errs.push(invalid(
                Some(m.name.as_str()),
                Some(&uri),
                "mapped more than once",
            ));
        }
        if m.name.is_sensitive() && !args.allow_override {
            errs.push(invalid(
                Some(m.name.as_str()),
                Some(&uri),
                "this name changes how programs are found or loaded; pass --allow-override to set it",
            ));
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// A resolved variable: its name and value, wiped on drop.
pub struct Resolved {
    pub name: EnvName,
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resolved({}=****)", self.name)
    }
}

/// A small random factor in [0.5, 1.5) so that many wrappers do not retry in lockstep.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    0.5 + f64::from(u16::from_le_bytes(b)) / 65536.0
}

/// Resolves every mapping in one request, retrying transient failures within `deadline`.
/// Results are matched to mappings by the URI they answer, never by their place; an answer
/// without exactly one result per URI asked is refused as a whole.
pub fn resolve(
    transport: &http::Service,
    maps: &[EnvMapping],
    deadline: Instant,
    verbose: bool,
) -> Result<Vec<Resolved>, Vec<MappingFailure>> {
    // Each URI once, however many mappings name it: the service answers once per URI asked,
    // and every result must be one URI's only answer.
    let mut uris: Vec<String> = Vec::with_capacity(maps.len());
    let mut asked = HashSet::with_capacity(maps.len());
    for m in maps {
        let uri = m.secret.to_string();
        if asked.insert(uri.clone()) {
            uris.push(uri);
        }
    }
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u32;
    let resp = loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let result = if left.is_zero() {
            Err(ClientError::Unavailable {
                url: transport.base_url().to_owned(),
                detail: "timed out".into(),
            })
        } else {
            transport.resolve(&uris, left)
        };
        match result {
            Ok(r) => break r,
            Err(e) if e.is_transient() => {
                let left = deadline.saturating_duration_since(Instant::now());
                // The last attempt is made at the deadline, not skipped before it.
                let wait = backoff.mul_f64(jitter()).min(left);
                if left.is_zero() {
                    let detail = format!("{e}; gave up after {attempt} attempt(s)");
                    return Err(vec![MappingFailure::request(&e, detail)]);
                }
                if verbose {
                    let e = escaped(&e.to_string()).into_owned();
                    eprintln!("secret-inject: attempt {attempt}: {e}; retrying in {wait:?}");
                }
                std::thread::sleep(wait);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(vec![MappingFailure::request(&e, e.to_string())]),
        }
    };
    let results = by_uri(&uris, resp.results).map_err(|(uri, detail)| {
        vec![MappingFailure {
            var: None,
            uri,
            class: ExitClass::Unavailable,
            detail: ClientError::Protocol {
                url: transport.base_url().to_owned(),
                detail: detail.into(),
            }
            .to_string(),
            hint: None,
        }]
    })?;
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for m in maps {
        let asked = m.secret.to_string();
        let Some(r) = results.get(&asked) else {
            // `by_uri` holds a result for every URI asked; were one missing, fail closed.
            errs.push(MappingFailure {
                var: Some(m.name.to_string()),
                uri: Some(asked),
                class: ExitClass::Unavailable,
                detail: "the service sent no result".into(),
                hint: None,
            });
            continue;
        };
        let uri = r.resolved_uri.clone().unwrap_or(asked);
        let fail = |class, detail: String| MappingFailure {
            var: Some(m.name.to_string()),
            uri: Some(uri.clone()),
            class,
            detail,
            hint: None,
        };
        match (r.status, &r.value) {
            (ResolveStatus::Ok, Some(v)) => {
                let entry = m.name.as_str().len() + 1 + v.len() + 1;
                if v.expose().contains(&0) {
                    errs.push(fail(
                        ExitClass::Invalid,
                        "the value contains a NUL byte, which no environment variable can hold"
                            .into(),
                    ));
                } else if entry > MAX_ARG_STRLEN {
                    errs.push(fail(
                        ExitClass::Invalid,
                        format!(
                            "NAME=VALUE is {entry} bytes; Linux limits one environment entry to {MAX_ARG_STRLEN} bytes (MAX_ARG_STRLEN)"
                        ),
                    ));
                } else {
                    if verbose {
                        eprintln!(
                            "secret-inject: {} <- {} (version {}, {} bytes)",
                            m.name,
                            escaped(&uri),
                            r.version.unwrap_or(0),
                            v.len()
                        );
                    }
                    out.push(Resolved {
                        name: m.name.clone(),
                        value: Zeroizing::new(v.expose().to_vec()),
                    });
                }
            }
            (ResolveStatus::Ok, None) => errs.push(fail(
                ExitClass::Unavailable,
                "the service sent no value".into(),
            )),
            (ResolveStatus::NotFound, _) => errs.push(fail(ExitClass::NotFound, String::new())),
            (ResolveStatus::Forbidden, _) => errs.push(fail(ExitClass::Forbidden, String::new())),
            (ResolveStatus::Invalid, _) => errs.push(fail(
                ExitClass::Invalid,
                r.error.clone().unwrap_or_default(),
            )),
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// The results of an answer by the URI each answers (as asked, as the service echoes it):
/// exactly one for each URI in `asked` and none for another, or why not (the URI, when it
/// was asked; a URI not asked is the service's text and is not repeated).
fn by_uri(
    asked: &[String],
    results: Vec<secrets_core::api::Resolved>,
) -> Result<HashMap<String, secrets_core::api::Resolved>, (Option<String>, &'static str)> {
    let set: HashSet<&str> = asked.iter().map(String::as_str).collect();
    let mut by_uri = HashMap::with_capacity(asked.len());
    for r in results {
        if !set.contains(r.uri.as_str()) {
            return Err((None, "a result for a URI that was not asked"));
        }
        if by_uri.contains_key(&r.uri) {
            return Err((Some(r.uri), "more than one result for this URI"));
        }
        by_uri.insert(r.uri.clone(), r);
    }
    match asked.iter().find(|u| !by_uri.contains_key(*u)) {
        Some(u) => Err((Some(u.clone()), "no result for this URI")),
        None => Ok(by_uri),
    }
}

/// The job's environment: the inherited one, minus the wrapper's credentials, plus the
/// resolved values (which win over inherited variables of the same name).
pub fn child_env(
    inherited: impl Iterator<Item = (OsString, OsString)>,
    resolved: &[Resolved],
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = inherited
        .filter(|(k, _)| !OWN_VARS.iter().any(|o| OsStr::new(o) == k))
        .collect();
    for r in resolved {
        env.insert(
            OsString::from(r.name.as_str()),
            OsString::from_vec(r.value.to_vec()),
        );
    }
    env
}

fn report(errs: &[MappingFailure]) -> u8 {
    for e in errs {
        eprintln!("{}", e.line());
    }
    match ExitClass::of(errs.iter().map(|e| e.class)) {
        ExitClass::Ok => ExitClass::Other.code(),
        c => c.code(),
    }
}

/// The token. The file's group may read it only when that group is how this process reads
/// it: not the owner, the file's group among its own (a Kubernetes `fsGroup` mount,
/// root-owned, mode 0440).
fn read_token(args: &Args) -> Result<Token, MappingFailure> {
    let mut gids = vec![nix::unistd::getegid().as_raw()];
    // Only a token file has a group; `getgroups` reads /proc/sys/kernel/ngroups_max first
    // (a procfs open at every start), so a token from NEURO_TOKEN skips it.
    if args.conn.token_file.is_some() {
        gids.extend(
            nix::unistd::getgroups()
                .unwrap_or_default()
                .iter()
                .map(|g| g.as_raw()),
        );
    }
    let group = GroupMayRead::Member {
        uid: nix::unistd::geteuid().as_raw(),
        gids,
    };
    args.conn.token(group).map_err(|e| MappingFailure {
        var: None,
        uri: None,
        class: e.class(),
        detail: e.to_string(),
        hint: None,
    })
}

/// The service of `cfg`, over TLS for an `https://` URL; a bad URL or CA file is refused.
fn transport(cfg: &ClientConfig, verbose: bool) -> Result<http::Service, MappingFailure> {
    let token = cfg
        .token
        .clone()
        .ok_or_else(|| invalid(None, None, "no token"))?;
    let service = http::Service::new(&cfg.url, token, cfg.ca_file.as_deref())
        .map_err(|e| invalid(None, None, e.to_string()))?;
    if verbose {
        let how = if service.is_tls() {
            "HTTPS"
        } else {
            "plain HTTP"
        };
        eprintln!("secret-inject: {how} to {}", service.base_url());
    }
    Ok(service)
}

/// Everything before the job starts; returns the command ready to exec or spawn.
fn prepare(args: &Args) -> Result<std::process::Command, u8> {
    let t0 = Instant::now();
    let deadline = t0 + args.conn.timeout;
    if args.conn.url().is_none() {
        return Err(report(&[MappingFailure {
            var: None,
            uri: None,
            class: ExitClass::Usage,
            detail: "--url or NEURO_URL is required".into(),
            hint: None,
        }]));
    }
    let maps = mappings(args).map_err(|e| report(&e))?;
    let token = read_token(args).map_err(|e| report(&[e]))?;
    // The token now lives in `token` only; wipe it from the environment block this process
    // started with (what /proc/PID/environ shows), which in init mode stays alive beside
    // the job. One thread so far: nothing reads the environment concurrently.
    let wiped = sys::wipe_env_values(&["NEURO_TOKEN"]);
    if args.verbose && wiped > 0 {
        eprintln!("secret-inject: wiped NEURO_TOKEN from this process's environment");
    }
    let per_request = args
        .conn
        .timeout
        .clamp(Duration::from_millis(100), Duration::from_secs(300));
    let cfg = args.conn.client_config(token, per_request);
    // Built even without a mapping: a bad URL or CA file is refused either way.
    let transport = transport(&cfg, args.verbose).map_err(|e| report(&[e]))?;
    let resolved = if maps.is_empty() {
        Vec::new()
    } else {
        resolve(&transport, &maps, deadline, args.verbose).map_err(|e| report(&e))?
    };
    // No connection outlives the resolve.
    drop(transport);
    if args.verbose {
        eprintln!(
            "secret-inject: resolved {} mapping(s) in {:?}",
            resolved.len(),
            t0.elapsed()
        );
    }
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env_clear()
        .envs(child_env(std::env::vars_os(), &resolved));
    sys::clean_signals_at_exec(&mut cmd);
    Ok(cmd)
}

/// `--install PATH`: copies the running binary there, through a new file of a random name in
/// the same directory, renamed into place, so a reader never sees half a binary and nothing
/// planted in the directory (a symbolic link at a predictable temporary name) redirects the
/// write: the temporary file is created with `O_EXCL | O_NOFOLLOW`, and `rename` replaces
/// `PATH` itself, never what a link there points to.
fn install(dst: &std::path::Path) -> u8 {
    match install_to(dst) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "secret-inject: ERROR: cannot install to '{}': {e}",
                dst.display()
            );
            ExitClass::Other.code()
        }
    }
}

fn install_to(dst: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let name = dst.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut src = std::fs::File::open("/proc/self/exe")?;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(std::io::Error::other)?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{:016x}.tmp", u64::from_le_bytes(rnd)));
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .mode(0o600)
        .open(&tmp)?;
    // From here on the temporary file is ours: remove it on any failure.
    let r = std::io::copy(&mut src, &mut f)
        .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(0o555)))
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, dst));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself survives a crash only once the directory is synced; best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// 127 when the command was not found, else 126.
pub fn exec_failure(e: &std::io::Error) -> ExitClass {
    if e.kind() == std::io::ErrorKind::NotFound {
        ExitClass::CommandNotFound
    } else {
        ExitClass::CannotExecute
    }
}

/// Runs secret-inject; returns the exit code when it does not exec.
pub fn main(args: Args) -> u8 {
    if let Some(dst) = &args.install {
        return install(dst);
    }
    // Not dumpable: /proc/PID/{environ,mem,...} of this process become root's, so a job of
    // the same uid cannot read the token from the wrapper that stays beside it in init mode.
    // The job itself is dumpable again: execve resets the flag.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("secret-inject: ERROR: cannot make the process non-dumpable: {e}");
        return ExitClass::Other.code();
    }
    let init = args.init || std::process::id() == 1;
    // Block the signals init forwards before any thread exists, so that every thread
    // inherits the mask and only `init::supervise` receives them. Without them blocked there
    // is no init: fail rather than exec without one.
    let blocked = if init {
        match init::block_signals() {
            Ok(old) => Some(old),
            Err(e) => {
                eprintln!("secret-inject: ERROR: init mode: cannot block signals: {e}");
                return ExitClass::Other.code();
            }
        }
    } else {
        None
    };
    let mut cmd = match prepare(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(old) = blocked {
        return init::supervise(cmd, old);
    }
    let err = cmd.exec();
    eprintln!(
        "secret-inject: ERROR: cannot execute '{}': {err}",
        args.command[0].to_string_lossy()
    );
    exec_failure(&err).code()
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt as _;

    use super::*;

    fn os(s: &str) -> OsString {
        OsString::from_vec(OsStr::new(s).as_bytes().to_vec())
    }

    fn args(envs: &[&str], allow: bool) -> Args {
        let mut v = vec!["secret-inject", "--url", "http://127.0.0.1:1"];
        for e in envs {
            v.extend(["--env", e]);
        }
        if allow {
            v.push("--allow-override");
        }
        v.extend(["--", "true"]);
        Args::parse_from(v)
    }

    #[test]
    fn mappings_both_spellings_and_refusals() {
        let m = mappings(&args(
            &["A=secret:k", "B:secret:/bob/k", "C=secret://c/bob/k"],
            false,
        ))
        .unwrap();
        let got: Vec<String> = m
            .iter()
            .map(|m| format!("{}={}", m.name, m.secret))
            .collect();
        assert_eq!(got, ["A=secret:k", "B=secret:/bob/k", "C=secret://c/bob/k"]);
        let e = mappings(&args(
            &[
                "PATH=secret:k",
                "A=secret:k",
                "A=secret:j",
                "1X=secret:k",
                "B=plain",
            ],
            false,
        ))
        .unwrap_err();
        let lines: Vec<String> = e.iter().map(MappingFailure::line).collect();
        assert!(lines.iter().all(|l| l.contains("invalid")), "{lines:?}");
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("PATH: secret:k: invalid") && l.contains("--allow-override"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("A: secret:j: invalid (mapped more than once)"))
        );
        assert!(mappings(&args(&["PATH=secret:k", "LD_PRELOAD=secret:j"], true)).is_ok());
    }

    #[test]
    fn child_env_drops_credentials_and_adds_values() {
        let inherited = vec![
            (os("NEURO_TOKEN"), os("tok")),
            (os("HOME"), os("/root")),
            (os("A"), os("old")),
        ];
        let resolved = vec![Resolved {
            name: EnvName::new("A").unwrap(),
            value: Zeroizing::new(b"line1\nline2 $x = 'q' \"q\" \xc3\xa9 ".to_vec()),
        }];
        let env = child_env(inherited.into_iter(), &resolved);
        assert!(!env.contains_key(&os("NEURO_TOKEN")));
        assert_eq!(env[&os("HOME")], os("/root"));
        assert_eq!(
            env[&os("A")].as_bytes(),
            b"line1\nline2 $x = 'q' \"q\" \xc3\xa9 "
        );
        assert_eq!(format!("{:?}", resolved[0]), "Resolved(A=****)");
    }

    #[test]
    fn error_lines_escape_control_characters() {
        #[track_caller]
        fn check(input: &str, expected: &str) {
            assert_eq!(escaped(input), expected);
        }
        check("plain 'text' é", "plain 'text' é");
        check("\x1b[31mred\n", "\\x1b[31mred\\n");
        check("a\r\tb\x00\x7f\u{9b}c", "a\\r\\tb\\x00\\x7f\\x9bc");
        let f = |e: ClientError| MappingFailure::request(&e, e.to_string()).line();
        // Our own hint keeps its line; the service's text never makes one.
        let ours = f(ClientError::Incompatible {
            url: "http://x".into(),
            detail: "the answer is not HTTP (x)\nhint: is the URL https://?".into(),
        });
        assert_eq!(
            ours,
            "secret-inject: ERROR: unavailable (service unavailable at http://x: the answer is \
             not HTTP (x)\nhint: is the URL https://?)"
        );
        let theirs = f(ClientError::Status {
            status: 403,
            message: "\x1b[2Jno\nhint: run rm -rf".into(),
            missing: vec![],
        });
        assert_eq!(
            theirs,
            "secret-inject: ERROR: forbidden (\\x1b[2Jno\\nhint: run rm -rf)"
        );
    }

    #[test]
    fn exit_codes_are_exit_class_help() {
        assert_eq!(EXIT_CODES, exit_codes());
    }

    #[test]
    fn exit_code_precedence() {
        let f = |class| MappingFailure {
            var: None,
            uri: None,
            class,
            detail: String::new(),
            hint: None,
        };
        // The precedence itself is ExitClass's (its table test); this is its use here.
        assert_eq!(
            report(&[f(ExitClass::Unavailable), f(ExitClass::NotFound)]),
            72
        );
        assert_eq!(
            report(&[f(ExitClass::NotFound), f(ExitClass::Forbidden)]),
            77
        );
        assert_eq!(
            report(&[f(ExitClass::Forbidden), f(ExitClass::Invalid)]),
            65
        );
        assert_eq!(report(&[f(ExitClass::Unavailable)]), 69);
        assert_eq!(report(&[]), 1);
    }
}
