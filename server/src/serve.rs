//! The accept loop: HTTP/1.1 over TCP or TLS, with a header-read timeout, an idle timeout, a cap
//! on open connections and graceful shutdown.
//!
//! Why our own loop rather than `axum::serve`: a client that opens connections and never
//! finishes its headers must not be able to hold file descriptors until the process runs out and
//! stops answering everyone. So every connection is counted (a semaphore of `max_connections`
//! slots, sized below the open-file limit), closed when it stays silent (`idle_timeout`) or takes
//! too long over its request head (`header_timeout`, which also bounds the TLS handshake), and,
//! when the cap is reached, the connection idle the longest is closed to make room for the new
//! one. Evicting rather than refusing the newcomer is what keeps the service answering while an
//! attacker holds every slot: a real client sends its request at once, so it is never the
//! longest idle; shedding the newcomer instead would lock everyone out until the idle ones time
//! out. A connection with a request in flight is never evicted; when every slot is busy the
//! newcomer is closed at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::sync::lock;

/// File descriptors kept for everything but client connections: stdio, the listener, the
/// runtime's epoll and wakers, the signal pipe, the store, the audit log, the TLS files read at
/// start, and the connections waiting for an evicted one's slot (`PENDING`).
pub const FD_RESERVE: u64 = 64;
/// Accepted connections that may wait at once for the slot of the one they evicted.
const PENDING: usize = 16;
/// How long such a connection waits before it is closed instead.
const ADMIT_WAIT: Duration = Duration::from_secs(1);
/// The fewest connection slots the service accepts to run with.
const MIN_CONNECTIONS: usize = 16;

/// The connection limits (`secretd --max-connections`, `--header-timeout`, `--idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open client connections at most.
    pub max_connections: usize,
    /// From accept (or the end of the previous response) to the end of the request head, TLS
    /// handshake included.
    pub header_timeout: Duration,
    /// A connection without a request in flight that sends and receives nothing for this long
    /// is closed; so is one whose handler waits this long for a request body that does not come.
    pub idle_timeout: Duration,
    /// After SIGTERM or SIGINT, how long requests in flight may take to finish.
    pub grace: Duration,
}

/// Raises the soft open-file limit to the hard one and sizes the connection cap below it:
/// `min(requested, limit - FD_RESERVE)`. Returns the cap and the limit in force.
pub fn connection_cap(requested: usize) -> Result<(usize, u64), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    let limit = if hard > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                // An unlimited hard limit cannot be the soft one (the kernel caps it at
                // fs.nr_open): keep what we have.
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    if room < MIN_CONNECTIONS {
        return Err(format!(
            "the open-file limit is {limit}; secretd needs at least {} (ulimit -n)",
            FD_RESERVE + MIN_CONNECTIONS as u64
        ));
    }
    Ok((requested.min(room).max(MIN_CONNECTIONS), limit))
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets requests
/// in flight finish within `limits.grace` and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        router,
        tls,
        limits,
        registry: Registry::default(),
        stop: stop_rx,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let pending = Arc::new(Semaphore::new(PENDING));
    let mut shed_log = Throttled::default();
    let mut accept_log = Throttled::default();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    on_accept_error(&e, &shared.registry, &mut accept_log).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            tokio::spawn(serve_conn(shared.clone(), tcp, slot));
            continue;
        }
        // At the cap: close the connection idle the longest and take over its slot, handed
        // over by its task once its socket is closed (so no later newcomer can take it first).
        // At most PENDING newcomers wait for a slot; the loop waits for one of them to finish,
        // and the kernel's queue holds the next clients meanwhile.
        let waiting = tokio::time::timeout(ADMIT_WAIT, pending.clone().acquire_owned()).await;
        let handoff = match waiting {
            Ok(Ok(w)) => shared.registry.evict_longest_idle().map(|rx| (w, rx)),
            _ => None,
        };
        let Some((waiting, handoff)) = handoff else {
            shed_log.warn(|n| {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    closed = n,
                    "every connection slot is busy; closing new connections"
                );
            });
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let slot = tokio::time::timeout(ADMIT_WAIT, handoff).await;
            drop(waiting);
            match slot {
                Ok(Ok(slot)) => serve_conn(shared, tcp, slot).await,
                _ => tracing::debug!("the evicted connection did not close in time"),
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    // Every connection task holds a slot until it ends; past the grace each one drops its
    // connection by itself, so this wait is a backstop.
    let backstop = limits.grace + Duration::from_secs(1);
    if tokio::time::timeout(backstop, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; exiting anyway");
    }
    Ok(())
}

