//! Who the client is: the TCP peer, or, when the peer is one of the operator's trusted proxies (a load balancer), the
//! address that proxy reports in `X-Forwarded-For` or `Forwarded`.
//!
//! The proxy appends the address it saw to the right of whatever the client sent, so the header is read from the right:
//! trusted hops are skipped and the first untrusted address is the client. Anything left of it was written by the
//! client and is ignored, so nobody can pick their own identity. A peer that is not trusted is the client, whatever
//! headers it sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use actix_web::HttpRequest;
use actix_web::http::header::HeaderMap;

use crate::config::ConfigError;

/// One `address/prefix` block, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is its own block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{text}` has a prefix length outside 0..={max}")),
            },
        };
        Ok(Self { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix);
    shift >= u32::from(bits) || (a >> shift) == (b >> shift)
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Which header the trusted proxies write the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, AWS, GCP, Azure, Cloudflare, Traefik, Envoy).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// `RELIABLEGPT_TRUSTED_PROXIES`: comma-separated addresses or CIDR blocks.
pub fn parse_trusted(name: &'static str, text: &str) -> Result<Vec<Cidr>, ConfigError> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| Cidr::parse(part).map_err(|reason| ConfigError::Malformed { name, reason }))
        .collect()
}

/// `RELIABLEGPT_CLIENT_IP_HEADER`: `x-forwarded-for` or `forwarded`.
pub fn parse_header(name: &'static str, text: &str) -> Result<ForwardedHeader, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
        "forwarded" => Ok(ForwardedHeader::Forwarded),
        other => Err(ConfigError::Malformed {
            name,
            reason: format!("`{other}` is neither `x-forwarded-for` nor `forwarded`"),
        }),
    }
}

/// How this deployment finds the client's address.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    trusted: Vec<Cidr>,
    header: ForwardedHeader,
}

impl ClientIdentity {
    pub fn new(trusted: Vec<Cidr>, header: ForwardedHeader) -> Self {
        Self { trusted, header }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client of a request whose TCP peer is `peer`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => hops(headers, "x-forwarded-for", parse_xff_element),
            ForwardedHeader::Forwarded => hops(headers, "forwarded", parse_forwarded_element),
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            // An element the trusted proxy did not write as an address: nothing left of it can be believed.
            let Some(ip) = hop else { break };
            client = canonical(*ip);
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }
}

/// Every element of every instance of the header, in order (several header lines are one comma-separated list).
fn hops(headers: &HeaderMap, name: &str, parse: fn(&str) -> Option<IpAddr>) -> Vec<Option<IpAddr>> {
    headers
        .get_all(name)
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(|element| parse(element.trim()))
        .collect()
}

/// An `X-Forwarded-For` element: an address, perhaps with a port (`192.0.2.1:5000`, `[2001:db8::1]:5000`).
fn parse_xff_element(element: &str) -> Option<IpAddr> {
    parse_node(element.trim_matches('"'))
}

/// A `Forwarded` element: `;`-separated pairs, of which `for=` names the client (`for=192.0.2.1`,
/// `for="[2001:db8::1]:4711"`). An element without `for=`, or with an obfuscated or `unknown` node, has no address.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| parse_node(value.trim().trim_matches('"')))?
    })
}

fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client of an HTTP request, by the deployment's [`ClientIdentity`] (the TCP peer when none is registered).
pub fn client_ip(req: &HttpRequest) -> IpAddr {
    let peer = req.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    match req.app_data::<actix_web::web::Data<super::AppState>>() {
        Some(state) => state.clients.resolve(peer, req.headers()),
        None => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn identity(trusted: &str, header: ForwardedHeader) -> ClientIdentity {
        ClientIdentity::new(parse_trusted("T", trusted).unwrap(), header)
    }

    #[test]
    fn cidr_blocks() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains(ip("10.1.255.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped addresses are IPv4");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8:aa::/48").unwrap();
        assert!(v6.contains(ip("2001:db8:aa:1::7")));
        assert!(!v6.contains(ip("2001:db8:ab::7")));
        assert!(Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.7")));
        assert!(!Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.8")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "example.com", "10.0.0.0/-1", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_trusted("T", " 10.0.0.0/8 , fd00::/8,").unwrap().len(), 2);
        assert!(parse_trusted("T", "10.0.0.0/8,nonsense").is_err());
        assert!(parse_trusted("T", "").unwrap().is_empty());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let id = identity("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let sent = headers(&[("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=198.51.100.2")]);
        assert_eq!(id.resolve(ip("203.0.113.5"), &sent), ip("203.0.113.5"));
        // With no trusted proxies at all (the default), headers are never read.
        assert_eq!(ClientIdentity::default().resolve(ip("10.0.0.1"), &sent), ip("10.0.0.1"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() {
        let id = identity("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let peer = ip("10.0.0.2");
        // The client claims to be 1.1.1.1; the load balancer appended what it really saw.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(id.resolve(peer, &h), ip("203.0.113.7"));
        // Two trusted hops are skipped.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.9")]);
        assert_eq!(id.resolve(peer, &h), ip("203.0.113.7"));
        // Several header lines form one list.
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "203.0.113.8:5123")]);
        assert_eq!(id.resolve(peer, &h), ip("203.0.113.8"));
        // IPv6, with brackets and port.
        let h = headers(&[("x-forwarded-for", "[2001:db8::5]:443")]);
        assert_eq!(id.resolve(peer, &h), ip("2001:db8::5"));
        // Only trusted hops: the farthest one is the client.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.3")]);
        assert_eq!(id.resolve(peer, &h), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(id.resolve(peer, &HeaderMap::new()), peer);
        // Junk where the proxy should have written an address: stop there, never believe what is left of it.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.3")]);
        assert_eq!(id.resolve(peer, &h), ip("10.0.0.3"));
        // The other header is not read when this one is configured.
        let h = headers(&[("forwarded", "for=203.0.113.9")]);
        assert_eq!(id.resolve(peer, &h), peer);
    }

    #[test]
    fn the_forwarded_header() {
        let id = identity("10.0.0.0/8", ForwardedHeader::Forwarded);
        let peer = ip("10.0.0.2");
        let h = headers(&[("forwarded", r#"for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.2"#)]);
        assert_eq!(id.resolve(peer, &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "proto=https;For=203.0.113.60:80")]);
        assert_eq!(id.resolve(peer, &h), ip("203.0.113.60"));
        let h = headers(&[("forwarded", "for=1.1.1.1, for=unknown")]);
        assert_eq!(id.resolve(peer, &h), peer);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(id.resolve(peer, &h), peer);
        assert_eq!(parse_header("H", "Forwarded").unwrap(), ForwardedHeader::Forwarded);
        assert!(parse_header("H", "x-real-ip").is_err());
    }
}
