//! Which address a request comes from: the peer, or, behind proxies the operator listed in
//! `livechat.trusted_proxies`, the rightmost `X-Forwarded-For` hop that is not one of them.
//!
//! # Design note: rightmost untrusted, never leftmost
//! Every proxy appends the address it received the request from, so `X-Forwarded-For` reads
//! `<whatever the client wrote>, <client as the 1st proxy saw it>, …, <2nd-to-last proxy>`
//! and the peer is the last proxy. Only the entries our own proxies appended are facts; the
//! leftmost entries are whatever the client sent. So the chain is walked from the right:
//! while the address at hand (the peer first) is a trusted proxy, the entry to its left is
//! what that proxy saw; the first address that is not a trusted proxy is the client. An
//! attacker can prepend anything, but never get past the entry our first proxy appended.
//!
//! An entry that does not parse was written by a trusted proxy (the walk never reads past the
//! first untrusted hop), which means a misconfigured proxy: the walk stops there and the
//! client is the last trusted hop reached (in the simplest case the peer). That is the safe
//! choice: every request through that proxy shares one address (limits bite harder), instead
//! of taking an address from an entry we cannot read. A chain of trusted proxies only (an
//! internal client) resolves to its leftmost entry, as nginx's `real_ip_recursive` does.
//! Without trusted proxies (the default) the header is ignored.

use ipnet::IpNet;
use std::net::IpAddr;

/// At most this many `X-Forwarded-For` entries are walked; a longer chain stops at the last
/// trusted hop reached (like an unreadable entry).
const MAX_HOPS: usize = 32;

/// The proxies whose `X-Forwarded-For` entries are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// The proxies in `nets` (an address alone is a /32 or /128).
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Parses one entry of `livechat.trusted_proxies`: a CIDR (`10.0.0.0/8`) or an address.
    pub fn parse_entry(entry: &str) -> Option<IpNet> {
        let entry = entry.trim();
        entry
            .parse::<IpNet>()
            .ok()
            .map(|n| n.trunc())
            .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
    }

    /// True when no proxy is trusted (the header is then never read).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address as IPv4, so both spellings are one client.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`203.0.113.9:4711`,
/// `[2001:db8::1]:4711`) as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// The client's address: `peer` unless it is a trusted proxy, else the rightmost hop of
/// `forwarded_for` (every `X-Forwarded-For` header value, in order) that is not a trusted
/// proxy; see the module's design note for unreadable entries and all-trusted chains.
pub fn resolve<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let mut client = canonical(peer);
    if !trusted.contains(client) {
        return client;
    }
    // Several headers are one list, in order (RFC 9110 §5.3).
    let values: Vec<&str> = forwarded_for.into_iter().collect();
    let hops = values.iter().rev().flat_map(|v| v.rsplit(','));
    for (walked, hop) in hops.enumerate() {
        if walked >= MAX_HOPS {
            break;
        }
        if hop.trim().is_empty() {
            // `a,,b` or a trailing comma: nothing written there; read on.
            continue;
        }
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = canonical(ip);
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter()
                .map(|n| TrustedProxies::parse_entry(n).unwrap())
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve_one(peer: &str, xff: &str, t: &TrustedProxies) -> IpAddr {
        resolve(ip(peer), [xff], t)
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(
            resolve_one("198.51.100.7", "203.0.113.9", &none),
            ip("198.51.100.7")
        );
        // Nor from a peer that is not listed.
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            resolve_one("198.51.100.7", "203.0.113.9", &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        assert_eq!(
            resolve_one("10.0.0.5", "203.0.113.9", &t),
            ip("203.0.113.9")
        );
        // Two proxies of ours: skip both.
        assert_eq!(
            resolve_one("127.0.0.1", "203.0.113.9, 10.1.2.3", &t),
            ip("203.0.113.9")
        );
        // Several headers are one list, in order.
        assert_eq!(
            resolve(ip("10.0.0.5"), ["203.0.113.9", "10.1.2.3"], &t),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn spoofed_leftmost_entries_are_never_believed() {
        let t = trusted(&["10.0.0.0/8"]);
        // The client wrote "1.2.3.4" (and a trusted-looking address) itself; our proxy appended
        // its real address.
        for xff in [
            "1.2.3.4, 203.0.113.9",
            "10.9.9.9, 203.0.113.9",
            "garbage, 203.0.113.9",
            "1.2.3.4, 5.6.7.8, 203.0.113.9",
        ] {
            assert_eq!(resolve_one("10.0.0.5", xff, &t), ip("203.0.113.9"), "{xff}");
        }
    }

    #[test]
    fn an_unreadable_entry_stops_at_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(resolve_one("10.0.0.5", "not-an-ip", &t), ip("10.0.0.5"));
        assert_eq!(
            resolve_one("10.0.0.5", "203.0.113.9, 10.0.0.7, bogus", &t),
            ip("10.0.0.5")
        );
        assert_eq!(
            resolve_one("10.0.0.5", "203.0.113.9, bogus, 10.0.0.7", &t),
            ip("10.0.0.7"),
            "the last hop we could read and trust"
        );
        // No header at all: the proxy itself.
        assert_eq!(resolve(ip("10.0.0.5"), [], &t), ip("10.0.0.5"));
        // Only our own proxies: the leftmost of them.
        assert_eq!(
            resolve_one("10.0.0.5", "10.0.0.9, 10.0.0.7", &t),
            ip("10.0.0.9")
        );
        // An endless chain of trusted hops is not walked to its end.
        let long = vec!["10.0.0.1"; 100].join(",");
        assert!(t.contains(resolve_one("10.0.0.5", &format!("203.0.113.9,{long}"), &t)));
    }

    #[test]
    fn ports_ipv6_and_mapped_addresses_are_understood() {
        let t = trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        assert_eq!(
            resolve_one("10.0.0.5", "203.0.113.9:4711", &t),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve_one("2001:db8:ffff::1", "[2001:db8::7]:443", &t),
            ip("2001:db8::7")
        );
        // The peer as an IPv4-mapped IPv6 address is the same trusted proxy.
        assert_eq!(
            resolve_one("::ffff:10.0.0.5", "::ffff:203.0.113.9", &t),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve_one("10.0.0.5", " 203.0.113.9 ,, ", &t),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_entries_parse_as_cidrs_or_addresses() {
        assert!(TrustedProxies::parse_entry("10.0.0.0/8").is_some());
        assert!(
            TrustedProxies::parse_entry("10.1.2.3/8").is_some(),
            "host bits dropped"
        );
        assert!(TrustedProxies::parse_entry("127.0.0.1").is_some());
        assert!(TrustedProxies::parse_entry("::1").is_some());
        assert!(TrustedProxies::parse_entry("10.0.0.0/33").is_none());
        assert!(TrustedProxies::parse_entry("proxy.local").is_none());
        let t = trusted(&["10.1.2.3/8"]);
        assert!(t.contains(ip("10.200.0.1")));
        assert!(!t.contains(ip("11.0.0.1")));
    }
}