/// Accept fails for reasons that concern one connection (it was reset while queued) and for
/// reasons that concern the process (out of file descriptors or memory). Neither may stop the
/// loop, and the second must not make it spin: the queued connection stays readable.
async fn on_accept_error(e: &io::Error, registry: &Registry, log: &mut Throttled) {
    use nix::errno::Errno;
    let errno = e.raw_os_error().map(Errno::from_raw);
    match errno {
        Some(
            Errno::ECONNABORTED
            | Errno::ECONNRESET
            | Errno::EINTR
            | Errno::EAGAIN
            | Errno::EPROTO
            | Errno::EPERM,
        ) => {}
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => {
            log.warn(|n| tracing::warn!(error = %e, times = n, "cannot accept a connection"));
            // Closing the longest idle connection frees a descriptor; its slot goes back.
            drop(registry.evict_longest_idle());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        _ => {
            log.warn(|n| tracing::error!(error = %e, times = n, "accepting a connection"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A warning printed at most every 10 s, with how many times it happened meanwhile.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn warn(&mut self, f: impl FnOnce(u64)) {
        self.count += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            f(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

struct Shared {
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    registry: Registry,
    stop: watch::Receiver<bool>,
}

/// The open connections, for eviction.
#[derive(Debug)]
struct Registry {
    epoch: Instant,
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn add(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            last_io: AtomicU64::new(self.now()),
            body_waiting: AtomicBool::new(false),
            state: Mutex::new(ConnState::default()),
            close: Notify::new(),
        });
        lock(&self.conns).insert(conn.id, conn.clone());
        conn
    }

    fn remove(&self, conn: &Conn) {
        lock(&self.conns).remove(&conn.id);
    }

    /// Marks the connection without a request in flight that has been silent the longest as
    /// closing and wakes its task, which hands its slot over through the returned channel once
    /// its socket is closed. `None` when every connection is busy.
    fn evict_longest_idle(&self) -> Option<oneshot::Receiver<OwnedSemaphorePermit>> {
        let conns = lock(&self.conns);
        let mut victim: Option<(&Arc<Conn>, u64)> = None;
        for c in conns.values() {
            let st = lock(&c.state);
            if st.busy || st.closing {
                continue;
            }
            let t = c.last_io.load(Ordering::Relaxed);
            if victim.is_none_or(|(_, best)| t < best) {
                victim = Some((c, t));
            }
        }
        let (c, _) = victim?;
        // Still under the registry lock, and the state lock orders this against a request
        // starting on it: either the request starts first (and `busy` protects it) or it finds
        // `closing` and is not served.
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&c.state);
            st.closing = true;
            st.handoff = Some(tx);
        }
        c.close.notify_one();
        tracing::debug!(conn = c.id, "evicting the longest idle connection");
        Some(rx)
    }
}

/// One client connection, as the accept loop sees it.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// When bytes last went either way, or a request started or ended (ms since `epoch`).
    last_io: AtomicU64,
    /// The handler waits for request body bytes that have not come.
    body_waiting: AtomicBool,
    state: Mutex<ConnState>,
    /// Wakes the task to close the connection (eviction).
    close: Notify,
}

#[derive(Debug, Default)]
struct ConnState {
    /// A request is in flight.
    busy: bool,
    /// Requests started on this connection.
    started: u64,
    /// Evicted, timed out or shutting down: no new request is served.
    closing: bool,
    /// Where the slot goes when the connection is closed (to the newcomer that evicted it).
    handoff: Option<oneshot::Sender<OwnedSemaphorePermit>>,
}

impl Conn {
    /// Called by the connection task when its idle timer fires: closes (returns `None`) when
    /// the connection has been silent for `idle` without a request in flight (or with its
    /// handler stuck on a request body), else returns when to look again.
    fn idle_check(&self, registry: &Registry, idle: Duration) -> Option<tokio::time::Instant> {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now = registry.now();
        let mut st = lock(&self.state);
        let stuck = !st.busy || self.body_waiting.load(Ordering::Relaxed);
        let silent_for = now.saturating_sub(self.last_io.load(Ordering::Relaxed));
        if stuck && silent_for >= idle_ms {
            st.closing = true;
            return None;
        }
        let wait = if stuck { idle_ms - silent_for } else { idle_ms };
        Some(tokio::time::Instant::now() + Duration::from_millis(wait.max(1)))
    }

    /// Whether no request has started on the connection yet (none is in flight).
    fn unstarted(&self) -> bool {
        let st = lock(&self.state);
        !st.busy && st.started == 0
    }

    /// Whether dropping the connection outright loses nothing: no request has started on it
    /// yet, or its one request waits for a body the client does not send.
    fn droppable(&self) -> bool {
        let st = lock(&self.state);
        (!st.busy && st.started == 0) || (st.busy && self.body_waiting.load(Ordering::Relaxed))
    }
}

/// Removes the connection from the registry when its task ends, however it ends.
struct Registered<'a> {
    registry: &'a Registry,
    conn: Arc<Conn>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.remove(&self.conn);
    }
}

async fn serve_conn(shared: Arc<Shared>, tcp: TcpStream, slot: OwnedSemaphorePermit) {
    let _open = crate::metrics::global().connection();
    let conn = shared.registry.add();
    {
        let _registered = Registered {
            registry: &shared.registry,
            conn: conn.clone(),
        };
        serve_socket(&shared, &conn, tcp).await;
    }
    // The socket is closed by now: its slot goes to whoever evicted it, or back to the pool.
    let handoff = lock(&conn.state).handoff.take();
    if let Some(tx) = handoff {
        let _ = tx.send(slot);
    }
}

async fn serve_socket(shared: &Shared, conn: &Arc<Conn>, tcp: TcpStream) {
    let mut peer = Peer {
        addr: tcp.peer_addr().ok(),
        tls: false,
    };
    let io = Metered {
        inner: tcp,
        conn: conn.clone(),
        epoch: shared.registry.epoch,
    };
    let Some(acceptor) = shared.tls.clone() else {
        return serve_http(shared, conn, io, peer).await;
    };
    let mut stop = shared.stop.clone();
    let tls = tokio::select! {
        r = tokio::time::timeout(shared.limits.header_timeout, acceptor.accept(io)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
        () = conn.close.notified() => return,
        _ = stop.wait_for(|s| *s) => return,
    };
    peer.tls = true;
    serve_http(shared, conn, tls, peer).await;
}

/// Where a request came from, in its extensions: the client's address (the console's
/// per-address log-in limit) and whether it arrived over TLS (its cookie's `Secure`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: Option<std::net::SocketAddr>,
    pub tls: bool,
}

async fn serve_http<S>(shared: &Shared, conn: &Arc<Conn>, io: S, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits;
    let service = Tracked {
        inner: TowerToHyperService::new(shared.router.clone()),
        conn: conn.clone(),
        epoch: shared.registry.epoch,
        peer,
    };
    let hconn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(hconn);
    let mut stop = shared.stop.clone();
    let mut idle_at = tokio::time::Instant::now() + limits.idle_timeout;
    let mut stopping = false;
    loop {
        tokio::select! {
            r = hconn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            () = conn.close.notified() => break,
            _ = stop.wait_for(|s| *s) => {
                lock(&conn.state).closing = true;
                stopping = true;
                break;
            }
            () = tokio::time::sleep_until(idle_at) => {
                match conn.idle_check(&shared.registry, limits.idle_timeout) {
                    Some(next) => idle_at = next,
                    None => break,
                }
            }
        }
    }
    // At shutdown, a request in flight is finished within the grace period even while its
    // body is still arriving; only a connection that never started a request is dropped.
    let drop_now = if stopping {
        conn.unstarted()
    } else {
        conn.droppable()
    };
    if drop_now {
        return;
    }
    // A request was served here: let hyper finish the response in flight, if any, and close.
    hconn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.grace, hconn).await;
}

