//! What secretfs serves, without FUSE: the mapped files, their current values, open handles,
//! the status area and the operation counters. The `fuser` adapter (`adapter.rs`) only
//! translates; everything here is driven by unit tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use secrets_core::SecretBytes;
use serde::Serialize;

use crate::error::{FsError, FsResult, Level, Op, worth_logging};

pub const ROOT_INO: u64 = 1;
pub const STATUS_INO: u64 = 2;
pub const METRICS_INO: u64 = 3;
const FIRST_FILE_INO: u64 = 4;
pub const STATUS_NAME: &str = ".status";
/// The status area's counters in the Prometheus text format (version 0.0.4).
pub const METRICS_NAME: &str = ".metrics";

/// Whether `ino` is one of the status area's files, generated on every open.
pub fn is_generated(ino: u64) -> bool {
    ino == STATUS_INO || ino == METRICS_INO
}

/// How opens and reads are served; ARCHITECTURE.md ("secretfs cache modes") weighs them and
/// BENCHMARKS.md measures them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// Every open is a daemon round trip (audited); every read is served from the handle's
    /// snapshot (direct I/O), so a handle keeps the bytes it opened across a rotation.
    Strict,
    /// Every open is a daemon round trip (audited); reads come from the kernel's page cache,
    /// dropped on rotation, so a warm open+read+close costs exactly one round trip. A handle
    /// opened before a rotation sees the new bytes on its next uncached read.
    Audited,
    /// Opens are not sent to the daemon at all; attributes, names and pages stay in the
    /// kernel until a rotation or revocation invalidates them. Only cache misses are audited.
    Kernel,
}

/// How the adapter should answer an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Reads bypass the page cache and go to the handle's snapshot.
    Direct(u64),
    /// The kernel may keep the pages it holds (same version).
    KeepCache(u64),
    /// The kernel must drop the pages it holds (another version).
    Fresh(u64),
    /// Tell the kernel opens are not needed (`ENOSYS`, kernel mode).
    NotNeeded,
}

/// One secret served as a file.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Where the job sees it.
    pub path: PathBuf,
    /// The URI as the job spec wrote it.
    pub uri: String,
}

/// Whether a file may be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Ok,
    /// The service answered 401/403/404: access is gone.
    Revoked(String),
}

#[derive(Debug)]
struct Current {
    value: Arc<SecretBytes>,
    version: u64,
    access: Access,
    updated: SystemTime,
}

/// The kind of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// The attributes of an inode, before the adapter turns them into `fuser::FileAttr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// Counts of the operations the daemon saw, shown in the status area.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub lookup: AtomicU64,
    pub getattr: AtomicU64,
    pub open: AtomicU64,
    pub read: AtomicU64,
    pub release: AtomicU64,
    pub other: AtomicU64,
    /// Operations answered with an error, by operation.
    pub failed: Failed,
}

/// Counts of failed operations, shown in the status area as `ops.failed`.
#[derive(Debug, Default, Serialize)]
pub struct Failed {
    pub lookup: AtomicU64,
    pub getattr: AtomicU64,
    pub open: AtomicU64,
    pub read: AtomicU64,
    pub readdir: AtomicU64,
}

impl Failed {
    fn of(&self, op: Op) -> &AtomicU64 {
        match op {
            Op::Lookup => &self.lookup,
            Op::Getattr => &self.getattr,
            Op::Open => &self.open,
            Op::Read => &self.read,
            Op::Readdir => &self.readdir,
        }
    }
}

/// The process behind a request, for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    pub uid: u32,
    pub pid: u32,
}

/// How the files look: cache mode, owner and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesConfig {
    pub cache: CacheMode,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of the secret files.
    pub mode: u16,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One audit line: an open the daemon saw.
#[derive(Debug, Serialize)]
pub struct OpenAudit<'a> {
    pub time: String,
    pub event: &'static str,
    pub path: String,
    pub uri: &'a str,
    pub version: u64,
    pub uid: u32,
    pub pid: u32,
    pub executable: String,
    pub result: &'static str,
}

