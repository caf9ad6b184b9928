//! The one request secret-inject makes: a blocking `POST /api/v1/secrets/resolve` over a
//! `TcpStream`, plain for `http://` and through rustls's blocking API ([`crate::tls`]) for
//! `https://`. It needs no async runtime, no thread and no HTTP library, which were most of
//! the wrapper's start-up and of its binary (see BENCHMARKS.md, "secret-inject start-up").
//! Host names are resolved with the standard library (`getaddrinfo`).
//!
//! Answers are read the way `secrets_client::Client` reads them
//! ([`secrets_client::answer`]), and failures map to the same `ClientError`s: refused,
//! reset or timed out is `Unavailable` (retried); an answer that is not HTTP, or a TLS
//! handshake that fails on the certificate or the protocol, is `Incompatible` (not retried).
//! Unlike `Client`, it reads at most `MAX_ANSWER` bytes of an answer, framing included,
//! however long the answer says it is or goes on: a hostile service cannot make it grow.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use secrets_client::{ClientError, answer, not_http};
use secrets_core::Token;
use secrets_core::api::{ResolveRequest, ResolveResponse};
use zeroize::{Zeroize as _, Zeroizing};

/// The most bytes of an answer's head, its final empty line included.
const MAX_HEAD: usize = 64 * 1024;
/// The most raw bytes of one answer read, head, chunk sizes, extensions and line ends
/// included; a `Content-Length` that says more is refused before its body is read.
///
/// The largest answer the service gives is 16 MiB of values (`MAX_RESOLVE_BYTES` of the
/// server's resolve) as base64 (x 4/3: 21.3 MiB) in at most 1,000 results (`MAX_RESOLVE`),
/// each under 2 KiB besides its value (two URIs of at most 390 bytes, the status, the
/// version, an error text): 23.3 MiB of JSON. 32 MiB leaves 8.7 MiB (37%) for the head and
/// for chunked framing (a few bytes a chunk, under 1% for chunks of 1 KiB or more).
/// Whatever a service sends, reading it costs at most about this much memory (twice in the
/// worst case: a chunked body decoded beside the one chunk still arriving), never an amount
/// the service chooses.
const MAX_ANSWER: usize = 32 * 1024 * 1024;
/// The longest chunk-size line, extensions included: the service sends no extension, and
/// a bound keeps a line without end from being searched again at every read.
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// How long a connection may take, at most (as `Client`'s connect timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the service is: an IP address, or a name resolved at each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// TLS to the service: the client configuration and the name its certificate must carry.
#[derive(Debug)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

