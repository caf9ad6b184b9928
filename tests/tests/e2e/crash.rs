//! Crash safety: `kill -9` during a stream of writes loses no acknowledged write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use crate::harness::{Server, http};

const KEYS: usize = 20;

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let mut srv = Server::start();
    let tok = srv.add_users(&["alice"]).remove(0);
    let addr = srv.addr.clone();
    let acked: Arc<Mutex<HashMap<usize, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (addr, tok, acked, stop) = (addr.clone(), tok.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                // Each key belongs to one writer, which writes its values in increasing order.
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let k = (n as usize % (KEYS / 2)) * 2 + w;
                    let v = base64::engine::general_purpose::STANDARD.encode(n.to_string());
                    let body = format!(r#"{{"key":"k{k}","value":"{v}"}}"#);
                    match http(
                        &addr,
                        "POST",
                        "/api/v1/secrets",
                        Some(&tok),
                        Some(("application/json", body.as_bytes())),
                    ) {
                        Ok(r) if r.status == 201 => {
                            acked.lock().unwrap().insert(k, n);
                        }
                        _ => return n, // the server is gone: this write may or may not be in
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    srv.kill9();
    stop.store(true, Ordering::Relaxed);
    let last: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KEYS / 2,
        "too few writes acknowledged to test anything: {acked:?}"
    );

    srv.restart();
    for (k, n) in &acked {
        let r = srv.get(&tok, &format!("/api/v1/secrets/alice/k{k}"));
        assert_eq!(
            r.status, 200,
            "k{k}: acknowledged write {n} lost: {}",
            r.body
        );
        let b64 = r.json()["value"].as_str().unwrap().to_owned();
        let got: u64 = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
        .parse()
        .unwrap();
        // Either the acknowledged value or the one in flight at the kill, never older.
        assert!(
            got == *n || got == last[k % 2],
            "k{k}: found {got}, acknowledged {n}"
        );
    }
    let total: u64 = acked.values().sum();
    eprintln!(
        "{} keys checked, {total} acknowledged write numbers",
        acked.len()
    );
}
