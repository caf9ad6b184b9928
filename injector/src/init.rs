//! Init mode: supervise the job as PID 1 would. Forward signals once, reap every zombie
//! (orphans are re-parented to PID 1), exit with the job's code or 128+signal.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The signals init forwards, plus SIGCHLD, which it handles.
fn handled() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        s.add(sig);
    }
    s
}

/// Blocks the handled signals in this thread (and every thread created later); returns the
/// previous mask.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), Some(&mut old))?;
    Ok(old)
}

/// Spawns the job and supervises it. The job starts with an empty signal mask (the command
/// comes from `prepare`, which clears it at exec: the standard library does not) so that
/// what init forwards is delivered.
pub fn supervise(mut cmd: std::process::Command, _old: SigSet) -> u8 {
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("secret-inject: ERROR: cannot execute the command: {e}");
            return crate::exec_failure(&e).code();
        }
    };
    // The child has its environment; this process needs the values no longer.
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let set = handled();
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(pid, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == pid => return code as u8,
                Ok(WaitStatus::Signaled(p, s, _)) if p == pid => return 128 + s as u8,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {} // an orphan, reaped
            }
        }
    }
}
