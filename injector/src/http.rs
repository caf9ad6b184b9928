//! The one request secret-inject makes: a blocking `POST /api/v1/secrets/resolve` through
//! ureq (HTTP/1.1 on the calling thread, no async runtime), plain for `http://` and over
//! rustls ([`crate::tls`], through [`TlsConnector`]) for `https://`. The service's URL is
//! ours to check ([`parse_url`]); the HTTP framing is ureq's.
//!
//! Answers are read the way `secrets_client::Client` reads them
//! ([`secrets_client::answer`]), and failures map to the same `ClientError`s: refused,
//! reset or timed out is `Unavailable` (retried); an answer that is not HTTP, or a TLS
//! handshake that fails on the certificate or the protocol, is `Incompatible` (not retried).
//! Unlike `Client`, it reads at most `MAX_HEAD` bytes of head and `MAX_ANSWER` bytes of body
//! however long the answer says it is or goes on, follows no redirect, asks for no
//! compression and decodes none, and refuses an answer whose length is ambiguous: a hostile
//! service cannot make it grow, nor choose which of its bytes are the answer.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use secrets_client::{ClientError, answer, not_http};
use secrets_core::Token;
use secrets_core::api::{ResolveRequest, ResolveResponse};
use ureq::config::AutoHeaderValue;
use ureq::http::{HeaderValue, header};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, TcpConnector,
    Transport, TransportAdapter,
};
use zeroize::{Zeroize as _, Zeroizing};

/// The most bytes of an answer's head, its final empty line included (ureq's
/// `max_response_header_size`; a head must also fit its input buffer, 128 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// The most bytes of one answer's body, after its chunked framing is taken off; a
/// `Content-Length` that says more is refused before its body is read.
///
/// The largest answer the service gives is 16 MiB of values (`MAX_RESOLVE_BYTES` of the
/// server's resolve) as base64 (x 4/3: 21.3 MiB) in at most 1,000 results (`MAX_RESOLVE`),
/// each under 2 KiB besides its value (two URIs of at most 390 bytes, the status, the
/// version, an error text): 23.3 MiB of JSON; 32 MiB leaves 37% to spare. Chunk-size lines
/// are not counted: ureq reads them through its fixed input buffer and refuses one longer
/// than 20 bytes before its `;`. Whatever a service sends, reading it costs at most about
/// this much memory (twice in the worst case, while the body grows into a larger
/// allocation), never an amount the service chooses.
const MAX_ANSWER: usize = 32 * 1024 * 1024;
/// ureq's output buffer, of which a request takes one piece: the resolve request is under
/// 1 KiB of head and about 40 bytes a URI of body. ureq's default (128 KiB, as its input
/// buffer's) is zeroed at each start: 32 page faults, a tenth of the wrapper's.
const OUTPUT_BUFFER: usize = 16 * 1024;
/// How long a connection may take, at most (as `Client`'s connect timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the service is: an IP address, or a name resolved at each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// An `http(s)://HOST[:PORT][/PREFIX]` service, authenticated with one token.
#[derive(Debug)]
pub struct Service {
    base: String,
    /// `{base}/api/v1/secrets/resolve`.
    uri: String,
    token: Token,
    tls: bool,
    agent: ureq::Agent,
}

/// The parts of a service URL: (https, host, port, authority, prefix); `None` when it is not
/// `http(s)://HOST[:PORT][/PREFIX]` with a host that is an IP address (v6 in brackets) or a
/// DNS name, a port of digits and a plain path (no user info, query, fragment or escapes).
fn parse_url(base: &str) -> Option<(bool, Host, u16, &str, &str)> {
    let (https, rest) = match base.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, base.strip_prefix("http://")?),
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let plain_path = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
    };
    let dots = prefix.split('/').any(|seg| seg == "." || seg == "..");
    if authority.is_empty() || !plain_path(prefix) || prefix.contains("//") || dots {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (Host::Ip(IpAddr::V6(h.parse().ok()?)), after)
    } else {
        let (h, port) = match authority.find(':') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        };
        let host = match h.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => {
                let label_ok = |l: &str| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                };
                let name = h.strip_suffix('.').unwrap_or(h);
                if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
                    return None;
                }
                Host::Name(h.to_ascii_lowercase())
            }
        };
        (host, port)
    };
    let port = match port {
        "" if https => 443,
        "" => 80,
        p => {
            let digits = p.strip_prefix(':')?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            digits.parse().ok()?
        }
    };
    Some((https, host, port, authority, prefix))
}

