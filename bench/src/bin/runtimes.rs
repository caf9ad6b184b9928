//! Compares the wall time of two commands run alternately:
//! `runtimes RUNS BASELINE... -- CANDIDATE...`. Prints the median and p90 of each, the
//! difference of the medians in milliseconds, and that difference as a multiple of the
//! baseline's median (issue 13's goal for secret-inject: at most 1.0x a plain exec).

use std::process::{Command, Stdio};
use std::time::Instant;

fn time(cmd: &[String]) -> f64 {
    let t0 = Instant::now();
    let st = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("spawn");
    assert!(st.success(), "{cmd:?} failed: {st}");
    t0.elapsed().as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args[0].parse().expect("RUNS");
    let sep = args.iter().position(|a| a == "--").expect("--");
    let (base, cand) = (&args[1..sep], &args[sep + 1..]);
    let (mut b, mut c) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        b.push(time(base));
        c.push(time(cand));
    }
    let (bm, cm) = (pct(&mut b, 0.5), pct(&mut c, 0.5));
    println!(
        "baseline  median {bm:.3} ms  p90 {:.3} ms  ({})",
        pct(&mut b, 0.9),
        base.join(" ")
    );
    println!(
        "candidate median {cm:.3} ms  p90 {:.3} ms  ({})",
        pct(&mut c, 0.9),
        cand.join(" ")
    );
    let ratio = (cm - bm) / bm;
    println!(
        "added to the median: {:.3} ms = {ratio:.2}x the baseline's median (goal <= 1.0x: {})",
        cm - bm,
        if ratio <= 1.0 { "met" } else { "NOT met" }
    );
}