/// An `http(s)://HOST[:PORT][/PREFIX]` service, authenticated with one token.
#[derive(Debug)]
pub struct Service {
    host: Host,
    port: u16,
    authority: String,
    prefix: String,
    base: String,
    token: Token,
    tls: Option<Tls>,
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

/// A TCP stream whose every read and write ends by `deadline`: each waits at most the time
/// left, and none starts after it (`TimedOut`). rustls loops over socket reads inside one
/// call (a record, the handshake); this bounds those loops too, so a service that trickles
/// bytes cannot hold the wrapper past its `--timeout`.
#[derive(Debug)]
struct Sock {
    tcp: TcpStream,
    deadline: Instant,
}

impl Sock {
    fn left(&self) -> std::io::Result<Duration> {
        let l = self.deadline.saturating_duration_since(Instant::now());
        if l.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        Ok(l)
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

impl Service {
    /// The service of `url`. A `ca_file` is read and checked for either scheme (as `Client`
    /// does); for `https://` it is trusted beside the built-in roots (webpki-roots, as
    /// `Client`'s).
    pub fn new(url: &str, token: Token, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/');
        let (https, host, port, authority, prefix) =
            parse_url(base).ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        let config = match ca_file {
            Some(ca) if !https => {
                crate::tls::read_ca(ca)?;
                None
            }
            _ if https => Some(crate::tls::config(ca_file)?),
            _ => None,
        };
        let tls = match config {
            Some(config) => {
                let name = match &host {
                    Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                    Host::Name(n) => ServerName::try_from(n.trim_end_matches('.'))
                        .map_err(|_| ClientError::BadUrl(url.to_owned()))?
                        .to_owned(),
                };
                Some(Tls { config, name })
            }
            None => None,
        };
        Ok(Self {
            host,
            port,
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
            base: base.to_owned(),
            token,
            tls,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn unavailable(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Unavailable {
            url: self.base.clone(),
            detail: detail.into(),
        }
    }

    fn io(&self, e: &std::io::Error) -> ClientError {
        if let Some(t) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return match crate::tls::incompatible(t) {
                Some(detail) => ClientError::Incompatible {
                    url: self.base.clone(),
                    detail,
                },
                None => self.unavailable(t.to_string()),
            };
        }
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                self.unavailable("timed out")
            }
            _ => self.unavailable(e.to_string()),
        }
    }

    /// A TCP connection to the first address that answers, within `budget`.
    fn connect(&self, budget: Duration) -> Result<TcpStream, ClientError> {
        let deadline = Instant::now() + budget;
        let addrs: Vec<SocketAddr> = match &self.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            Host::Name(name) => self.lookup(name, budget)?,
        };
        let mut last = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.unavailable("timed out"));
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => self.io(&e),
            None => self.unavailable("the host name has no address"),
        })
    }

    /// The addresses of `name`, within `budget`: `getaddrinfo` has no timeout of its own
    /// (a DNS server that never answers holds it for the resolver's 5 s a try), so it runs on
    /// a thread of its own that is abandoned when the budget runs out (the process execs or
    /// exits soon after; an IP address in the URL needs no lookup at all).
    fn lookup(&self, name: &str, budget: Duration) -> Result<Vec<SocketAddr>, ClientError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let target = (name.to_owned(), self.port);
        std::thread::Builder::new()
            .name("resolve-name".into())
            .spawn(move || {
                let _ = tx.send(
                    (target.0.as_str(), target.1)
                        .to_socket_addrs()
                        .map(Iterator::collect::<Vec<_>>),
                );
            })
            .map_err(|e| self.unavailable(format!("cannot resolve '{name}': {e}")))?;
        match rx.recv_timeout(budget) {
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(self.unavailable(format!("cannot resolve '{name}': {e}"))),
            Err(_) => Err(self.unavailable(format!("timed out resolving '{name}'"))),
        }
    }

    /// One resolve request, answered within `budget`.
    pub fn resolve(
        &self,
        uris: &[String],
        budget: Duration,
    ) -> Result<ResolveResponse, ClientError> {
        let deadline = Instant::now() + budget;
        let left = || {
            let l = deadline.saturating_duration_since(Instant::now());
            (!l.is_zero()).then_some(l)
        };
        let timed_out = || self.unavailable("timed out");
        let body = serde_json::to_vec(&ResolveRequest {
            uris: uris.to_vec(),
        })
        .map_err(|e| self.unavailable(e.to_string()))?;
        let path = format!("{}/api/v1/secrets/resolve", self.prefix);
        let mut req = Zeroizing::new(Vec::with_capacity(256 + body.len()));
        req.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: neuro-secrets/{}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
                 Authorization: Bearer ",
                self.authority,
                env!("CARGO_PKG_VERSION"),
                body.len()
            )
            .as_bytes(),
        );
        req.extend_from_slice(self.token.expose().as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(&body);

        let tcp = self.connect(left().ok_or_else(timed_out)?.min(CONNECT_TIMEOUT))?;
        let _ = tcp.set_nodelay(true);
        let mut sock = Sock { tcp, deadline };
        let status_body = match &self.tls {
            None => self.exchange(sock, req),
            Some(tls) => {
                let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                    .map_err(|e| self.unavailable(e.to_string()))?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock).map_err(|e| self.io(&e))?;
                }
                self.exchange(rustls::StreamOwned::new(conn, sock), req)
            }
        }?;
        answer(
            &format!("{}{path}", self.base),
            status_body.0,
            &status_body.1,
        )
    }

    /// Sends `req` on `s` and reads the answer: its status and body.
    fn exchange<S: Read + Write>(
        &self,
        mut s: S,
        req: Zeroizing<Vec<u8>>,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), ClientError> {
        s.write_all(&req).map_err(|e| self.io(&e))?;
        s.flush().map_err(|e| self.io(&e))?;
        drop(req);

        let mut buf = Zeroizing::new(Vec::with_capacity(8192));
        let mut chunk = Zeroizing::new([0u8; 8192]);
        let too_long = || self.protocol(&format!("the answer is longer than {MAX_ANSWER} bytes"));
        let closed = || self.unavailable("connection closed before a complete answer");
        // Every read goes through here: at most `want` bytes, and never more than
        // MAX_ANSWER + 1 of the answer in all, the one past the bound refusing it.
        let total = std::cell::Cell::new(0usize);
        let mut read = |s: &mut S, buf: &mut Vec<u8>, want: usize| -> Result<usize, ClientError> {
            let want = want.min(chunk.len()).min(MAX_ANSWER + 1 - total.get());
            loop {
                match s.read(&mut chunk[..want]) {
                    Ok(n) => {
                        total.set(total.get() + n);
                        if total.get() > MAX_ANSWER {
                            return Err(too_long());
                        }
                        append(buf, &chunk[..n]);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io(&e)),
                }
            }
        };
        // The head, which may arrive with the start of the body.
        let mut scanned = 0;
        let (status, framing) = loop {
            // Below MAX_HEAD: checked at the end of each turn.
            let want = MAX_HEAD - buf.len();
            let n = read(&mut s, &mut buf, want)?;
            if !buf.is_empty() && !b"HTTP/1.".starts_with(&buf[..buf.len().min(7)]) {
                return Err(ClientError::Incompatible {
                    url: self.base.clone(),
                    detail: not_http("no HTTP status line"),
                });
            }
            if let Some(end) = find(&buf[scanned..], b"\r\n\r\n").map(|i| scanned + i) {
                let (status, framing) = parse_head(&buf[..end]).map_err(|e| match e {
                    BadHead::Malformed => ClientError::Incompatible {
                        url: self.base.clone(),
                        detail: not_http("a malformed HTTP head"),
                    },
                    BadHead::Framing(why) => {
                        self.protocol(&format!("the length of the answer is ambiguous: {why}"))
                    }
                })?;
                buf.drain(..end + 4);
                break (status, framing);
            }
            if n == 0 {
                return Err(closed());
            }
            if buf.len() >= MAX_HEAD {
                return Err(self.protocol("the answer's head is too long"));
            }
            scanned = buf.len().saturating_sub(3);
        };
        // `buf` holds what came of the body with the head; `total` counts the head too.
        let body = match framing {
            Framing::Length(len) => {
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= MAX_ANSWER + buf.len() - total.get())
                    .ok_or_else(too_long)?;
                // Sized once: no reallocation leaves a copy of the answer behind.
                let have = buf.len();
                if have < len {
                    buf.reserve_exact(len - have);
                }
                while buf.len() < len {
                    let want = len - buf.len();
                    if read(&mut s, &mut buf, want)? == 0 {
                        return Err(closed());
                    }
                }
                buf.truncate(len);
                buf
            }
            Framing::Close => {
                while read(&mut s, &mut buf, usize::MAX)? != 0 {}
                buf
            }
            Framing::Chunked => {
                let mut body = Zeroizing::new(Vec::new());
                loop {
                    match dechunk(&buf, &mut body) {
                        Dechunk::Done => break,
                        Dechunk::Bad => return Err(self.protocol("a malformed chunked body")),
                        Dechunk::More(used) => {
                            // Only the incomplete chunk stays in `buf`.
                            buf.drain(..used);
                            if read(&mut s, &mut buf, usize::MAX)? == 0 {
                                return Err(closed());
                            }
                        }
                    }
                }
                body
            }
        };
        Ok((status, body))
    }

    fn protocol(&self, detail: &str) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            detail: detail.into(),
        }
    }
}

