//! A bounded load test of one secretd: `load URL ADMIN_TOKEN SECONDS CLIENTS`.
//!
//! CLIENTS concurrent clients (one connection each), spread over 20 users, mix reads (40%),
//! writes (20%), resolves of 10 URIs (20%), shares and revocations (10%) and listings (10%)
//! for SECONDS. Each client writes only its own keys, so the last acknowledged value of every
//! key is known; at the end every key is read back and compared. Exits 1 on any 5xx, any
//! transport error, or any acknowledged write that did not survive. Prints counts and
//! latency percentiles per kind of request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const USERS: usize = 20;
const KEYS_PER_CLIENT: usize = 4;
const KINDS: [&str; 5] = ["read", "write", "resolve", "share", "list"];

#[derive(Default)]
struct Stats {
    /// Latencies in microseconds, per kind.
    lat: HashMap<&'static str, Vec<u32>>,
    /// Status counts, per kind.
    codes: HashMap<(&'static str, u16), u64>,
    transport_errors: u64,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn call(
    http: &Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Vec<u8>), reqwest::Error> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let st = resp.status();
    Ok((st, resp.bytes().await?.to_vec()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, admin, secs, clients] = args.as_slice() else {
        eprintln!("usage: load URL ADMIN_TOKEN SECONDS CLIENTS");
        std::process::exit(2);
    };
    let secs: u64 = secs.parse().expect("SECONDS");
    let clients: usize = clients.parse().expect("CLIENTS");
    let api = format!("{base}/api/v1");
    let setup = Client::new();
    let mut tokens = Vec::new();
    let run_id = std::process::id();
    for u in 0..USERS {
        let name = format!("load{run_id}u{u}");
        let (st, body) = call(
            &setup,
            reqwest::Method::POST,
            format!("{api}/admin/users"),
            admin,
            Some(json!({"name": name})),
        )
        .await
        .expect("create user");
        assert_eq!(
            st,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body).expect("json");
        tokens.push((name, v["token"].as_str().expect("token").to_owned()));
    }
    let tokens = Arc::new(tokens);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (tokens, stats, api) = (tokens.clone(), stats.clone(), api.clone());
        tasks.push(tokio::spawn(async move {
            let http = Client::builder().pool_max_idle_per_host(1).build().expect("client");
            let me = c % USERS;
            let (user, token) = tokens[me].clone();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((c as u64 + 1) * 0x1000_0001));
            // key -> last acknowledged value
            let mut acked: HashMap<String, Vec<u8>> = HashMap::new();
            let mut local = Stats::default();
            let mut n = 0u64;
            for k in 0..KEYS_PER_CLIENT {
                let key = format!("c{c}k{k}");
                let value = format!("{key}-v0").into_bytes();
                let r = call(&http, reqwest::Method::POST, format!("{api}/secrets"), &token,
                    Some(json!({"key": key, "value": b64(&value)}))).await;
                assert!(matches!(r, Ok((StatusCode::CREATED, _))), "seeding {key}: {r:?}");
                acked.insert(key, value);
            }
            while Instant::now() < deadline {
                n += 1;
                let roll = rng.below(10);
                let kind = match roll { 0..=3 => 0, 4..=5 => 1, 6..=7 => 2, 8 => 3, _ => 4 };
                let key = format!("c{c}k{}", rng.below(KEYS_PER_CLIENT));
                let t0 = Instant::now();
                let r = match kind {
                    0 => call(&http, reqwest::Method::GET, format!("{api}/secrets/{user}/{key}"), &token, None).await,
                    1 => {
                        // Values of 16 bytes to 64 KiB.
                        let len = 16usize << rng.below(13);
                        let mut value = format!("{key}-v{n}-").into_bytes();
                        value.resize(len.max(value.len()), b'x');
                        let r = call(&http, reqwest::Method::POST, format!("{api}/secrets"), &token,
                            Some(json!({"key": key, "value": b64(&value)}))).await;
                        if matches!(r, Ok((StatusCode::CREATED, _))) {
                            acked.insert(key.clone(), value);
                        }
                        r
                    }
                    2 => {
                        let uris: Vec<String> = (0..10)
                            .map(|i| {
                                let (o, _) = &tokens[(me + i) % USERS];
                                let owner_client = (c + i) % clients;
                                format!("secret:/{o}/c{owner_client}k{}", rng.below(KEYS_PER_CLIENT))
                            })
                            .collect();
                        call(&http, reqwest::Method::POST, format!("{api}/secrets/resolve"), &token,
                            Some(json!({"uris": uris}))).await
                    }
                    3 => {
                        let (other, _) = &tokens[(me + 1 + rng.below(USERS - 1)) % USERS];
                        let uri = format!("secret:{key}");
                        if rng.below(2) == 0 {
                            call(&http, reqwest::Method::POST, format!("{api}/users/{other}/permissions"), &token,
                                Some(json!([{"uri": uri, "action": "read"}]))).await
                        } else {
                            call(&http, reqwest::Method::DELETE,
                                format!("{api}/users/{other}/permissions?uri=secret%3A{key}"), &token, None).await
                        }
                    }
                    _ => call(&http, reqwest::Method::GET, format!("{api}/secrets"), &token, None).await,
                };
                let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let kind = KINDS[kind];
                match r {
                    Ok((st, _)) => {
                        local.lat.entry(kind).or_default().push(us);
                        *local.codes.entry((kind, st.as_u16())).or_default() += 1;
                    }
                    Err(e) => {
                        eprintln!("client {c}: {kind}: {e}");
                        local.transport_errors += 1;
                    }
                }
            }
            // Every acknowledged write reads back as the last value acknowledged.
            let mut lost = 0;
            for (key, want) in &acked {
                match call(&http, reqwest::Method::GET, format!("{api}/secrets/{user}/{key}"), &token, None).await {
                    Ok((StatusCode::OK, body)) => {
                        let v: Value = serde_json::from_slice(&body).expect("json");
                        let got = base64::engine::general_purpose::STANDARD
                            .decode(v["value"].as_str().unwrap_or(""))
                            .unwrap_or_default();
                        if &got != want {
                            eprintln!("client {c}: {key}: the last acknowledged write is not what reads back");
                            lost += 1;
                        }
                    }
                    other => {
                        eprintln!("client {c}: {key}: read back failed: {other:?}");
                        lost += 1;
                    }
                }
            }
            let mut s = stats.lock().await;
            for (k, v) in local.lat {
                s.lat.entry(k).or_default().extend(v);
            }
            for (k, v) in local.codes {
                *s.codes.entry(k).or_default() += v;
            }
            s.transport_errors += local.transport_errors;
            (acked.len(), lost)
        }));
    }
    let (mut keys, mut lost) = (0, 0);
    for t in tasks {
        let (k, l) = t.await.expect("client task");
        keys += k;
        lost += l;
    }
    let s = stats.lock().await;
    let mut total = 0u64;
    let mut server_errors = 0u64;
    println!("{clients} clients, {secs} s, {USERS} users");
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9}  statuses",
        "kind", "requests", "p50 ms", "p99 ms", "max ms"
    );
    for kind in KINDS {
        let mut l = s.lat.get(kind).cloned().unwrap_or_default();
        l.sort_unstable();
        let pct = |p: f64| {
            l.get(((l.len() as f64 - 1.0) * p) as usize)
                .map_or(0.0, |v| *v as f64 / 1000.0)
        };
        let mut codes: Vec<(u16, u64)> = s
            .codes
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, c), n)| (*c, *n))
            .collect();
        codes.sort();
        server_errors += codes
            .iter()
            .filter(|(c, _)| *c >= 500)
            .map(|(_, n)| n)
            .sum::<u64>();
        total += l.len() as u64;
        println!(
            "{kind:<8} {:>9} {:>9.2} {:>9.2} {:>9.2}  {codes:?}",
            l.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    println!(
        "total {total} requests, {:.0} req/s; transport errors {}; 5xx {server_errors}; keys checked {keys}, lost writes {lost}",
        total as f64 / secs as f64,
        s.transport_errors
    );
    if server_errors > 0 || s.transport_errors > 0 || lost > 0 {
        std::process::exit(1);
    }
}
