//! The plain-HTTP path: one blocking `POST /api/v1/secrets/resolve` over a `TcpStream`, for an
//! `http://` URL whose host is an IP address. It needs no async runtime, no thread, no TLS
//! configuration and no DNS resolver, which is most of what the wrapper did before the job
//! started (see BENCHMARKS.md, "secret-inject start-up"). Any other URL (`https://`, a host
//! name, user info) goes through `secrets_core::client::Client`.
//!
//! Answers are read the way `Client` reads them ([`secrets_core::client::answer`]), and
//! failures map to the same `ClientError`s: refused, reset or timed out is `Unavailable`
//! (retried), an answer that is not HTTP is `Incompatible` (not retried).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use secrets_core::Token;
use secrets_core::api::{ResolveRequest, ResolveResponse};
use secrets_core::client::{ClientError, answer, not_http};
use zeroize::Zeroizing;

/// The most header bytes read before the body.
const MAX_HEAD: usize = 64 * 1024;
/// The largest answer body read.
const MAX_BODY: u64 = 512 * 1024 * 1024;
/// How long a connection may take, at most (as `Client`'s connect timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An `http://IP[:PORT][/PREFIX]` service, authenticated with one token.
#[derive(Debug)]
pub struct Plain {
    addr: SocketAddr,
    authority: String,
    prefix: String,
    base: String,
    token: Token,
}

