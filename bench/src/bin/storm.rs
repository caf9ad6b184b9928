//! Starts many processes at once, at most CONCURRENCY at a time:
//! `storm COUNT CONCURRENCY [--tokens FILE] -- CMD...`. With `--tokens`, process i gets line
//! i of FILE (one token a line, at least COUNT lines) as `NEURO_TOKEN`, so each start is its
//! own job. Every process must exit 0: the first failure's stderr is printed and the driver
//! exits 1. Prints one line: `total_ms p50_ms p99_ms max_ms`, per-start times being each
//! process's wall time from spawn to exit.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = args[0].parse().expect("COUNT");
    let conc: usize = args[1].parse().expect("CONCURRENCY");
    let sep = args.iter().position(|a| a == "--").expect("--");
    let tokens: Option<Vec<String>> = match args.get(2).map(String::as_str) {
        Some("--tokens") => Some(
            std::fs::read_to_string(&args[3])
                .expect("tokens file")
                .lines()
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    };
    if let Some(t) = &tokens {
        assert!(t.len() >= count, "{} tokens for {count} starts", t.len());
    }
    let cmd = &args[sep + 1..];
    let next = AtomicUsize::new(0);
    let times = Mutex::new(Vec::with_capacity(count));
    let failed = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..conc.min(count) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let mut c = Command::new(&cmd[0]);
                    c.args(&cmd[1..])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped());
                    if let Some(t) = &tokens {
                        c.env("NEURO_TOKEN", &t[i]);
                    }
                    let t = Instant::now();
                    let out = c.output().expect("spawn");
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    if out.status.success() {
                        times.lock().expect("times").push(ms);
                    } else {
                        failed.lock().expect("failed").push((
                            i,
                            out.status,
                            String::from_utf8_lossy(&out.stderr).into_owned(),
                        ));
                    }
                }
            });
        }
    });
    let total = t0.elapsed().as_secs_f64() * 1000.0;
    let failed = failed.into_inner().expect("failed");
    if let Some((i, st, err)) = failed.first() {
        eprintln!(
            "storm: {} of {count} starts failed; start {i}: {st}: {err}",
            failed.len()
        );
        std::process::exit(1);
    }
    let mut v = times.into_inner().expect("times");
    v.sort_by(f64::total_cmp);
    println!(
        "{total:.1} {:.3} {:.3} {:.3}",
        pct(&v, 0.5),
        pct(&v, 0.99),
        v[v.len() - 1]
    );
}