/// Why a connection could not be made, in our words (ureq's `Error::Other`).
#[derive(Debug)]
struct Lookup(String);

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Lookup {}

/// The service's addresses: its IP address as is, or its name looked up within the time
/// left. `getaddrinfo` has no timeout of its own (a DNS server that never answers holds it
/// for the resolver's 5 s a try), so it runs on a thread of its own that is abandoned when
/// the time runs out (the process execs or exits soon after). ureq's `DefaultResolver` does
/// the same, but starts that thread for an IP address too, panics where a thread cannot be
/// started, and its error does not name the host.
///
/// The agent talks to this one service (no proxy, no redirect), so the URI is not looked at.
#[derive(Debug)]
struct ServiceResolver {
    host: Host,
    port: u16,
}

impl Resolver for ServiceResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        let name = match &self.host {
            Host::Ip(ip) => {
                out.push(SocketAddr::new(*ip, self.port));
                return Ok(out);
            }
            Host::Name(name) => name,
        };
        let fail = |detail: String| ureq::Error::Other(Box::new(Lookup(detail)));
        if timeout.after.is_zero() {
            return Err(fail(format!("timed out resolving '{name}'")));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let target = (name.clone(), self.port);
        std::thread::Builder::new()
            .name("resolve-name".into())
            .spawn(move || {
                let _ = tx.send(
                    (target.0.as_str(), target.1)
                        .to_socket_addrs()
                        .map(Iterator::collect::<Vec<_>>),
                );
            })
            .map_err(|e| fail(format!("cannot resolve '{name}': {e}")))?;
        match rx.recv_timeout(*timeout.after) {
            Ok(Ok(addrs)) if addrs.is_empty() => {
                Err(fail(format!("cannot resolve '{name}': no address")))
            }
            Ok(Ok(addrs)) => {
                // ureq keeps 16 addresses at most, as its own resolver does.
                for a in addrs {
                    if out.try_push(a).is_err() {
                        break;
                    }
                }
                Ok(out)
            }
            Ok(Err(e)) => Err(fail(format!("cannot resolve '{name}': {e}"))),
            Err(_) => Err(fail(format!("timed out resolving '{name}'"))),
        }
    }
}

/// Wraps the TCP transport of an `https://` request in rustls, with [`crate::tls`]'s
/// configuration (the `--ca-file` certificates and webpki's roots as parsed trust anchors,
/// ALPN `http/1.1`) and the name the service's certificate must carry. ureq's own
/// `RustlsConnector` takes roots only as certificates (parsed again at each start, and a
/// bad one skipped silently), so this one is ours; it does what ureq's does otherwise.
#[derive(Debug)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let mut conn = rustls::ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        // Every read and write of the handshake waits at most the time left of this one.
        sock.set_timeout(details.timeout);
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: rustls::StreamOwned::new(conn, sock),
        })))
    }
}

/// A TLS connection as a ureq transport (as ureq's own rustls transport).
struct TlsTransport {
    buffers: LazyBuffers,
    stream: rustls::StreamOwned<rustls::ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        use std::io::Write as _;
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let n = self.stream.read(input)?;
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// Plain TCP, then TLS for `https://`: ureq's `DefaultConnector` without its proxy
/// connectors (the service is reached directly, as `Client` does, whatever `*_PROXY` say).
#[derive(Debug)]
struct ServiceConnector {
    tls: Option<TlsConnector>,
}

impl Connector for ServiceConnector {
    type Out = Either<<TcpConnector as Connector>::Out, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let tcp = TcpConnector::default().connect(details, chained)?;
        match &self.tls {
            Some(tls) => tls.connect(details, tcp),
            // An `https://` request never goes through here (`Service::new`), and ureq
            // refuses one on a transport that is not TLS (`Error::TlsRequired`).
            None => Ok(tcp.map(Either::A)),
        }
    }
}

