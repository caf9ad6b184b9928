//! Times warm open+read+close of one file: `openread PATH ITERATIONS THREADS`.
//! Prints the mean time per operation in nanoseconds (wall time / operations per thread).
//! With ITERATIONS 1 it times one cold open+read+close.

use std::io::Read as _;
use std::time::Instant;

fn once(path: &str, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut f = std::fs::File::open(path).expect("open");
    f.read_to_end(buf).expect("read")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("PATH").clone();
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let threads: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut buf = Vec::with_capacity(1 << 20);
    let t0 = Instant::now();
    once(&path, &mut buf);
    if n == 1 {
        // cold: the caller made sure nothing read this file before
        println!("{}", t0.elapsed().as_nanos());
        return;
    }
    for _ in 0..n / 10 {
        once(&path, &mut buf);
    }
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || {
                let mut b = Vec::with_capacity(1 << 20);
                for _ in 0..n {
                    once(&p, &mut b);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("thread");
    }
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    println!("{ns:.0}");
}