pub type AuditSink = Box<dyn Fn(&OpenAudit<'_>) + Send + Sync>;

/// Everything secretfs serves.
pub struct Files {
    mappings: Vec<Mapping>,
    current: Vec<RwLock<Current>>,
    /// The version whose pages the kernel may hold for each file (`u64::MAX`: none yet).
    cached: Vec<AtomicU64>,
    handles: Mutex<HashMap<u64, Arc<SecretBytes>>>,
    mode_cache: CacheMode,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    mode: u16,
    started: SystemTime,
    stale_since: Mutex<Option<SystemTime>>,
    pub counters: Counters,
    audit: AuditSink,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("mappings", &self.mappings)
            .finish_non_exhaustive()
    }
}

impl Files {
    /// `initial` holds each mapping's first value and version, in mapping order.
    pub fn new(
        cfg: FilesConfig,
        mappings: Vec<Mapping>,
        initial: Vec<(SecretBytes, u64)>,
        audit: AuditSink,
    ) -> Self {
        assert_eq!(mappings.len(), initial.len());
        let now = SystemTime::now();
        Self {
            current: initial
                .into_iter()
                .map(|(v, version)| {
                    RwLock::new(Current {
                        value: Arc::new(v),
                        version,
                        access: Access::Ok,
                        updated: now,
                    })
                })
                .collect(),
            cached: mappings.iter().map(|_| AtomicU64::new(u64::MAX)).collect(),
            mappings,
            handles: Mutex::default(),
            mode_cache: cfg.cache,
            next_fh: AtomicU64::new(1),
            uid: cfg.uid,
            gid: cfg.gid,
            mode: cfg.mode,
            started: now,
            stale_since: Mutex::default(),
            counters: Counters::default(),
            audit,
        }
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The name of file `i` inside the mount root.
    pub fn name_of(i: usize) -> String {
        secrets_core::secretfs_file_name(i)
    }

    pub fn ino_of(i: usize) -> u64 {
        FIRST_FILE_INO + i as u64
    }

    fn index(&self, ino: u64) -> Option<usize> {
        let i = usize::try_from(ino.checked_sub(FIRST_FILE_INO)?).ok()?;
        (i < self.mappings.len()).then_some(i)
    }

    /// The file of inode `ino`.
    fn file(&self, ino: u64) -> FsResult<usize> {
        self.index(ino)
            .ok_or_else(|| FsError::not_found(format!("no inode {ino}")))
    }

    /// The file's path and URI, for messages.
    fn describe(&self, i: usize) -> String {
        let m = &self.mappings[i];
        format!("'{}' ({})", m.path.display(), m.uri)
    }

    /// Counts a failed operation and logs it unless it is expected (or the log has had
    /// enough of this operation's failures; see [`worth_logging`]).
    pub fn failed(&self, op: Op, e: &FsError) {
        let n = self.counters.failed.of(op).fetch_add(1, Ordering::Relaxed) + 1;
        if e.level == Level::Warn && worth_logging(n) {
            eprintln!(
                "secretfs: {} failed with {} (failure {n} of this operation): {e}",
                op.name(),
                e.errno_name()
            );
        }
    }

    fn read_current(&self, i: usize) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current[i].read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        bump(&self.counters.lookup);
        let missing = || FsError::not_found(format!("no entry '{name}' in inode {parent}"));
        if parent != ROOT_INO {
            return Err(missing());
        }
        if name == STATUS_NAME {
            return self.attr(STATUS_INO);
        }
        if name == METRICS_NAME {
            return self.attr(METRICS_INO);
        }
        let i: usize = name.parse().map_err(|_| missing())?;
        if Self::name_of(i) != name || i >= self.mappings.len() {
            return Err(missing());
        }
        self.attr(Self::ino_of(i))
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        bump(&self.counters.getattr);
        self.attr(ino)
    }