impl Service {
    /// The service of `url`. A `ca_file` is read and checked for either scheme (as `Client`
    /// does); for `https://` it is trusted beside the built-in roots (webpki-roots, as
    /// `Client`'s).
    pub fn new(url: &str, token: Token, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/');
        let (https, host, port, _, _) =
            parse_url(base).ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        let tls = match ca_file {
            Some(ca) if !https => {
                crate::tls::read_ca(ca)?;
                None
            }
            _ if https => {
                let name = match &host {
                    Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                    Host::Name(n) => ServerName::try_from(n.trim_end_matches('.'))
                        .map_err(|_| ClientError::BadUrl(url.to_owned()))?
                        .to_owned(),
                };
                Some(TlsConnector {
                    config: crate::tls::config(ca_file)?,
                    name,
                })
            }
            _ => None,
        };
        let config = ureq::Agent::config_builder()
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .accept_encoding(AutoHeaderValue::None)
            .accept(AutoHeaderValue::None)
            .user_agent(concat!("neuro-secrets/", env!("CARGO_PKG_VERSION")))
            .max_response_header_size(MAX_HEAD)
            .input_buffer_size(MAX_HEAD)
            .output_buffer_size(OUTPUT_BUFFER)
            .max_idle_connections(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ServiceConnector { tls },
            ServiceResolver { host, port },
        );
        Ok(Self {
            uri: format!("{base}/api/v1/secrets/resolve"),
            base: base.to_owned(),
            tls: https,
            token,
            agent,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn unavailable(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Unavailable {
            url: self.base.clone(),
            detail: detail.into(),
        }
    }

    fn protocol(&self, detail: &str) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            detail: detail.into(),
        }
    }

    /// Our `ClientError` for a failed exchange: ureq's errors, and rustls's inside them.
    fn error(&self, e: ureq::Error) -> ClientError {
        use ureq::Error as E;
        use ureq_proto::Error as P;
        match e {
            E::Io(io) => self.io(io),
            E::Timeout(_) => self.unavailable("timed out"),
            E::Other(o) => match o.downcast::<Lookup>() {
                Ok(l) => self.unavailable(l.0),
                Err(o) => self.unavailable(o.to_string()),
            },
            // The length of the answer cannot be told for sure (RFC 9112 section 6.3,
            // rule 5: differing Content-Length values are an unrecoverable error).
            E::Protocol(p @ P::TooManyContentLengthHeaders) => {
                self.protocol(&format!("the length of the answer is ambiguous: {p}"))
            }
            E::Protocol(
                p @ (P::ChunkLenNotAscii | P::ChunkLenNotANumber | P::ChunkExpectedCrLf),
            ) => self.protocol(&format!("a malformed chunked body: {p}")),
            E::Protocol(p) => ClientError::Incompatible {
                url: self.base.clone(),
                detail: not_http(p),
            },
            E::LargeResponseHeader(..) => self.protocol("the answer's head is too long"),
            E::BodyExceedsLimit(_) => {
                self.protocol(&format!("the answer is longer than {MAX_ANSWER} bytes"))
            }
            e => self.unavailable(e.to_string()),
        }
    }

    fn io(&self, e: std::io::Error) -> ClientError {
        let inner = e.get_ref();
        if let Some(t) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match crate::tls::incompatible(t) {
                Some(detail) => ClientError::Incompatible {
                    url: self.base.clone(),
                    detail,
                },
                None => self.unavailable(t.to_string()),
            };
        }
        if inner.is_some_and(|i| i.is::<ureq::Error>()) {
            return self.error(e.into());
        }
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                self.unavailable("timed out")
            }
            std::io::ErrorKind::UnexpectedEof => {
                self.unavailable("connection closed before a complete answer")
            }
            _ => self.unavailable(e.to_string()),
        }
    }

    /// One resolve request, answered within `budget`.
    pub fn resolve(
        &self,
        uris: &[String],
        budget: Duration,
    ) -> Result<ResolveResponse, ClientError> {
        let body = serde_json::to_vec(&ResolveRequest {
            uris: uris.to_vec(),
        })
        .map_err(|e| self.unavailable(e.to_string()))?;
        let mut auth = Zeroizing::new(String::with_capacity(7 + self.token.expose().len()));
        auth.push_str("Bearer ");
        auth.push_str(self.token.expose());
        let mut auth = HeaderValue::from_str(&auth)
            .map_err(|_| self.unavailable("the token is not a valid header value"))?;
        auth.set_sensitive(true);
        let mut resp = self
            .agent
            .post(&self.uri)
            .config()
            .timeout_global(Some(budget))
            .build()
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONNECTION, "close")
            .send(&body[..])
            .map_err(|e| self.error(e))?;
        let status = resp.status().as_u16();
        framing(resp.headers()).map_err(|why| {
            self.protocol(&format!("the length of the answer is ambiguous: {why}"))
        })?;
        let body = resp.body_mut();
        let mut buf = Zeroizing::new(Vec::new());
        if let Some(len) = body.content_length() {
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= MAX_ANSWER)
                .ok_or_else(|| {
                    self.protocol(&format!("the answer is longer than {MAX_ANSWER} bytes"))
                })?;
            // Sized once: no reallocation leaves a copy of the answer behind.
            buf.reserve_exact(len);
        }
        let mut reader = body.with_config().limit(MAX_ANSWER as u64).reader();
        let mut chunk = Zeroizing::new([0u8; 16 * 1024]);
        loop {
            match reader.read(&mut chunk[..]) {
                Ok(0) => break,
                Ok(n) => append(&mut buf, &chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        answer(&self.uri, status, &buf)
    }
}

/// Refuses the framing RFC 9112 section 6.3 lets a recipient refuse and ureq does not:
/// a `Transfer-Encoding` other than one `chunked` (ureq would read `gzip, chunked` as
/// chunked and hand over the compressed bytes), and `Transfer-Encoding` beside a
/// `Content-Length`. Rule 3 says the former wins and such a message "ought to be handled as
/// an error", and a sender "MUST NOT" send both (section 6.2). secretd never does; one that
/// does is broken, or something on the way rewrote the framing, and then which bytes are the
/// service's answer is a guess. A wrapper that puts secrets into a job does not start it on
/// a guess: refusing costs one failed start against a service that breaks the protocol,
/// guessing could cost the job values that are not its own. (Differing `Content-Length`
/// values ureq refuses itself.)
fn framing(headers: &ureq::http::HeaderMap) -> Result<(), &'static str> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err("more than one Transfer-Encoding"),
        (Some(v), None) if !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Err("a Transfer-Encoding other than chunked")
        }
        (Some(_), None) if headers.contains_key(header::CONTENT_LENGTH) => {
            Err("both Transfer-Encoding and Content-Length")
        }
        (Some(_), None) => Ok(()),
    }
}