/// The connection's socket, noting when bytes last went either way.
struct Metered<S> {
    inner: S,
    conn: Arc<Conn>,
    epoch: Instant,
}

impl<S> Metered<S> {
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.conn.last_io.store(now, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, with each request marked in flight on its connection.
struct Tracked {
    inner: TowerToHyperService<Router>,
    conn: Arc<Conn>,
    epoch: Instant,
    peer: Peer,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let Some(guard) = Busy::begin(&self.conn, self.epoch) else {
            // Evicted or shutting down between the request head and here.
            return Box::pin(async {
                let mut r = Response::new(Body::from(
                    "{\"error\":\"the service is closing this connection\"}",
                ));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
                Ok(r)
            });
        };
        let mut req = req.map(|inner| {
            Body::new(WatchedBody {
                inner,
                conn: self.conn.clone(),
            })
        });
        req.extensions_mut().insert(self.peer);
        let fut = hyper::service::Service::call(&self.inner, req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// A request in flight on a connection; dropped when the handler's future completes or is
/// dropped.
struct Busy {
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Busy {
    fn begin(conn: &Arc<Conn>, epoch: Instant) -> Option<Self> {
        let mut st = lock(&conn.state);
        if st.closing {
            return None;
        }
        st.busy = true;
        st.started += 1;
        let g = Self {
            conn: conn.clone(),
            epoch,
        };
        g.touch();
        Some(g)
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.conn.last_io.store(now, Ordering::Relaxed);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut st = lock(&self.conn.state);
        st.busy = false;
        self.conn.body_waiting.store(false, Ordering::Relaxed);
        self.touch();
    }
}

/// The request body, noting when the handler waits for bytes the client has not sent.
struct WatchedBody {
    inner: Incoming,
    conn: Arc<Conn>,
}

impl hyper::body::Body for WatchedBody {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        self.conn
            .body_waiting
            .store(r.is_pending(), Ordering::Relaxed);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
