//! The audit log fails closed: with its file stuck (a FIFO nobody reads) or failing (a FIFO
//! whose reader went away: EPIPE), secret reads and writes answer 503, and they are served
//! again once the log can be written.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::Server;

/// Reads the FIFO while `run` is set; stops for good when `stop` is set (closing it).
struct Reader {
    run: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(path: &std::path::Path) -> Self {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .expect("open the FIFO for reading");
        // A small pipe, so that a few lines fill it.
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).expect("F_SETPIPE_SZ");
        let run = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (r, s, b) = (run.clone(), stop.clone(), bytes.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                if r.load(Ordering::SeqCst)
                    && let Ok(n) = f.read(&mut buf)
                {
                    b.fetch_add(n, Ordering::SeqCst);
                    if n > 0 {
                        continue;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Reader {
            run,
            stop,
            bytes,
            thread: Some(thread),
        }
    }

    fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads `s` until the answer is `status`; returns how many reads were answered 200 before.
/// Any answer but 200 and 503 fails.
#[track_caller]
fn read_until(srv: &Server, token: &str, status: u16, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut served = 0;
    loop {
        let r = srv.get(token, "/api/v1/secrets/alice/s");
        if r.status == status {
            return served;
        }
        assert!(r.status == 200 || r.status == 503, "{}", r.body);
        served += usize::from(r.status == 200);
        assert!(
            Instant::now() < deadline,
            "no HTTP {status} within {within:?} ({served} reads served); secretd log:\n{}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reads_and_writes_stop_while_the_audit_log_is_stuck_or_failing() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut reader = Reader::start(&fifo);
    let mut srv = Server::start_with(&[
        "--cluster",
        "neuro-compute",
        "--audit-log",
        fifo.to_str().unwrap(),
    ]);
    let t = srv.add_users(&["alice"]);
    let alice = &t[0];
    srv.put(alice, "s", b"v");
    let r = srv.get(alice, "/api/v1/secrets/alice/s");
    assert_eq!(r.status, 200, "{}", r.body);

    // Stuck: nobody reads; the writer blocks in write(2) once the pipe is full.
    reader.run.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    let served = read_until(&srv, alice, 503, Duration::from_secs(10));
    let stuck_after = t0.elapsed();
    let rss = srv.status_kb("VmRSS");
    eprintln!("stuck log: {served} reads served, then 503 after {stuck_after:?}; VmRSS {rss} kB");
    let r = srv.post(alice, "/api/v1/secrets", r#"{"key":"w","value":"dg=="}"#);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("audit log"), "{}", r.body);
    assert!(srv.stderr().contains("stuck"), "{}", srv.stderr());
    // Nothing was stored while refused.
    reader.run.store(true, Ordering::SeqCst);
    read_until(&srv, alice, 200, Duration::from_secs(5));
    let r = srv.get(alice, "/api/v1/secrets/alice/w");
    assert_eq!(r.status, 404, "{}", r.body);

    // Failing: the reader goes away; writes to the FIFO fail with EPIPE.
    reader.close();
    let served = read_until(&srv, alice, 503, Duration::from_secs(5));
    eprintln!("failing log: {served} reads served before 503");
    assert!(served <= 5, "{served}");
    // The writer marks the log failed, then logs why: the 503 can come first.
    let t1 = Instant::now();
    while !srv.stderr().contains("cannot write the audit log") {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "no log line says why: {}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new reader: the writer retries and reads are served again.
    let reader = Reader::start(&fifo);
    read_until(&srv, alice, 200, Duration::from_secs(5));
    assert!(reader.bytes.load(Ordering::SeqCst) > 0);
    assert!(
        !srv.stderr().contains(alice.as_str()),
        "token in secretd's log"
    );

    // Stuck again, then SIGTERM: a writer blocked for good does not keep secretd alive.
    reader.run.store(false, Ordering::SeqCst);
    read_until(&srv, alice, 503, Duration::from_secs(10));
    let st = srv.stop_within(Duration::from_secs(15));
    assert!(
        st.is_some_and(|s| s.success()),
        "secretd did not stop cleanly within 15 s: {st:?}"
    );
}