impl Plain {
    /// `Some` when `url` is `http://` to an IP address (v4, or v6 in brackets), with an
    /// optional port and path prefix and nothing else; `None` for anything `Client` must
    /// handle (or refuse).
    pub fn new(url: &str, token: Token) -> Option<Self> {
        let base = url.trim_end_matches('/');
        let rest = base.strip_prefix("http://")?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let plain_path = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
        };
        if authority.is_empty() || !plain_path(prefix) || prefix.contains("//") {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h, after)
        } else {
            match authority.find(':') {
                Some(i) => (&authority[..i], &authority[i..]),
                None => (authority, ""),
            }
        };
        let ip: IpAddr = host.parse().ok()?;
        let port = match port {
            "" => 80,
            p => {
                let digits = p.strip_prefix(':')?;
                if digits.is_empty()
                    || digits.len() > 5
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                digits.parse().ok()?
            }
        };
        Some(Self {
            addr: SocketAddr::new(ip, port),
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
            base: base.to_owned(),
            token,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn unavailable(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Unavailable {
            url: self.base.clone(),
            detail: detail.into(),
        }
    }

    fn io(&self, e: &std::io::Error) -> ClientError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                self.unavailable("timed out")
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
        let deadline = Instant::now() + budget;
        let left = || {
            let l = deadline.saturating_duration_since(Instant::now());
            (!l.is_zero()).then_some(l)
        };
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

        let timed_out = || self.unavailable("timed out");
        let connect = left().ok_or_else(timed_out)?.min(CONNECT_TIMEOUT);
        let mut s = TcpStream::connect_timeout(&self.addr, connect).map_err(|e| self.io(&e))?;
        let _ = s.set_nodelay(true);
        s.set_write_timeout(Some(left().ok_or_else(timed_out)?))
            .map_err(|e| self.io(&e))?;
        s.write_all(&req).map_err(|e| self.io(&e))?;
        drop(req);

        let mut buf = Zeroizing::new(Vec::with_capacity(8192));
        let mut chunk = Zeroizing::new([0u8; 8192]);
        let mut read = |s: &mut TcpStream, buf: &mut Vec<u8>| -> Result<usize, ClientError> {
            s.set_read_timeout(Some(left().ok_or_else(timed_out)?))
                .map_err(|e| self.io(&e))?;
            loop {
                match s.read(&mut chunk[..]) {
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io(&e)),
                }
            }
        };
        // The head, then as much body as the length says (or to the end).
        let (status, head_len, framing) = loop {
            let n = read(&mut s, &mut buf)?;
            if !buf.is_empty() && !b"HTTP/1.".starts_with(&buf[..buf.len().min(7)]) {
                return Err(ClientError::Incompatible {
                    url: self.base.clone(),
                    detail: not_http("no HTTP status line"),
                });
            }
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let (status, framing) =
                    parse_head(&buf[..end]).ok_or_else(|| ClientError::Incompatible {
                        url: self.base.clone(),
                        detail: not_http("a malformed HTTP head"),
                    })?;
                break (status, end + 4, framing);
            }
            if n == 0 {
                return Err(self.unavailable("connection closed before a complete answer"));
            }
            if buf.len() > MAX_HEAD {
                return Err(self.protocol("the answer's head is too long"));
            }
        };
        let body = match framing {
            Framing::Length(len) => {
                if len > MAX_BODY {
                    return Err(self.protocol("the answer is too long"));
                }
                let len = len as usize;
                let need = (head_len + len).saturating_sub(buf.len());
                buf.reserve(need);
                while buf.len() < head_len + len {
                    if read(&mut s, &mut buf)? == 0 {
                        return Err(self.unavailable("connection closed before a complete answer"));
                    }
                }
                Zeroizing::new(buf[head_len..head_len + len].to_vec())
            }
            Framing::Close => {
                while read(&mut s, &mut buf)? != 0 {
                    if buf.len() as u64 > MAX_BODY {
                        return Err(self.protocol("the answer is too long"));
                    }
                }
                Zeroizing::new(buf[head_len..].to_vec())
            }
            Framing::Chunked => {
                let mut body = Zeroizing::new(Vec::new());
                let mut at = head_len;
                loop {
                    match dechunk(&buf[at..], &mut body) {
                        Dechunk::Done => break,
                        Dechunk::Bad => return Err(self.protocol("a malformed chunked body")),
                        Dechunk::More(used) => {
                            at += used;
                            if body.len() as u64 > MAX_BODY {
                                return Err(self.protocol("the answer is too long"));
                            }
                            if read(&mut s, &mut buf)? == 0 {
                                return Err(
                                    self.unavailable("connection closed before a complete answer")
                                );
                            }
                        }
                    }
                }
                body
            }
        };
        answer(&format!("{}{path}", self.base), status, &body)
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status and the framing of a head (without its final empty line).
fn parse_head(head: &[u8]) -> Option<(u16, Framing)> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let status: u16 = code.parse().ok()?;
    let mut framing = Framing::Close;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            } else {
                return None;
            }
        } else if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            framing = Framing::Length(value.parse().ok()?);
        }
    }
    Some((status, framing))
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
            return Dechunk::More(at);
        };
        let line = &data[at..at + eol];
        let size = line.split(|b| *b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .filter(|s| *s as u64 <= MAX_BODY)
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
        out.extend_from_slice(&data[start..start + size]);
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
    fn only_http_to_an_ip_address_is_plain() {
        for (url, addr, prefix) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080", ""),
            ("http://127.0.0.1:8080/", "127.0.0.1:8080", ""),
            ("http://10.0.0.1", "10.0.0.1:80", ""),
            ("http://[::1]:9/secrets/", "[::1]:9", "/secrets"),
        ] {
            let p = Plain::new(url, tok()).unwrap_or_else(|| panic!("{url}"));
            assert_eq!(p.addr.to_string(), addr, "{url}");
            assert_eq!(p.prefix, prefix, "{url}");
        }
        for url in [
            "https://127.0.0.1:8080",
            "http://localhost:8080",
            "http://secretd.ns.svc",
            "http://u:p@127.0.0.1:1",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:",
            "http://127.0.0.1:8080?x",
            "http://127.0.0.1:8080/a b",
            "http://127.0.0.1:8080//x",
            "http://[::1",
            "http://",
            "",
        ] {
            assert!(Plain::new(url, tok()).is_none(), "{url}");
        }
    }

    #[test]
    fn heads_and_chunks() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx: y"),
            Some((200, Framing::Length(12)))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\nContent-Length: 3"),
            Some((503, Framing::Chunked))
        );
        assert_eq!(
            parse_head(b"HTTP/1.0 404 Nope"),
            Some((404, Framing::Close))
        );
        for bad in [
            &b"HTTP/2 200 OK"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 200 OK\r\nno colon",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip",
        ] {
            assert_eq!(parse_head(bad), None, "{}", String::from_utf8_lossy(bad));
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
    }
}
