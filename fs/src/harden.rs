//! Keeping values in memory only: no core dumps, not dumpable (no ptrace or /proc/PID/mem by
//! other users), memory locked against swap where the process may lock it.

use nix::sys::mman::{MlockAllFlags, mlockall};
use nix::sys::resource::{Resource, setrlimit};

/// What could and could not be applied; a failure to lock memory is a warning, not an error.
#[derive(Debug)]
pub struct Hardening {
    pub locked: Result<(), String>,
}

pub fn apply() -> anyhow::Result<Hardening> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::prctl::set_dumpable(false)?;
    // MCL_ONFAULT: lock pages as they are touched, so reserved but unused memory (thread
    // stacks) is not made resident.
    let flags =
        MlockAllFlags::from_bits_retain(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT);
    let locked = mlockall(flags).map_err(|e| e.to_string());
    Ok(Hardening { locked })
}
