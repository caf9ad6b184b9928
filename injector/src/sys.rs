//! The two process-level operations that need `unsafe`: giving the job a clean signal mask at
//! exec, and wiping the wrapper's credential from its own initial environment block.
//!
//! This module is the crate's one `#[allow(unsafe_code)]` item (on its `mod` line in `lib.rs`).

use std::ffi::CStr;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};

/// Makes `cmd` start its program with an empty signal mask and SIGPIPE at its default action,
/// whatever this process blocked (init mode blocks the forwarded signals and SIGCHLD) or the
/// runtime ignored. The standard library no longer resets the mask of a child; without this
/// the job would inherit init's blocked set, so a forwarded SIGTERM would never be delivered.
///
/// Applies to `spawn` (in the child, between fork and exec) and to `exec` (in this process,
/// just before the exec).
pub fn clean_signals_at_exec(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec (or in this process right
    // before exec), where only async-signal-safe functions may be called. It calls
    // `sigprocmask` and `signal` (both async-signal-safe in POSIX) through nix wrappers that
    // only build a `sigset_t` on the stack, and builds its error from an errno without
    // allocating. It touches no lock, no heap and no shared state. `signal` is unsafe in nix
    // because a handler could observe inconsistent state; SIG_DFL runs no handler code.
    unsafe {
        cmd.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            Ok(())
        });
    }
}

/// Overwrites, with NUL bytes, the value of every `NAME=value` entry of this process's
/// environment whose name is one of `names` (every occurrence: an environment may hold a name
/// twice). The entries still point into the block the kernel set up at exec, which is what
/// `/proc/PID/environ` shows, so the value is gone from there too. Returns how many values it
/// wiped.
///
/// Must be called while this process has one thread: nothing may read the environment
/// concurrently. `secret-inject` calls it right after reading its token (it starts no thread
/// before the exec, or the spawn in init mode).
pub fn wipe_env_values(names: &[&str]) -> usize {
    let mut wiped = 0;
    // SAFETY: `environ` is the C library's pointer to the NULL-terminated array of pointers
    // to NUL-terminated `NAME=value` strings. This process never sets or removes a variable
    // (clippy.toml bans it) and has one thread here, so neither the array nor the strings
    // change or move while we walk them, and nobody else reads them meanwhile. We read each
    // string only up to its terminating NUL (`CStr::from_ptr`), and write only within the
    // bytes of its value (after the '=', before that NUL), so the array stays valid: the
    // entry becomes `NAME=` followed by NULs, a valid empty value.
    unsafe {
        let mut p = nix::libc::environ;
        if p.is_null() {
            return 0;
        }
        while !(*p).is_null() {
            let entry = *p;
            let bytes = CStr::from_ptr(entry).to_bytes();
            let len = bytes.len();
            let hit = names.iter().find(|n| {
                bytes.len() > n.len() && bytes.starts_with(n.as_bytes()) && bytes[n.len()] == b'='
            });
            if let Some(n) = hit {
                let start = n.len() + 1;
                // Volatile, so the compiler cannot drop writes to memory it sees no read of.
                for i in start..len {
                    std::ptr::write_volatile(entry.add(i), 0);
                }
                wiped += 1;
            }
            p = p.add(1);
        }
    }
    wiped
}