/// How the body of an answer ends.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// Appends `data` to `v`, doubling its capacity when it must grow but never past
/// `MAX_ANSWER + 1` bytes (a `Zeroizing` vector is wiped over all its capacity when dropped,
/// which makes every page of it resident), and wiping the old allocation, which held the
/// answer so far, before freeing it.
fn append(v: &mut Vec<u8>, data: &[u8]) {
    if v.capacity() - v.len() < data.len() {
        let cap = v
            .capacity()
            .saturating_mul(2)
            .min(MAX_ANSWER + 1)
            .max(v.len() + data.len());
        let mut grown = Vec::with_capacity(cap);
        grown.extend_from_slice(v);
        v.zeroize();
        *v = grown;
    }
    v.extend_from_slice(data);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Why a head is refused.
#[derive(Debug, PartialEq, Eq)]
enum BadHead {
    /// It is not an HTTP/1.x response head.
    Malformed,
    /// It is one, but where its body ends cannot be told for sure.
    Framing(&'static str),
}

/// The status and the framing of a head (without its final empty line).
///
/// The framing follows RFC 9112 section 6.3, refusing what it lets a recipient refuse:
/// - `Content-Length` values (repeated fields, or a comma list in one) must all be equal
///   (rule 5: differing ones are an unrecoverable error);
/// - `Transfer-Encoding` beside a `Content-Length` is refused too. Rule 3 says the former
///   wins and such a message "ought to be handled as an error", and a sender "MUST NOT"
///   send both (section 6.2). secretd never does; one that does is broken, or something on
///   the way rewrote the framing, and then which bytes are the service's answer is a guess.
///   A wrapper that puts secrets into a job does not start it on a guess: refusing costs
///   one failed start against a service that breaks the protocol, guessing could cost the
///   job values that are not its own.
fn parse_head(head: &[u8]) -> Result<(u16, Framing), BadHead> {
    let head = std::str::from_utf8(head).map_err(|_| BadHead::Malformed)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(BadHead::Malformed)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().ok_or(BadHead::Malformed)?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(BadHead::Malformed);
    }
    let code = parts.next().ok_or(BadHead::Malformed)?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadHead::Malformed);
    }
    let status: u16 = code.parse().map_err(|_| BadHead::Malformed)?;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(BadHead::Malformed)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") {
                return Err(BadHead::Malformed);
            }
            if chunked {
                return Err(BadHead::Framing("chunked twice"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            for v in value.split(',').map(str::trim) {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(BadHead::Malformed);
                }
                let v: u64 = v.parse().map_err(|_| BadHead::Malformed)?;
                if length.is_some_and(|l| l != v) {
                    return Err(BadHead::Framing("differing Content-Length values"));
                }
                length = Some(v);
            }
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err(BadHead::Framing(
            "both Transfer-Encoding and Content-Length",
        )),
        (true, None) => Ok((status, Framing::Chunked)),
        (false, Some(len)) => Ok((status, Framing::Length(len))),
        (false, None) => Ok((status, Framing::Close)),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Dechunk {
    /// The whole body is in `out`.
    Done,
    /// These many bytes were consumed into `out`; more are needed.
    More(usize),
    Bad,
}

/// Moves the complete chunks at the start of `data` into `out`.
fn dechunk(data: &[u8], out: &mut Vec<u8>) -> Dechunk {
    let mut at = 0;
    loop {
        let Some(eol) = find(&data[at..], b"\r\n") else {
            if data.len() - at > MAX_CHUNK_LINE {
                return Dechunk::Bad;
            }
            return Dechunk::More(at);
        };
        if eol > MAX_CHUNK_LINE {
            return Dechunk::Bad;
        }
        let line = &data[at..at + eol];
        let size = line.split(|b| *b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .filter(|s| *s <= MAX_ANSWER)
        else {
            return Dechunk::Bad;
        };
        let start = at + eol + 2;
        if size == 0 {
            // Trailers, if any, end with an empty line; the body is complete either way.
            return Dechunk::Done;
        }
        if data.len() < start + size + 2 {
            return Dechunk::More(at);
        }
        if &data[start + size..start + size + 2] != b"\r\n" {
            return Dechunk::Bad;
        }
        append(out, &data[start..start + size]);
        at = start + size + 2;
    }
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
        assert!(
            !Service::new("http://127.0.0.1:1", tok(), None)
                .unwrap()
                .is_tls()
        );
    }

    #[test]
    fn heads_and_chunks() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx: y"),
            Ok((200, Framing::Length(12)))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked"),
            Ok((503, Framing::Chunked))
        );
        assert_eq!(parse_head(b"HTTP/1.0 404 Nope"), Ok((404, Framing::Close)));
        // One length said several times is that length (RFC 9112 section 6.3, rule 5).
        for same in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Length: 12"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 12, 12",
        ] {
            assert_eq!(parse_head(same), Ok((200, Framing::Length(12))));
        }
        for ambiguous in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10, 20",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10,10,20",
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
            b"HTTP/1.1 503 X\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        ] {
            assert!(
                matches!(parse_head(ambiguous), Err(BadHead::Framing(_))),
                "{}",
                String::from_utf8_lossy(ambiguous)
            );
        }
        for bad in [
            &b"HTTP/2 200 OK"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 200 OK\r\nno colon",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip",
            b"HTTP/1.1 200 OK\r\ncontent-length: +1",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1,",
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616",
        ] {
            assert_eq!(
                parse_head(bad),
                Err(BadHead::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde", &mut out),
            Dechunk::More(8)
        );
        assert_eq!(out, b"abc");
        assert_eq!(
            dechunk(b"2;x=y\r\nde\r\n0\r\n\r\n", &mut out),
            Dechunk::Done
        );
        assert_eq!(out, b"abcde");
        assert_eq!(dechunk(b"zz\r\n", &mut out), Dechunk::Bad);
        assert_eq!(dechunk(b"1\r\nab\r\n", &mut out), Dechunk::Bad);
        // A chunk larger than a whole answer, a size line without end or too long.
        assert_eq!(dechunk(b"2000001\r\n", &mut out), Dechunk::Bad);
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE, b'x');
        assert_eq!(dechunk(&line, &mut out), Dechunk::More(0));
        line.push(b'x');
        assert_eq!(dechunk(&line, &mut out), Dechunk::Bad);
        line.extend_from_slice(b"\r\n");
        assert_eq!(dechunk(&line, &mut out), Dechunk::Bad);
    }

    #[test]
    fn appending_stops_doubling_at_the_bound() {
        let mut v = Vec::with_capacity(MAX_ANSWER - 10);
        v.resize(MAX_ANSWER - 10, 1u8);
        append(&mut v, &[2; 11]);
        assert_eq!((v.len(), v.capacity()), (MAX_ANSWER + 1, MAX_ANSWER + 1));
        assert_eq!(v[MAX_ANSWER - 11..MAX_ANSWER - 9], [1, 2]);
    }
}
