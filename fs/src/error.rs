//! `FsError`: how a filesystem operation fails (the errno the kernel gets, a message for the
//! log, how loud), and `Op`, the operation it failed in. The adapter replies with every error
//! through one path (`fuse_error!` in `adapter.rs`), which counts it and logs it.

/// How loudly a failure is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Expected in normal use (a shell looking up a name that is not there): counted only.
    Debug,
    /// Worth an operator's look (a revoked file opened, a write attempted): counted and logged.
    Warn,
}

/// A failed filesystem operation. The message names the file (path, URI), never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
    pub level: Level,
}

impl FsError {
    pub fn new(errno: i32, level: Level, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
            level,
        }
    }

    /// `ENOENT`, expected: counted, not logged.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(libc::ENOENT, Level::Debug, message)
    }

    /// The errno's symbolic name (`EACCES`), for the log.
    pub fn errno_name(&self) -> String {
        format!("{:?}", nix::errno::Errno::from_raw(self.errno))
    }
}

/// How the logic answers the adapter.
pub type FsResult<T> = Result<T, FsError>;

/// The operations that can fail, for the counters and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Open,
    Read,
    Readdir,
}

impl Op {
    pub const fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Open => "open",
            Op::Read => "read",
            Op::Readdir => "readdir",
        }
    }
}

/// Whether the `n`th failure of one operation is logged: the first 16, then every power of
/// two, so a job that retries a refused open in a loop cannot flood the log.
pub fn worth_logging(n: u64) -> bool {
    n <= 16 || n.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_throttle() {
        assert_eq!(FsError::not_found("x").errno_name(), "ENOENT");
        assert_eq!(FsError::not_found("x").level, Level::Debug);
        let logged: Vec<u64> = (1..=100).filter(|n| worth_logging(*n)).collect();
        assert_eq!(logged.len(), 16 + 2, "{logged:?}");
        assert!(worth_logging(1 << 20) && !worth_logging((1 << 20) + 1));
    }
}
