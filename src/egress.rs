//! The guard on every URL reliablegpt sends a customer's request (and key) to: Azure endpoints and custom base URLs.
//!
//! Rules: https only; the host must match the operator's allowlist; every address the host resolves to must be public
//! (no loopback, private, link-local, unique-local, IPv4-mapped, CGNAT or cloud-metadata address). Redirects are never
//! followed by the HTTP client. `allow_private` (for local demos and tests) lifts the scheme and address rules, never the
//! allowlist.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("URL is not valid")]
    Unparsable,
    // Names the operator's switch so a local demo is one setting away; tests check the name against `config::env`.
    #[error(
        "URL must use https (http and private addresses are allowed only when the operator sets \
         RELIABLEGPT_ALLOW_PRIVATE_UPSTREAMS=true, for local demos; never in production)"
    )]
    Scheme,
    #[error("URL must not contain credentials, a query or a fragment")]
    Shape,
    #[error("host `{0}` is not on the allowed upstream hosts list")]
    HostNotAllowed(String),
    #[error(
        "host resolves to a non-public address (allowed only when the operator sets \
         RELIABLEGPT_ALLOW_PRIVATE_UPSTREAMS=true, for local demos; never in production)"
    )]
    PrivateAddress,
    #[error("host could not be resolved")]
    Unresolvable,
    #[error(
        "port {0} is not allowed: upstreams are reached on 443 unless the operator's RELIABLEGPT_ALLOWED_UPSTREAM_HOSTS \
         entry for the host names the port (host:port)"
    )]
    PortNotAllowed(u16),
}

/// An allowlist entry: an exact host (`api.openai.com`) or a wildcard for any subdomain (`*.openai.azure.com`), with
/// the one port it may be reached on (`gateway.example.com:8443`); without one, only 443.
#[derive(Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    any_subdomain: bool,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let (name, port) = match text.rsplit_once(':') {
            Some((name, port)) => match port.parse::<u16>() {
                Ok(p) if p > 0 => (name, Some(p)),
                _ => return Err(format!("`{text}` has an invalid port")),
            },
            None => (text.as_str(), None),
        };
        let name = name.trim_end_matches('.');
        let (any_subdomain, host) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, name.to_owned()),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(format!("`{text}` is not a host name or *.domain pattern (with an optional :port)"));
        }
        Ok(Self { host, any_subdomain, port })
    }

    fn matches(&self, host: &str) -> bool {
        if self.any_subdomain {
            host.strip_suffix(self.host.as_str()).is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
        } else {
            self.host == host
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wild = if self.any_subdomain { "*." } else { "" };
        match self.port {
            Some(port) => write!(f, "{wild}{}:{port}", self.host),
            None => write!(f, "{wild}{}", self.host),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EgressPolicy {
    allowed_hosts: Vec<HostPattern>,
    allow_private: bool,
}

impl EgressPolicy {
    pub fn new(allowed_hosts: Vec<HostPattern>, allow_private: bool) -> Self {
        Self { allowed_hosts, allow_private }
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.iter().any(|p| p.matches(&host))
    }

    /// Parses and checks a URL without touching the network (scheme, shape, allowlist, literal IP addresses).
    pub fn check_url(&self, text: &str) -> Result<Url, EgressError> {
        let url = Url::parse(text.trim()).map_err(|_| EgressError::Unparsable)?;
        self.check_scheme(&url)?;
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(EgressError::Shape);
        }
        self.check_target(&url)?;
        Ok(url)
    }

    fn check_scheme(&self, url: &Url) -> Result<(), EgressError> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow_private => Ok(()),
            _ => Err(EgressError::Scheme),
        }
    }

    /// The request-time check of a stored upstream URL (the settings may have changed since it was stored): scheme,
    /// literal addresses and the allowlist. Names are checked again when they resolve.
    pub fn check_target(&self, url: &Url) -> Result<(), EgressError> {
        self.check_scheme(url)?;
        // The WHATWG parser already turned decimal, octal and hex IPv4 forms into a plain address here.
        let host_text = match url.host() {
            None => return Err(EgressError::Unparsable),
            Some(Host::Domain(d)) => d.to_owned(),
            Some(Host::Ipv4(ip)) => {
                self.check_ip(IpAddr::V4(ip))?;
                ip.to_string()
            }
            Some(Host::Ipv6(ip)) => {
                self.check_ip(IpAddr::V6(ip))?;
                ip.to_string()
            }
        };
        if !self.host_allowed(&host_text) {
            return Err(EgressError::HostNotAllowed(host_text));
        }
        // Upstreams are HTTPS on 443; another port only where the allowlist entry names it (local demos and tests,
        // with private upstreams allowed, may use any).
        let port = url.port_or_known_default().unwrap_or(0);
        if !self.allow_private && port != 443 && !self.port_allowed(&host_text, port) {
            return Err(EgressError::PortNotAllowed(port));
        }
        Ok(())
    }

    fn port_allowed(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.iter().any(|p| p.port == Some(port) && p.matches(&host))
    }

    /// Refuses non-public addresses unless private upstreams are allowed.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        if self.allow_private || is_public(ip) { Ok(()) } else { Err(EgressError::PrivateAddress) }
    }

    /// Resolves a host name and checks every address, so a public name pointing at a private address is refused.
    /// Returns the checked addresses: connect to these, not to a second resolution (DNS rebinding).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((host, port)).await.map_err(|_| EgressError::Unresolvable)?.collect();
        if addrs.is_empty() {
            return Err(EgressError::Unresolvable);
        }
        for addr in &addrs {
            self.check_ip(addr.ip())?;
        }
        Ok(addrs)
    }
}