/// Appends `data` to `v`, doubling its capacity when it must grow but never past
/// `MAX_ANSWER` bytes (a `Zeroizing` vector is wiped over all its capacity when dropped,
/// which makes every page of it resident), and wiping the old allocation, which held the
/// answer so far, before freeing it.
fn append(v: &mut Vec<u8>, data: &[u8]) {
    if v.capacity() - v.len() < data.len() {
        let cap = v
            .capacity()
            .saturating_mul(2)
            .min(MAX_ANSWER)
            .max(v.len() + data.len());
        let mut grown = Vec::with_capacity(cap);
        grown.extend_from_slice(v);
        v.zeroize();
        *v = grown;
    }
    v.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Token {
        Token::new("t".into())
    }

    #[test]
    fn service_urls() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        let name = |s: &str| Host::Name(s.into());
        for (url, https, host, port, prefix) in [
            ("http://127.0.0.1:8080", false, ip("127.0.0.1"), 8080, ""),
            ("http://10.0.0.1", false, ip("10.0.0.1"), 80, ""),
            ("http://[::1]:9/secrets", false, ip("::1"), 9, "/secrets"),
            ("https://[::1]", true, ip("::1"), 443, ""),
            (
                "https://Secretd.ns.svc:8443/x",
                true,
                name("secretd.ns.svc"),
                8443,
                "/x",
            ),
            ("http://localhost", false, name("localhost"), 80, ""),
        ] {
            let (h, got_host, p, _, pre) = parse_url(url).unwrap_or_else(|| panic!("{url}"));
            assert_eq!((h, got_host, p, pre), (https, host, port, prefix), "{url}");
        }
        for url in [
            "ftp://127.0.0.1:8080",
            "http://u:p@127.0.0.1:1",
            "https://u@localhost",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:",
            "http://127.0.0.1:8080?x",
            "http://127.0.0.1:8080/a b",
            "http://127.0.0.1:8080//x",
            "http://127.0.0.1:8080/a/../b",
            "http://[::1",
            "http://[nope]",
            "https://-x.example",
            "https://a..b",
            "https://xn--%41",
            "http://",
            "https://",
            "",
        ] {
            assert!(parse_url(url).is_none(), "{url}");
            let e = Service::new(url, tok(), None).unwrap_err();
            assert!(matches!(e, ClientError::BadUrl(_)), "{url}: {e}");
        }
        let s = Service::new("https://localhost:1/", tok(), None).unwrap();
        assert!(s.is_tls());
        assert_eq!(s.base_url(), "https://localhost:1");
        assert_eq!(s.uri, "https://localhost:1/api/v1/secrets/resolve");
        assert!(
            !Service::new("http://127.0.0.1:1", tok(), None)
                .unwrap()
                .is_tls()
        );
    }

    #[track_caller]
    fn check_framing(headers: &[(&str, &str)], expected: Result<(), &str>) {
        let mut map = ureq::http::HeaderMap::new();
        for (n, v) in headers {
            map.append(
                ureq::http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        assert_eq!(framing(&map), expected, "{headers:?}");
    }

    #[test]
    fn framing_is_refused_where_ureq_would_guess() {
        check_framing(&[("content-length", "12")], Ok(()));
        check_framing(&[("Transfer-Encoding", "chunked")], Ok(()));
        check_framing(&[("transfer-encoding", " Chunked ")], Ok(()));
        check_framing(&[], Ok(()));
        let both = Err("both Transfer-Encoding and Content-Length");
        check_framing(
            &[("transfer-encoding", "chunked"), ("content-length", "3")],
            both,
        );
        check_framing(
            &[("content-length", "3"), ("transfer-encoding", "chunked")],
            both,
        );
        let other = Err("a Transfer-Encoding other than chunked");
        check_framing(&[("transfer-encoding", "gzip, chunked")], other);
        check_framing(&[("transfer-encoding", "gzip")], other);
        check_framing(
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            Err("more than one Transfer-Encoding"),
        );
    }

    #[test]
    fn appending_stops_doubling_at_the_bound() {
        let mut v = Vec::with_capacity(MAX_ANSWER - 10);
        v.resize(MAX_ANSWER - 10, 1u8);
        append(&mut v, &[2; 10]);
        assert_eq!((v.len(), v.capacity()), (MAX_ANSWER, MAX_ANSWER));
        assert_eq!(v[MAX_ANSWER - 11..MAX_ANSWER - 9], [1, 2]);
    }
}
