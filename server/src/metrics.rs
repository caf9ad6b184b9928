//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4, written by hand): requests
//! by route template and status, request and store operation latency, open connections,
//! requests and watches in flight, console sessions, the audit queue.
//!
//! Labels never hold a secret name, user name or raw path: a request is counted under the
//! route template it matched (`/api/v1/secrets/:owner/:key`), `unmatched` otherwise, and its
//! method under one of the standard names or `other`, so a client cannot grow the label set.
//! The counters are process-wide (one `secretd` per process): `global()`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::sync::lock;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";
/// The route of the change feed: its requests in flight are the watchers.
pub const WATCH_ROUTE: &str = "/api/v1/secrets/watch";
/// The console's session cookie (`console::session`): a response that sets it opens a
/// session, one that clears it ends one.
const SESSION_COOKIE: &str = "neuro_session=";

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); those above the last bound only in `count`.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (b, n) in BUCKETS.iter().zip(self.buckets) {
            acc += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct RouteStats {
    in_flight: i64,
    /// `(method, status) -> count`
    statuses: Vec<(&'static str, u16, u64)>,
    /// `method -> latency`
    latency: Vec<(&'static str, Histogram)>,
}

#[derive(Debug, Default)]
struct StoreStats {
    latency: Histogram,
    errors: u64,
}

/// Every counter of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<HashMap<String, RouteStats>>,
    store: Mutex<HashMap<&'static str, StoreStats>>,
    connections_open: AtomicI64,
    connections_accepted: AtomicU64,
    sessions_created: AtomicU64,
    sessions_ended: AtomicU64,
    audit_lines_written: AtomicU64,
    value_cache_hits: AtomicU64,
    value_cache_misses: AtomicU64,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// The method's label: standard methods by name, anything else `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A route template as a label: `{owner}` becomes `:owner`, since some text parsers end a
/// label set at the first `}` even inside quotes.
fn route_label(template: &str) -> String {
    escape(&template.replace('{', ":").replace('}', ""))
}

/// Escapes a label value (`\`, `"`, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A connection was accepted; the guard counts it open until dropped.
    pub fn connection(&'static self) -> ConnectionGuard {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self)
    }

    /// One store operation and how long it took.
    pub fn store_op(&self, op: &'static str, took: Duration, failed: bool) {
        let mut s = lock(&self.store);
        let e = s.entry(op).or_default();
        e.latency.observe(took);
        e.errors += u64::from(failed);
    }

    /// A secret read found its value opened already (`hit`) or opened it.
    pub fn value_cache(&self, hit: bool) {
        let c = if hit {
            &self.value_cache_hits
        } else {
            &self.value_cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Audit lines written to the file.
    pub fn audit_written(&self, lines: u64) {
        self.audit_lines_written.fetch_add(lines, Ordering::Relaxed);
    }

    fn begin(&'static self, route: &MatchedPathOr) -> RequestGuard {
        let mut r = lock(&self.routes);
        match r.get_mut(route.as_str()) {
            Some(s) => s.in_flight += 1,
            None => {
                r.insert(
                    route.as_str().to_owned(),
                    RouteStats {
                        in_flight: 1,
                        ..Default::default()
                    },
                );
            }
        }
        RequestGuard {
            metrics: self,
            route: route.clone(),
        }
    }

    fn end(&self, route: &str, method: &'static str, status: u16, took: Duration) {
        let mut r = lock(&self.routes);
        let Some(s) = r.get_mut(route) else { return };
        match s
            .statuses
            .iter_mut()
            .find(|(m, st, _)| *m == method && *st == status)
        {
            Some(e) => e.2 += 1,
            None => s.statuses.push((method, status, 1)),
        }
        match s.latency.iter_mut().find(|(m, _)| *m == method) {
            Some(h) => h.1.observe(took),
            None => {
                let mut h = Histogram::default();
                h.observe(took);
                s.latency.push((method, h));
            }
        }
    }

    /// The text exposition of every metric; `audit_queue` is the audit log's queue depth now,
    /// `audit_writable` whether it takes lines, `values` the value cache's entries and bytes.
    pub fn render(
        &self,
        audit_queue: usize,
        audit_writable: bool,
        values: (usize, usize),
    ) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        let routes = lock(&self.routes);
        let mut names: Vec<&String> = routes.keys().collect();
        names.sort();

        head(
            o,
            "secretd_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status",
        );
        for n in &names {
            let mut st = routes[*n].statuses.clone();
            st.sort();
            for (m, status, c) in st {
                let _ = writeln!(
                    o,
                    "secretd_http_requests_total{{route=\"{}\",method=\"{m}\",status=\"{status}\"}} {c}",
                    route_label(n)
                );
            }
        }
        head(
            o,
            "secretd_http_request_duration_seconds",
            "histogram",
            "Time from the request head to the response head, by route template and method",
        );
        for n in &names {
            let mut lat: Vec<&(&str, Histogram)> = routes[*n].latency.iter().collect();
            lat.sort_by_key(|(m, _)| *m);
            for (m, h) in lat {
                let labels = format!("route=\"{}\",method=\"{m}\"", route_label(n));
                h.render(o, "secretd_http_request_duration_seconds", &labels);
            }
        }
        head(
            o,
            "secretd_http_requests_in_flight",
            "gauge",
            "Requests whose handler is running, by route template",
        );
        for n in &names {
            let _ = writeln!(
                o,
                "secretd_http_requests_in_flight{{route=\"{}\"}} {}",
                route_label(n),
                routes[*n].in_flight
            );
        }
        let watchers = routes.get(WATCH_ROUTE).map_or(0, |s| s.in_flight);
        drop(routes);
        head(
            o,
            "secretd_watchers",
            "gauge",
            "Watches of the change feed waiting",
        );
        let _ = writeln!(o, "secretd_watchers {watchers}");

        let store = lock(&self.store);
        let mut ops: Vec<&&str> = store.keys().collect();
        ops.sort();
        head(
            o,
            "secretd_store_operation_duration_seconds",
            "histogram",
            "Store operations, by operation",
        );
        for op in &ops {
            store[**op].latency.render(
                o,
                "secretd_store_operation_duration_seconds",
                &format!("op=\"{op}\""),
            );
        }
        head(
            o,
            "secretd_store_errors_total",
            "counter",
            "Store operations that failed, by operation",
        );
        for op in &ops {
            let _ = writeln!(
                o,
                "secretd_store_errors_total{{op=\"{op}\"}} {}",
                store[**op].errors
            );
        }
        drop(store);

        let simple: [(&str, &str, &str, String); 11] = [
            (
                "secretd_connections_open",
                "gauge",
                "Client connections open",
                self.connections_open.load(Ordering::Relaxed).to_string(),
            ),
            (
                "secretd_connections_accepted_total",
                "counter",
                "Client connections accepted",
                self.connections_accepted
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "secretd_console_sessions_created_total",
                "counter",
                "Console sessions opened (log-ins)",
                self.sessions_created.load(Ordering::Relaxed).to_string(),
            ),
            (
                "secretd_console_sessions_ended_total",
                "counter",
                "Console sessions ended by a log-out",
                self.sessions_ended.load(Ordering::Relaxed).to_string(),
            ),
            (
                "secretd_audit_queue_depth",
                "gauge",
                "Audit lines queued or reserved, not yet written",
                audit_queue.to_string(),
            ),
            (
                "secretd_audit_writable",
                "gauge",
                "1 while the audit log takes lines, 0 while it fails closed",
                u8::from(audit_writable).to_string(),
            ),
            (
                "secretd_audit_lines_written_total",
                "counter",
                "Audit lines written to the file",
                self.audit_lines_written.load(Ordering::Relaxed).to_string(),
            ),
            (
                "secretd_value_cache_hits_total",
                "counter",
                "Secret reads answered with a value opened (decrypted) less than 30 s before",
                self.value_cache_hits.load(Ordering::Relaxed).to_string(),
            ),
            (
                "secretd_value_cache_misses_total",
                "counter",
                "Secret reads that decrypted their value",
                self.value_cache_misses.load(Ordering::Relaxed).to_string(),
            ),
            (
                "secretd_value_cache_entries",
                "gauge",
                "Values kept opened (--value-cache)",
                values.0.to_string(),
            ),
            (
                "secretd_value_cache_bytes",
                "gauge",
                "Bytes of opened values kept, plaintext and base64",
                values.1.to_string(),
            ),
        ];
        for (name, kind, help, v) in simple {
            head(o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
        out
    }
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// Counts a connection open until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(&'static Metrics);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The route template a request matched, or `UNMATCHED`.
#[derive(Debug, Clone)]
enum MatchedPathOr {
    Matched(MatchedPath),
    Unmatched,
}

impl MatchedPathOr {
    fn as_str(&self) -> &str {
        match self {
            MatchedPathOr::Matched(p) => p.as_str(),
            MatchedPathOr::Unmatched => UNMATCHED,
        }
    }
}

/// Counts a request in flight on its route until dropped (the handler finished or was
/// dropped).
struct RequestGuard {
    metrics: &'static Metrics,
    route: MatchedPathOr,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut r = lock(&self.metrics.routes);
        if let Some(s) = r.get_mut(self.route.as_str()) {
            s.in_flight -= 1;
        }
    }
}

/// The middleware: counts each request by route template, method and status, and times it
/// until its response head is ready.
pub async fn track(req: Request, next: Next) -> Response {
    let m = global();
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => MatchedPathOr::Matched(p.clone()),
        None => MatchedPathOr::Unmatched,
    };
    let method = method_label(req.method());
    let start = Instant::now();
    let guard = m.begin(&route);
    let resp = next.run(req).await;
    m.end(
        route.as_str(),
        method,
        resp.status().as_u16(),
        start.elapsed(),
    );
    drop(guard);
    for c in resp.headers().get_all(header::SET_COOKIE) {
        let Some(v) = c.to_str().ok().and_then(|v| {
            let v = v.strip_prefix("__Host-").unwrap_or(v);
            v.strip_prefix(SESSION_COOKIE)
        }) else {
            continue;
        };
        if v.starts_with(';') || v.contains("Max-Age=0") {
            m.sessions_ended.fetch_add(1, Ordering::Relaxed);
        } else {
            m.sessions_created.fetch_add(1, Ordering::Relaxed);
        }
        // One session a response: a refusal of two cookies clears them at every path.
        break;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let mut h = Histogram::default();
        for ms in [0, 3, 3, 700, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "op=\"get\"");
        assert!(
            out.contains("x_bucket{op=\"get\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"get\",le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{op=\"get\",le=\"10\"} 4\n"), "{out}");
        assert!(
            out.contains("x_bucket{op=\"get\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("x_count{op=\"get\"} 5\n"), "{out}");
    }

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        let odd = Method::from_bytes(b"SECRETNAME").unwrap_or(Method::GET);
        assert_eq!(method_label(&odd), "other");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(
            route_label("/api/v1/secrets/{owner}/{key}"),
            "/api/v1/secrets/:owner/:key"
        );
    }
}