/// True only for globally routable unicast addresses.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, including the 169.254.169.254 metadata service
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT, including Alibaba's 100.100.100.200 metadata service
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if ip.to_ipv4_mapped().is_some() {
        // ::ffff:a.b.c.d is refused outright: it is the classic way to smuggle 127.0.0.1 past a filter.
        return false;
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (includes AWS's fd00:ec2::254 metadata)
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // deprecated site-local
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0064 && seg[1] == 0xff9b) // NAT64 64:ff9b::/96 and 64:ff9b:1::/48 reach IPv4 private space
        || seg[0] == 0x2002 // 6to4 2002::/16 embeds any IPv4 address
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo 2001::/32 tunnels to IPv4
        || (seg[0..4] == [0, 0, 0, 0] && seg[4] == 0xffff && seg[5] == 0) // SIIT ::ffff:0:0:0/96
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (seg[0] == 0 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 && seg[4] == 0 && seg[5] == 0)) // IPv4-compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], allow_private: bool) -> EgressPolicy {
        EgressPolicy::new(hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(), allow_private)
    }

    fn default_policy() -> EgressPolicy {
        policy(&["api.openai.com", "*.openai.azure.com"], false)
    }

    #[test]
    fn ssrf_table_is_refused() {
        let p = policy(&["api.openai.com", "*.openai.azure.com", "127.0.0.1", "169.254.169.254", "localhost"], false);
        let cases: &[(&str, EgressError)] = &[
            ("https://169.254.169.254/latest/meta-data/", EgressError::PrivateAddress),
            ("https://[::ffff:127.0.0.1]/", EgressError::PrivateAddress),
            ("https://[::ffff:7f00:1]/", EgressError::PrivateAddress),
            ("https://2130706433/", EgressError::PrivateAddress), // decimal 127.0.0.1
            ("https://0177.0.0.1/", EgressError::PrivateAddress), // octal 127.0.0.1
            ("https://0x7f.0.0.1/", EgressError::PrivateAddress), // hex 127.0.0.1
            ("https://127.1/", EgressError::PrivateAddress),
            ("https://[::1]/", EgressError::PrivateAddress),
            ("https://[fd00:ec2::254]/", EgressError::PrivateAddress),
            ("https://10.0.0.5/", EgressError::PrivateAddress),
            ("http://api.openai.com/v1", EgressError::Scheme),
            ("ftp://api.openai.com/", EgressError::Scheme),
            ("https://evil.example.com/", EgressError::HostNotAllowed("evil.example.com".into())),
            ("https://openai.azure.com/", EgressError::HostNotAllowed("openai.azure.com".into())),
            ("https://x.openai.azure.com.evil.net/", EgressError::HostNotAllowed("x.openai.azure.com.evil.net".into())),
            ("https://api.openai.com.evil.net/", EgressError::HostNotAllowed("api.openai.com.evil.net".into())),
            ("https://user:pw@api.openai.com/", EgressError::Shape),
            ("https://api.openai.com/v1?x=1", EgressError::Shape),
            ("not a url", EgressError::Unparsable),
            ("https://api.openai.com:22/v1", EgressError::PortNotAllowed(22)),
            ("https://x.openai.azure.com:8443/", EgressError::PortNotAllowed(8443)),
        ];
        for (url, expected) in cases {
            assert_eq!(p.check_url(url).as_ref().err(), Some(expected), "{url}");
        }
    }

    #[test]
    fn allowlisted_public_urls_pass() {
        let p = default_policy();
        assert!(p.check_url("https://api.openai.com/v1").is_ok());
        assert!(p.check_url("https://my-res.openai.azure.com").is_ok());
        assert!(p.check_url("https://MY-RES.OpenAI.Azure.com.").is_ok());
        assert!(p.check_url("https://api.openai.com:443/v1").is_ok());
    }

    #[test]
    fn other_ports_only_where_the_allowlist_names_them() {
        let p = policy(&["api.openai.com", "gw.example.com:8443", "*.corp.example:9443"], false);
        assert!(p.check_url("https://gw.example.com:8443/v1").is_ok());
        assert!(p.check_url("https://gw.example.com/v1").is_ok());
        assert_eq!(p.check_url("https://gw.example.com:8444/v1").unwrap_err(), EgressError::PortNotAllowed(8444));
        assert!(p.check_url("https://a.corp.example:9443/v1").is_ok());
        assert_eq!(p.check_url("https://api.openai.com:8443/v1").unwrap_err(), EgressError::PortNotAllowed(8443));
        assert_eq!(format!("{:?}", HostPattern::parse("*.Corp.example:9443").unwrap()), "*.corp.example:9443");
    }

    #[test]
    fn allow_private_lifts_scheme_and_address_rules_only() {
        let p = policy(&["127.0.0.1", "localhost"], true);
        assert!(p.check_url("http://127.0.0.1:9000/v1").is_ok());
        assert!(p.check_url("http://localhost:9000/v1").is_ok());
        assert_eq!(p.check_url("http://10.1.2.3/").unwrap_err(), EgressError::HostNotAllowed("10.1.2.3".into()));
        assert_eq!(
            p.check_url("http://evil.example.com/").unwrap_err(),
            EgressError::HostNotAllowed("evil.example.com".into())
        );
    }

    #[test]
    fn address_classification() {
        for private in [
            "127.0.0.1",
            "10.1.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:8.8.8.8",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "::ffff:0:a00:1",
            "100::1",
            "192.88.99.1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} must not be public");
        }
        for public in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "2001:4860:4860::8888"] {
            assert!(is_public(public.parse().unwrap()), "{public} must be public");
        }
    }

    #[tokio::test]
    async fn resolution_to_a_private_address_is_refused() {
        // `localhost` is on the allowlist here, but it resolves to loopback: refused unless private upstreams are allowed.
        let strict = policy(&["localhost"], false);
        assert_eq!(strict.resolve("localhost", 8443).await.unwrap_err(), EgressError::PrivateAddress);
        let relaxed = policy(&["localhost"], true);
        let addrs = relaxed.resolve("localhost", 8443).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8443));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "*.", "exa mple.com", "*.*.com", "http://x.com", "x.com:0", "x.com:99999", "x.com:", ":443"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    use proptest::prelude::{BoxedStrategy, Just, Strategy, any, prop_oneof};

    const ALLOWLIST: &[&str] =
        &["api.openai.com", "*.openai.azure.com", "gw.example.com:8443", "*.corp.example:9443", "8.8.8.8", "10.0.0.1"];

    /// IPv4 octets, often in the ranges a filter must refuse.
    fn octets() -> BoxedStrategy<[u8; 4]> {
        let first =
            prop_oneof![Just(10u8), Just(127), Just(169), Just(172), Just(192), Just(100), Just(0), any::<u8>()];
        (first, prop_oneof![Just(254u8), Just(168), Just(16), Just(64), any::<u8>()], any::<[u8; 2]>())
            .prop_map(|(a, b, [c, d])| [a, b, c, d])
            .boxed()
    }

    fn host() -> BoxedStrategy<String> {
        let names = &[
            "api.openai.com",
            "API.OpenAI.com.",
            "r1.openai.azure.com",
            "openai.azure.com",
            ".openai.azure.com",
            "x.openai.azure.com.evil.net",
            "gw.example.com",
            "a.b.corp.example",
            "localhost",
            "8.8.8.8",
            "10.0.0.1",
        ];
        prop_oneof![
            3 => proptest::sample::select(names).prop_map(String::from),
            1 => "[a-z0-9-]{1,8}(\\.[a-z0-9-]{0,8}){0,3}",
            1 => octets().prop_map(|o| u32::from_be_bytes(o).to_string()),
            1 => octets().prop_map(|o| format!("0x{:x}", u32::from_be_bytes(o))),
            1 => octets().prop_map(|[a, b, c, d]| format!("0{a:o}.0x{b:x}.{c}.0{d:o}")),
            1 => octets().prop_map(|[a, b, c, d]| format!("{a}.{}", u32::from_be_bytes([0, b, c, d]))),
            1 => octets().prop_map(|o| Ipv4Addr::from(o).to_string()),
            1 => any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
            1 => (any::<[u16; 8]>(), "[a-z0-9]{1,4}").prop_map(|(s, z)| format!("[{}%25{z}]", Ipv6Addr::from(s))),
            1 => octets().prop_map(|o| format!("[::ffff:{}]", Ipv4Addr::from(o))),
            1 => octets().prop_map(|o| format!("[64:ff9b::{}]", Ipv4Addr::from(o))),
            1 => "[a-z\u{e9}\u{df}\u{1F600}\u{ff0e}.]{1,8}\\.openai\\.azure\\.com",
            1 => "(%[0-9a-fA-F]{2}|[a-z.]){1,12}(\\.openai\\.azure\\.com)?",
            1 => any::<String>(),
        ]
        .boxed()
    }

    fn url_text() -> BoxedStrategy<String> {
        let scheme = prop_oneof![4 => Just("https://"), 1 => Just("http://"), 1 => Just("HTTPS://"), 1 => Just("ftp://"), 1 => Just("https:\\\\"), 1 => Just("")];
        let userinfo = proptest::option::weighted(
            0.1,
            prop_oneof![Just("user@"), Just("user:pw@"), Just(":@"), Just("api.openai.com@")],
        );
        let port = proptest::option::weighted(
            0.3,
            prop_oneof![Just(443u32), Just(8443), Just(9443), Just(80), any::<u16>().prop_map(u32::from), Just(70_000)],
        );
        let path = prop_oneof![Just(""), Just("/"), Just("/v1"), Just("/v1/"), Just("/%2e%2e/x"), Just("//evil.com")];
        let tail = proptest::option::weighted(0.1, prop_oneof![Just("?x=1"), Just("#f"), Just("?"), Just("#")]);
        (scheme, userinfo, host(), port, path, tail)
            .prop_map(|(scheme, user, host, port, path, tail)| {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{scheme}{}{host}{port}{path}{}", user.unwrap_or(""), tail.unwrap_or(""))
            })
            .boxed()
    }

    /// The allowlist spelled out independently of `HostPattern::matches`: the host, and whether `port` is its port.
    fn allowlisted(host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.');
        let subdomain_of = |suffix: &str| host.strip_suffix(suffix).is_some_and(|p| p.len() > 1 && p.ends_with('.'));
        let named = ["api.openai.com", "8.8.8.8", "10.0.0.1", "gw.example.com"].contains(&host)
            || subdomain_of("openai.azure.com")
            || subdomain_of("corp.example");
        let port_ok =
            port == 443 || (port == 8443 && host == "gw.example.com") || (port == 9443 && subdomain_of("corp.example"));
        named && port_ok
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Without private upstreams, an accepted URL is https, without credentials, query or fragment, on an
        /// allowlisted host and port, with no literal non-public address, and it is accepted again as stored.
        #[test]
        fn egress_prop_check_url(text in prop_oneof![4 => url_text(), 1 => any::<String>()]) {
            let strict = policy(ALLOWLIST, false);
            if let Ok(url) = strict.check_url(&text) {
                proptest::prop_assert_eq!(url.scheme(), "https");
                proptest::prop_assert!(url.username().is_empty() && url.password().is_none());
                proptest::prop_assert!(url.query().is_none() && url.fragment().is_none());
                let port = url.port_or_known_default();
                proptest::prop_assert!(port.is_some());
                let host = match url.host() {
                    Some(Host::Domain(d)) => d.to_owned(),
                    Some(Host::Ipv4(ip)) => {
                        proptest::prop_assert!(is_public(IpAddr::V4(ip)), "{} accepted", text);
                        ip.to_string()
                    }
                    Some(Host::Ipv6(ip)) => {
                        proptest::prop_assert!(is_public(IpAddr::V6(ip)), "{} accepted", text);
                        ip.to_string()
                    }
                    None => return Err(proptest::test_runner::TestCaseError::fail("no host")),
                };
                proptest::prop_assert!(allowlisted(&host, port.unwrap_or(0)), "{} accepted as {}", text, url);
                let again = strict.check_url(url.as_str());
                proptest::prop_assert_eq!(again.as_ref().map(Url::as_str), Ok(url.as_str()));
                proptest::prop_assert_eq!(strict.check_target(&url), Ok(()));
            }
            // Private upstreams lift the scheme and address rules, never the allowlist.
            if let Ok(url) = policy(ALLOWLIST, true).check_url(&text) {
                proptest::prop_assert!(["http", "https"].contains(&url.scheme()));
                let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
                proptest::prop_assert!(allowlisted(host, 443), "{} accepted", text);
            }
        }

        /// Allowlist entries: any text is parsed or refused without panicking, and an accepted one prints back to
        /// itself and matches the host it names.
        #[test]
        fn egress_prop_host_pattern(text in prop_oneof![
            any::<String>(),
            "\\*?\\.?[a-zA-Z0-9.*-]{0,12}(:[0-9]{0,6})?",
            "[a-z]{1,63}(\\.[a-z]{1,70}){0,5}",
        ]) {
            if let Ok(pattern) = HostPattern::parse(&text) {
                let printed = format!("{pattern:?}");
                proptest::prop_assert_eq!(HostPattern::parse(&printed), Ok(pattern.clone()));
                let example = if pattern.any_subdomain { format!("x.{}", pattern.host) } else { pattern.host.clone() };
                proptest::prop_assert!(pattern.matches(&example));
                let outside = format!("{}.evil.net", pattern.host);
                proptest::prop_assert!(!pattern.matches(&outside), "{:?} matches {}", pattern, outside);
                proptest::prop_assert!(pattern.host.len() <= 253 && !pattern.host.starts_with('.'));
            }
        }

        /// Every embedding of an IPv4 address in IPv6 is refused, whatever the address; a public IPv4 address is none
        /// of std's special ranges.
        #[test]
        fn egress_prop_is_public(v4 in octets().prop_map(Ipv4Addr::from), v6 in any::<[u16; 8]>().prop_map(Ipv6Addr::from)) {
            let _ = is_public(IpAddr::V6(v6));
            let [a, b, c, d] = v4.octets();
            let [hi, lo] = [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])];
            for embedded in [
                v4.to_ipv6_mapped(),
                v4.to_ipv6_compatible(),
                Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
                Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo),
            ] {
                proptest::prop_assert!(!is_public(IpAddr::V6(embedded)), "{} is public", embedded);
            }
            if is_public(IpAddr::V4(v4)) {
                proptest::prop_assert!(!(v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()
                    || v4.is_broadcast() || v4.is_multicast() || v4.is_documentation()));
            }
        }
    }
}
