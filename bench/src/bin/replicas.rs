//! Measures two `secretd` replicas on one etcd (bench/etcd.sh):
//!
//! The user token comes from `NEURO_TOKEN` (never from the command line).
//!
//! - `replicas propagation URL_A URL_B N`: N times, a long-poll watch waits on B, a
//!   write goes through A, and the time from sending the write to A to B's watch answer is
//!   recorded (B's watch often answers before A's acknowledgement arrives, so the time from
//!   the acknowledgement would be about zero); prints p50/p99/max in ms.
//! - `replicas writes URL SECONDS CLIENTS`: CLIENTS writers overwrite their own key as
//!   fast as they can; prints writes/s and failures.
//! - `replicas gap URL SECONDS`: one writer writes every 10 ms; prints the longest time
//!   between two acknowledged writes (the outage a leader kill causes) and the failures.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Client;
use serde_json::{Value, json};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn write(c: &Client, url: &str, token: &str, key: &str, value: &str) -> Result<(), String> {
    let r = c
        .post(format!("{url}/api/v1/secrets"))
        .bearer_auth(token)
        .json(&json!({"key": key, "value": b64(value)}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().as_u16() == 201 {
        Ok(())
    } else {
        Err(format!("HTTP {}", r.status()))
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn propagation(a: &str, b: &str, token: &str, n: usize) {
    let c = Client::new();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let since: Value = c
            .get(format!("{b}/api/v1/secrets/watch"))
            .bearer_auth(token)
            .send()
            .await
            .expect("watch")
            .json()
            .await
            .expect("watch json");
        let since = since["revision"].as_u64().expect("revision");
        let (cb, bu, tk) = (c.clone(), b.to_owned(), token.to_owned());
        let watcher = tokio::spawn(async move {
            let r = cb
                .get(format!(
                    "{bu}/api/v1/secrets/watch?since={since}&timeout_s=10"
                ))
                .bearer_auth(&tk)
                .send()
                .await
                .expect("watch");
            let at = Instant::now();
            let v: Value = r.json().await.expect("watch json");
            (at, v)
        });
        // Let the watch reach B and wait there.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sent = Instant::now();
        write(&c, a, token, "propagated", &format!("v{i}"))
            .await
            .expect("write through A");
        let (seen, v) = watcher.await.expect("watcher");
        assert!(
            v["events"].as_array().is_some_and(|e| !e.is_empty()),
            "B's watch ended without the event: {v}"
        );
        lat.push(seen.saturating_duration_since(sent).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "propagation, write sent to A -> B's watch answers, {n} writes: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

async fn writes(url: &str, token: &str, secs: u64, clients: usize) {
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (url, token) = (url.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let c = Client::new();
                let (mut ok, mut failed, mut n) = (0u64, 0u64, 0u64);
                while Instant::now() < end {
                    n += 1;
                    match write(&c, &url, &token, &format!("w{i}"), &format!("value {n}")).await {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.expect("writer");
        ok += o;
        failed += f;
    }
    println!(
        "writes: {:.0} /s ({ok} acknowledged, {failed} failed, {clients} clients, {secs} s)",
        ok as f64 / secs as f64
    );
}

async fn gap(url: &str, token: &str, secs: u64) {
    let c = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let end = Instant::now() + Duration::from_secs(secs);
    let mut last_ok = Instant::now();
    let (mut worst, mut failed, mut ok) = (Duration::ZERO, 0u64, 0u64);
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        match write(&c, url, token, "gap", &format!("g{n}")).await {
            Ok(()) => {
                worst = worst.max(last_ok.elapsed());
                last_ok = Instant::now();
                ok += 1;
            }
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "longest time between two acknowledged writes: {:.0} ms ({ok} acknowledged, {failed} failed)",
        worst.as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: NEURO_TOKEN=... replicas propagation URL_A URL_B N | writes URL SECONDS CLIENTS | gap URL SECONDS";
    let Ok(token) = std::env::var("NEURO_TOKEN") else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let num = |s: &String| s.parse::<u64>().expect(usage);
    match a.get(1).map(String::as_str) {
        Some("propagation") if a.len() == 5 => {
            propagation(&a[2], &a[3], &token, num(&a[4]) as usize).await
        }
        Some("writes") if a.len() == 5 => {
            writes(&a[2], &token, num(&a[3]), num(&a[4]) as usize).await
        }
        Some("gap") if a.len() == 4 => gap(&a[2], &token, num(&a[3])).await,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