    fn attr(&self, ino: u64) -> FsResult<Attr> {
        let base = Attr {
            ino,
            kind: Kind::File,
            size: 0,
            perm: 0o444,
            uid: 0,
            gid: 0,
            mtime: self.started,
        };
        match ino {
            ROOT_INO => Ok(Attr {
                kind: Kind::Dir,
                perm: 0o755,
                ..base
            }),
            STATUS_INO | METRICS_INO => Ok(Attr {
                size: self.generated(ino).len() as u64,
                mtime: SystemTime::now(),
                ..base
            }),
            _ => {
                let i = self.file(ino)?;
                let c = self.read_current(i);
                Ok(Attr {
                    size: c.value.len() as u64,
                    // A revoked file keeps its place but nobody but root may open it.
                    perm: if c.access == Access::Ok { self.mode } else { 0 },
                    uid: self.uid,
                    gid: self.gid,
                    mtime: c.updated,
                    ..base
                })
            }
        }
    }

    /// The root's entries: `(ino, name, kind)`.
    pub fn entries(&self) -> Vec<(u64, String, Kind)> {
        let mut v = vec![
            (ROOT_INO, ".".to_owned(), Kind::Dir),
            (ROOT_INO, "..".to_owned(), Kind::Dir),
            (STATUS_INO, STATUS_NAME.to_owned(), Kind::File),
            (METRICS_INO, METRICS_NAME.to_owned(), Kind::File),
        ];
        v.extend((0..self.mappings.len()).map(|i| (Self::ino_of(i), Self::name_of(i), Kind::File)));
        v
    }

    pub fn cache_mode(&self) -> CacheMode {
        self.mode_cache
    }

    /// Opens a file for reading, audits the open, and says how the kernel should cache it.
    pub fn open(&self, ino: u64, write: bool, who: Requester) -> FsResult<Opened> {
        bump(&self.counters.open);
        if write {
            let what = match self.index(ino) {
                Some(i) => self.describe(i),
                None => format!("inode {ino}"),
            };
            return Err(FsError::new(
                libc::EROFS,
                Level::Warn,
                format!(
                    "{what}: opening for writing, by uid {} pid {}",
                    who.uid, who.pid
                ),
            ));
        }
        if is_generated(ino) {
            let snapshot = Arc::new(SecretBytes::new(self.generated(ino).into_bytes()));
            return Ok(Opened::Direct(self.new_handle(snapshot)));
        }
        if self.mode_cache == CacheMode::Kernel {
            return Ok(Opened::NotNeeded);
        }
        let i = self.file(ino)?;
        let (value, version, result) = {
            let c = self.read_current(i);
            match &c.access {
                Access::Ok => (Ok(c.value.clone()), c.version, "ok"),
                Access::Revoked(why) => (Err(self.revoked(i, why, who)), c.version, "revoked"),
            }
        };
        self.audit_event("open", i, version, who, result);
        let value = value?;
        let fh = self.new_handle(value);
        if self.mode_cache == CacheMode::Strict {
            return Ok(Opened::Direct(fh));
        }
        let same = self.cached[i].swap(version, Ordering::AcqRel) == version;
        Ok(if same {
            Opened::KeepCache(fh)
        } else {
            Opened::Fresh(fh)
        })
    }

    fn revoked(&self, i: usize, why: &str, who: Requester) -> FsError {
        FsError::new(
            libc::EACCES,
            Level::Warn,
            format!(
                "{}: access revoked ({why}), refused to uid {} pid {}",
                self.describe(i),
                who.uid,
                who.pid
            ),
        )
    }

    fn audit_event(
        &self,
        event: &'static str,
        i: usize,
        version: u64,
        who: Requester,
        result: &'static str,
    ) {
        (self.audit)(&OpenAudit {
            time: humantime_now(),
            event,
            path: self.mappings[i].path.display().to_string(),
            uri: &self.mappings[i].uri,
            version,
            uid: who.uid,
            pid: who.pid,
            executable: executable(who.pid),
            result,
        });
    }

