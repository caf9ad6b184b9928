//! The client's address, for the limits kept per address (log-in failures, requests without a
//! token): the TCP peer's, or, when the peer is a proxy the operator trusts
//! (`--trusted-proxy CIDR`), the address that proxy put in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is a list each proxy appends its peer to. Read from the right, every entry
//! that is a trusted proxy is skipped; the first one that is not is the client. Entries left of
//! it are whatever the client sent and are never believed. Without trusted proxies the header
//! is ignored: anyone can send it.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address block: `ADDR/PREFIX`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an address or ADDR/PREFIX block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(&n.octets(), &a.octets(), self.prefix.into())
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_eq(&n.octets(), &a.octets(), self.prefix.into())
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// An IPv4-mapped IPv6 address as IPv4; anything else as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The unit a per-address limit counts by: an IPv4 address, or an IPv6 address's /64 (one
/// host is usually given a whole /64, and could rotate through it).
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client of a request that came from `peer`, given the proxies the operator trusts.
pub fn client_addr(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Some(peer);
    }
    // Every X-Forwarded-For header, in order, as one list; one that does not parse ends the
    // walk at the last proxy trusted so far.
    let mut hops: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else {
            return Some(peer);
        };
        hops.extend(v.split(',').map(str::trim));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            return Some(client);
        };
        let ip = canonical(ip);
        client = ip;
        if !trusted.iter().any(|c| c.contains(ip)) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[track_caller]
    fn check(peer: &str, xff: &[&str], trusted: &[&str], expected: &str) {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        assert_eq!(
            client_addr(Some(ip(peer)), &h, &cidrs(trusted)),
            Some(ip(expected)),
            "peer {peer}, X-Forwarded-For {xff:?}, trusted {trusted:?}"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        // No trusted proxy: the header is anyone's to send.
        check("10.0.0.5", &["1.2.3.4"], &[], "10.0.0.5");
        // The peer is not trusted: its header is ignored.
        check("10.0.0.5", &["1.2.3.4"], &["10.1.0.0/16"], "10.0.0.5");
        // One trusted proxy: the entry it appended is the client.
        check("10.0.0.5", &["1.2.3.4"], &["10.0.0.0/8"], "1.2.3.4");
        // The client's own forged entries, left of the proxy's, are not believed.
        check(
            "10.0.0.5",
            &["6.6.6.6, 1.2.3.4"],
            &["10.0.0.0/8"],
            "1.2.3.4",
        );
        check(
            "10.0.0.5",
            &["6.6.6.6", "1.2.3.4"],
            &["10.0.0.0/8"],
            "1.2.3.4",
        );
        // Two trusted proxies in a row.
        check(
            "10.0.0.5",
            &["6.6.6.6, 1.2.3.4, 10.0.0.9"],
            &["10.0.0.0/8"],
            "1.2.3.4",
        );
        // Garbage stops the walk at the last trusted hop.
        check("10.0.0.5", &["1.2.3.4, junk"], &["10.0.0.0/8"], "10.0.0.5");
        // No header behind a trusted proxy: the proxy is all there is.
        check("10.0.0.5", &[], &["10.0.0.0/8"], "10.0.0.5");
        // IPv4-mapped peers and IPv6 blocks.
        check("::ffff:10.0.0.5", &["1.2.3.4"], &["10.0.0.0/8"], "1.2.3.4");
        check("fd00::1", &["2001:db8::7"], &["fd00::/8"], "2001:db8::7");
    }

    #[test]
    fn blocks_parse_and_match() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let c: Cidr = "192.168.0.0/23".parse().unwrap();
        assert!(c.contains(ip("192.168.1.255")));
        assert!(!c.contains(ip("192.168.2.0")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!(
            "127.0.0.1"
                .parse::<Cidr>()
                .unwrap()
                .contains(ip("127.0.0.1"))
        );
        assert!(
            !"127.0.0.1"
                .parse::<Cidr>()
                .unwrap()
                .contains(ip("127.0.0.2"))
        );
        assert!(!"::/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(
            client_bucket(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_bucket(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(client_bucket(ip("127.0.0.9")), ip("127.0.0.9"));
    }
}