    fn new_handle(&self, value: Arc<SecretBytes>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, value);
        fh
    }

    /// Reads file bytes. Strict mode (and the status file) reads the handle's snapshot; the
    /// cached modes read the current value, so the page cache only ever holds the newest
    /// version.
    pub fn read(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        who: Requester,
        out: &mut dyn FnMut(&[u8]),
    ) -> FsResult<()> {
        bump(&self.counters.read);
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned();
        let value = if is_generated(ino) {
            // In kernel mode opens are not sent at all, so there may be no handle.
            handle.unwrap_or_else(|| Arc::new(SecretBytes::new(self.generated(ino).into_bytes())))
        } else if self.mode_cache == CacheMode::Strict {
            handle.ok_or_else(|| {
                FsError::new(
                    libc::EBADF,
                    Level::Warn,
                    format!("inode {ino}: no open handle {fh}"),
                )
            })?
        } else {
            let i = self.file(ino)?;
            let c = self.read_current(i);
            if let Access::Revoked(why) = &c.access {
                let e = self.revoked(i, why, who);
                drop(c);
                self.audit_event("read", i, 0, who, "revoked");
                return Err(e);
            }
            if self.mode_cache == CacheMode::Kernel && offset == 0 {
                self.audit_event("read", i, c.version, who, "ok");
            }
            c.value.clone()
        };
        let bytes = value.expose();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        out(&bytes[start..end]);
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        bump(&self.counters.release);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    pub fn count_other(&self) {
        bump(&self.counters.other);
    }

    /// A new value for file `i`; returns whether anything changed.
    pub fn set_value(&self, i: usize, value: SecretBytes, version: u64) -> bool {
        let mut c = self.current[i].write().unwrap_or_else(|e| e.into_inner());
        if c.version == version && c.access == Access::Ok {
            return false;
        }
        c.value = Arc::new(value);
        c.version = version;
        c.access = Access::Ok;
        c.updated = SystemTime::now();
        true
    }

    /// Access to file `i` is gone (revoked, deleted, token rejected); returns whether that is
    /// news. The value is dropped (and wiped) once no handle holds it.
    pub fn revoke(&self, i: usize, why: &str) -> bool {
        let mut c = self.current[i].write().unwrap_or_else(|e| e.into_inner());
        if matches!(&c.access, Access::Revoked(w) if w == why) {
            return false;
        }
        c.access = Access::Revoked(why.to_owned());
        c.value = Arc::new(SecretBytes::default());
        c.updated = SystemTime::now();
        true
    }

    pub fn set_stale(&self, stale: bool) {
        let mut s = self.stale_since.lock().unwrap_or_else(|e| e.into_inner());
        match (stale, s.is_some()) {
            (true, false) => *s = Some(SystemTime::now()),
            (false, true) => *s = None,
            _ => {}
        }
    }

    pub fn status_is_stale(&self) -> bool {
        self.stale_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The contents of a generated file (`.status` or `.metrics`).
    fn generated(&self, ino: u64) -> String {
        if ino == METRICS_INO {
            self.metrics()
        } else {
            self.status_json()
        }
    }

    /// The counters of the status area in the Prometheus text format: operations and
    /// failures by operation, files by state, open handles, staleness, start time. No label
    /// holds a path or a URI: the names of secrets stay out of metrics.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let c = &self.counters;
        let f = &c.failed;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        family(
            "secretfs_operations_total",
            "counter",
            "FUSE requests the daemon answered, by operation.",
            &[
                (r#"{op="lookup"}"#, n(&c.lookup)),
                (r#"{op="getattr"}"#, n(&c.getattr)),
                (r#"{op="open"}"#, n(&c.open)),
                (r#"{op="read"}"#, n(&c.read)),
                (r#"{op="release"}"#, n(&c.release)),
                (r#"{op="other"}"#, n(&c.other)),
            ],
        );
        family(
            "secretfs_operations_failed_total",
            "counter",
            "FUSE requests answered with an error, by operation.",
            &[
                (r#"{op="lookup"}"#, n(&f.lookup)),
                (r#"{op="getattr"}"#, n(&f.getattr)),
                (r#"{op="open"}"#, n(&f.open)),
                (r#"{op="read"}"#, n(&f.read)),
                (r#"{op="readdir"}"#, n(&f.readdir)),
            ],
        );
        let revoked = self
            .current
            .iter()
            .filter(|c| c.read().unwrap_or_else(|e| e.into_inner()).access != Access::Ok)
            .count() as u64;
        family(
            "secretfs_files",
            "gauge",
            "Secret files served, by state.",
            &[
                (r#"{state="ok"}"#, self.mappings.len() as u64 - revoked),
                (r#"{state="revoked"}"#, revoked),
            ],
        );
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        family(
            "secretfs_open_handles",
            "gauge",
            "Open file handles the daemon holds a snapshot for.",
            &[("", handles)],
        );
        family(
            "secretfs_stale",
            "gauge",
            "1 while the files may be out of date (the service cannot be reached), else 0.",
            &[("", u64::from(self.status_is_stale()))],
        );
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        family(
            "secretfs_start_time_seconds",
            "gauge",
            "When the daemon started, in seconds since the Unix epoch.",
            &[("", secs(self.started))],
        );
        out
    }

    /// The status area: each file's version and state, staleness, operation counters.
    pub fn status_json(&self) -> String {
        #[derive(Serialize)]
        struct FileStatus<'a> {
            path: String,
            uri: &'a str,
            version: u64,
            state: String,
            updated_at: String,
        }
        #[derive(Serialize)]
        struct Status<'a> {
            started_at: String,
            stale_since: Option<String>,
            /// The kernel's answer to PR_GET_DUMPABLE: false keeps ptrace, /proc/PID/mem and
            /// core dumps away from the values.
            dumpable: Option<bool>,
            files: Vec<FileStatus<'a>>,
            ops: &'a Counters,
        }
        let files = self
            .mappings
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let c = self.read_current(i);
                FileStatus {
                    path: m.path.display().to_string(),
                    uri: &m.uri,
                    version: c.version,
                    state: match &c.access {
                        Access::Ok => "ok".into(),
                        Access::Revoked(w) => format!("revoked: {w}"),
                    },
                    updated_at: rfc3339(c.updated),
                }
            })
            .collect();
        let stale = *self.stale_since.lock().unwrap_or_else(|e| e.into_inner());
        let s = Status {
            started_at: rfc3339(self.started),
            stale_since: stale.map(rfc3339),
            dumpable: nix::sys::prctl::get_dumpable().ok(),
            files,
            ops: &self.counters,
        };
        let mut out = serde_json::to_string_pretty(&s).unwrap_or_default();
        out.push('\n');
        out
    }
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn humantime_now() -> String {
    rfc3339(SystemTime::now())
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The executable of a process, for the audit line.
fn executable(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(audit: AuditSink) -> Files {
        files_in(CacheMode::Audited, audit)
    }

    fn files_in(cache: CacheMode, audit: AuditSink) -> Files {
        Files::new(
            FilesConfig {
                cache,
                uid: 1000,
                gid: 1000,
                mode: 0o400,
            },
            vec![
                Mapping {
                    path: "/var/secrets/a".into(),
                    uri: "secret:a".into(),
                },
                Mapping {
                    path: "/etc/b".into(),
                    uri: "secret:/bob/b".into(),
                },
            ],
            vec![
                (SecretBytes::new(b"alpha".to_vec()), 1),
                (SecretBytes::new(vec![0, 255, 7]), 2),
            ],
            audit,
        )
    }

    fn who(uid: u32, pid: u32) -> Requester {
        Requester { uid, pid }
    }

    #[track_caller]
    fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
        r.unwrap_err().errno
    }

    fn read_all(f: &Files, ino: u64, fh: u64) -> Vec<u8> {
        let mut out = Vec::new();
        f.read(ino, fh, 0, 1 << 20, who(0, 1), &mut |b| {
            out.extend_from_slice(b)
        })
        .unwrap();
        out
    }

    fn fh(o: Opened) -> u64 {
        match o {
            Opened::Direct(f) | Opened::KeepCache(f) | Opened::Fresh(f) => f,
            Opened::NotNeeded => 0,
        }
    }

    #[test]
    fn lookup_and_attrs() {
        let f = files(Box::new(|_| {}));
        let a = f.lookup(ROOT_INO, "0").unwrap();
        assert_eq!(
            (a.size, a.perm, a.uid, a.gid, a.kind),
            (5, 0o400, 1000, 1000, Kind::File)
        );
        assert_eq!(f.lookup(ROOT_INO, "1").unwrap().size, 3);
        assert_eq!(errno(f.lookup(ROOT_INO, "2")), libc::ENOENT);
        assert_eq!(errno(f.lookup(ROOT_INO, "01")), libc::ENOENT);
        assert_eq!(errno(f.lookup(ROOT_INO, "x")), libc::ENOENT);
        assert_eq!(errno(f.lookup(Files::ino_of(0), "0")), libc::ENOENT);
        assert_eq!(f.getattr(ROOT_INO).unwrap().kind, Kind::Dir);
        assert_eq!(f.entries().len(), 6);
    }

    #[test]
    fn strict_handles_keep_their_snapshot_across_rotation() {
        let f = files_in(CacheMode::Strict, Box::new(|_| {}));
        let ino = Files::ino_of(0);
        let old = f.open(ino, false, who(1000, 1)).unwrap();
        assert!(matches!(old, Opened::Direct(_)));
        assert!(f.set_value(0, SecretBytes::new(b"beta-2".to_vec()), 5));
        assert!(
            !f.set_value(0, SecretBytes::new(b"beta-2".to_vec()), 5),
            "same version"
        );
        let new = f.open(ino, false, who(1000, 1)).unwrap();
        assert_eq!(read_all(&f, ino, fh(old)), b"alpha");
        assert_eq!(read_all(&f, ino, fh(new)), b"beta-2");
        assert_eq!(f.getattr(ino).unwrap().size, 6);
        f.release(fh(old));
        assert_eq!(
            errno(f.read(ino, fh(old), 0, 10, who(0, 1), &mut |_| {})),
            libc::EBADF
        );
    }

    #[test]
    fn audited_mode_keeps_pages_only_within_a_version() {
        let f = files(Box::new(|_| {}));
        let ino = Files::ino_of(0);
        assert!(
            matches!(f.open(ino, false, who(0, 1)).unwrap(), Opened::Fresh(_)),
            "no pages yet"
        );
        let old = f.open(ino, false, who(0, 1)).unwrap();
        assert!(matches!(old, Opened::KeepCache(_)));
        f.set_value(0, SecretBytes::new(b"beta-2".to_vec()), 5);
        assert!(
            matches!(f.open(ino, false, who(0, 1)).unwrap(), Opened::Fresh(_)),
            "new version"
        );
        // the page cache only ever receives the newest bytes
        assert_eq!(read_all(&f, ino, fh(old)), b"beta-2");
    }

    #[test]
    fn kernel_mode_needs_no_open_and_audits_misses() {
        let n = Arc::new(Mutex::new(0));
        let n2 = n.clone();
        let f = files_in(
            CacheMode::Kernel,
            Box::new(move |_| *n2.lock().unwrap() += 1),
        );
        let ino = Files::ino_of(0);
        assert_eq!(f.open(ino, false, who(0, 1)), Ok(Opened::NotNeeded));
        assert_eq!(read_all(&f, ino, 0), b"alpha");
        assert_eq!(*n.lock().unwrap(), 1);
        f.revoke(0, "forbidden");
        assert_eq!(
            errno(f.read(ino, 0, 0, 10, who(0, 1), &mut |_| {})),
            libc::EACCES
        );
    }

    #[test]
    fn partial_reads() {
        let f = files_in(CacheMode::Strict, Box::new(|_| {}));
        let ino = Files::ino_of(0);
        let h = fh(f.open(ino, false, who(0, 1)).unwrap());
        let mut got = Vec::new();
        f.read(ino, h, 2, 2, who(0, 1), &mut |b| got.extend_from_slice(b))
            .unwrap();
        assert_eq!(got, b"ph");
        got.clear();
        f.read(ino, h, 99, 2, who(0, 1), &mut |b| got.extend_from_slice(b))
            .unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn writes_and_revoked_files_are_refused_and_audited() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let f = files(Box::new(move |a| {
            l.lock().unwrap().push(serde_json::to_string(a).unwrap())
        }));
        assert_eq!(
            errno(f.open(Files::ino_of(0), true, who(1000, 1))),
            libc::EROFS
        );
        assert!(f.revoke(1, "forbidden"));
        assert!(!f.revoke(1, "forbidden"));
        let e = f.open(Files::ino_of(1), false, who(1000, 42)).unwrap_err();
        assert_eq!((e.errno, e.level), (libc::EACCES, Level::Warn));
        assert!(
            e.message.contains("'/etc/b' (secret:/bob/b)") && e.message.contains("forbidden"),
            "{e}"
        );
        assert_eq!(f.getattr(Files::ino_of(1)).unwrap().perm, 0);
        f.open(Files::ino_of(0), false, who(1000, std::process::id()))
            .unwrap();
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains(r#""uri":"secret:/bob/b""#)
                && lines[0].contains(r#""result":"revoked""#)
        );
        assert!(lines[0].contains(r#""pid":42"#) && lines[0].contains(r#""uid":1000"#));
        assert!(lines[1].contains(r#""result":"ok""#) && lines[1].contains("executable"));
        assert!(
            !lines.iter().any(|l| l.contains("alpha")),
            "no value in the audit"
        );
        drop(lines);
        // a value comes back after a revocation
        assert!(f.set_value(1, SecretBytes::new(b"x".to_vec()), 2));
        assert!(f.open(Files::ino_of(1), false, who(1000, 1)).is_ok());
    }

    #[test]
    fn status_shows_versions_staleness_and_counters() {
        let f = files(Box::new(|_| {}));
        f.set_stale(true);
        let s: serde_json::Value = serde_json::from_str(&f.status_json()).unwrap();
        assert_eq!(s["files"][1]["version"], 2);
        assert_eq!(s["files"][0]["path"], "/var/secrets/a");
        assert_eq!(s["files"][0]["state"], "ok");
        assert!(s["stale_since"].as_str().unwrap().ends_with('Z'));
        f.set_stale(false);
        assert!(f.status_json().contains(r#""stale_since": null"#));
        assert!(!f.status_json().contains("alpha"));
    }

    /// Parses the Prometheus text format strictly enough to catch a malformed line: every
    /// sample belongs to a family announced by `# HELP` and `# TYPE` (counter or gauge), names
    /// and label names are valid, values are numbers. Returns `name{labels}` -> value.
    pub(crate) fn parse_prometheus(text: &str) -> HashMap<String, f64> {
        let valid = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let mut typed = HashMap::new();
        let mut out = HashMap::new();
        assert!(text.ends_with('\n'), "{text}");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(
                    valid(name) && ["counter", "gauge"].contains(&kind),
                    "{line}"
                );
                assert!(
                    typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{line}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                assert!(valid(rest.split(' ').next().unwrap()), "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            let name = series.split('{').next().unwrap();
            let kind = typed.get(name).unwrap_or_else(|| panic!("untyped: {line}"));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                for pair in inner.expect(line).split(',') {
                    let (k, v) = pair.split_once('=').expect(line);
                    assert!(valid(k) && v.len() >= 2, "{line}");
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                    assert!(!v[1..v.len() - 1].contains(['"', '\\', '\n']), "{line}");
                }
            }
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
            assert!(out.insert(series.to_owned(), v).is_none(), "twice: {line}");
        }
        out
    }

    #[test]
    fn metrics_are_prometheus_text_and_follow_the_counters() {
        let f = files_in(CacheMode::Strict, Box::new(|_| {}));
        let m = parse_prometheus(&f.metrics());
        assert_eq!(m[r#"secretfs_operations_total{op="open"}"#], 0.0);
        assert_eq!(m[r#"secretfs_files{state="ok"}"#], 2.0);
        assert_eq!(m["secretfs_open_handles"], 0.0);
        assert_eq!(m["secretfs_stale"], 0.0);
        let h = fh(f.open(Files::ino_of(0), false, who(1000, 1)).unwrap());
        assert_eq!(read_all(&f, Files::ino_of(0), h), b"alpha");
        assert_eq!(errno(f.lookup(ROOT_INO, "nope")), libc::ENOENT);
        f.revoke(1, "403");
        f.set_stale(true);
        let m = parse_prometheus(&f.metrics());
        assert_eq!(m[r#"secretfs_operations_total{op="open"}"#], 1.0);
        assert_eq!(m[r#"secretfs_operations_total{op="lookup"}"#], 1.0);
        assert!(m[r#"secretfs_operations_total{op="read"}"#] >= 1.0);
        assert_eq!(m[r#"secretfs_files{state="revoked"}"#], 1.0);
        assert_eq!(m["secretfs_open_handles"], 1.0);
        assert_eq!(m["secretfs_stale"], 1.0);
        f.release(h);
        assert_eq!(parse_prometheus(&f.metrics())["secretfs_open_handles"], 0.0);
        // The file itself: listed, looked up, opened and read like .status, never cached.
        let a = f.lookup(ROOT_INO, METRICS_NAME).unwrap();
        assert_eq!(a.ino, METRICS_INO);
        assert!(
            f.entries()
                .iter()
                .any(|(i, n, _)| *i == METRICS_INO && n == METRICS_NAME)
        );
        let o = f.open(METRICS_INO, false, who(1000, 1)).unwrap();
        assert!(matches!(o, Opened::Direct(_)));
        let text = read_all(&f, METRICS_INO, fh(o));
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("# TYPE secretfs_operations_total counter"),
            "{text}"
        );
        // No path, URI or value in any label.
        for secret in ["/var/secrets/a", "secret:a", "bob", "alpha"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    /// Every failed operation is counted in the status area, by operation; expected ones
    /// (a lookup of a missing name) too, though only the others are logged.
    #[test]
    fn failures_are_counted_by_operation() {
        let f = files(Box::new(|_| {}));
        for (op, r) in [
            (Op::Lookup, f.lookup(ROOT_INO, "nope").map(|_| ())),
            (Op::Lookup, f.lookup(ROOT_INO, "7").map(|_| ())),
            (
                Op::Open,
                f.open(Files::ino_of(0), true, who(0, 1)).map(|_| ()),
            ),
            (Op::Getattr, f.getattr(99).map(|_| ())),
        ] {
            f.failed(op, &r.unwrap_err());
        }
        let s: serde_json::Value = serde_json::from_str(&f.status_json()).unwrap();
        let failed = &s["ops"]["failed"];
        assert_eq!(
            (
                &failed["lookup"],
                &failed["open"],
                &failed["getattr"],
                &failed["read"]
            ),
            (&2.into(), &1.into(), &1.into(), &0.into()),
            "{s}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
