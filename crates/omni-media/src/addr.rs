//! The address classifier behind the SSRF checks: which IP addresses a fetch may connect to.
//!
//! Pure and table-driven, so every class is unit-tested without a network. An address is
//! refused when it falls in any special-purpose range (loopback, private, link-local with the
//! cloud metadata address, CGNAT, multicast, documentation, reserved, …) unless the operator
//! listed a network containing it. IPv6 forms that embed an IPv4 address (IPv4-mapped,
//! IPv4-compatible, NAT64, 6to4) are judged by the embedded address, so `[::ffff:127.0.0.1]`
//! is loopback.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Networks the operator allows despite their class (e.g. `127.0.0.1/32` for a local test
/// server, or an internal media host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedNetworks(Vec<IpNet>);

impl AllowedNetworks {
    /// Wraps the operator's list; empty allows no special-purpose address.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// The listed networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// `Err(class)` when `ip` may not be connected to, naming its class for the error message.
    /// An address (or the IPv4 address it embeds) inside a listed network is allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let Some(class) = forbidden_class(ip) else {
            return Ok(());
        };
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        if self.contains(ip) || embedded.is_some_and(|v4| self.contains(v4)) {
            Ok(())
        } else {
            Err(class)
        }
    }
}

/// The special-purpose class of `ip`, or `None` for an ordinary public address.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// IPv4 special-purpose ranges (RFC 6890 and friends), most specific first.
const V4_RANGES: &[(u32, u8, &str)] = &[
    (0xffff_ffff, 32, "broadcast"),
    (0x0000_0000, 8, "unspecified"), // 0.0.0.0/8 "this network", 0.0.0.0 included
    (0x7f00_0000, 8, "loopback"),    // 127/8
    (0x0a00_0000, 8, "private"),     // 10/8
    (0xac10_0000, 12, "private"),    // 172.16/12
    (0xc0a8_0000, 16, "private"),    // 192.168/16
    (0xa9fe_0000, 16, "link-local"), // 169.254/16, cloud metadata 169.254.169.254
    (0x6440_0000, 10, "shared (cgnat)"), // 100.64/10
    (0xc000_0000, 24, "reserved"),   // 192.0.0/24 IETF protocol assignments
    (0xc000_0200, 24, "documentation"), // 192.0.2/24
    (0xc633_6400, 24, "documentation"), // 198.51.100/24
    (0xcb00_7100, 24, "documentation"), // 203.0.113/24
    (0xc612_0000, 15, "benchmarking"), // 198.18/15
    (0xe000_0000, 4, "multicast"),   // 224/4
    (0xf000_0000, 4, "reserved"),    // 240/4
];

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RANGES.iter().find_map(|&(net, len, class)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (bits & mask == net).then_some(class)
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = embedded_v4(ip) {
        return v4_class(v4);
    }
    let s = ip.segments();
    match s[0] {
        0xfc00..=0xfdff => Some("private"),    // fc00::/7 unique local
        0xfe80..=0xfebf => Some("link-local"), // fe80::/10
        0xfec0..=0xfeff => Some("private"),    // fec0::/10 old site-local
        0xff00..=0xffff => Some("multicast"),  // ff00::/8
        0x2001 if s[1] == 0x0db8 => Some("documentation"), // 2001:db8::/32
        0x3fff if s[1] <= 0x0fff => Some("documentation"), // 3fff::/20
        0x2001 if s[1] == 0x0002 && s[2] == 0 => Some("benchmarking"), // 2001:2::/48
        0x0064 if s[1] == 0xff9b && s[2] == 0x0001 => Some("private"), // 64:ff9b:1::/48 local NAT64
        0x0100 if s[1..4] == [0, 0, 0] => Some("discard"), // 100::/64
        0x0000 => Some("reserved"),            // the rest of ::/16 (IPv4-compatible handled above)
        _ => None,
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, and 6to4 `2002:AABB:CCDD::/48`.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // IPv4-compatible; `::` and `::1` are judged as IPv6 before this is asked.
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        forbidden_class(s.parse().unwrap())
    }

    #[test]
    fn every_special_ipv4_class_is_refused() {
        for (ip, want) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("100.64.0.1", "shared (cgnat)"),
            ("100.127.255.255", "shared (cgnat)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.0.8", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
        ] {
            assert_eq!(class(ip), Some(want), "{ip}");
        }
    }

    #[test]
    fn public_ipv4_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn every_special_ipv6_class_is_refused() {
        for (ip, want) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:0:1", "unspecified"),
        ] {
            assert_eq!(class(ip), Some(want), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address() {
        for (ip, want) in [
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::127.0.0.1", Some("loopback")),
            ("::10.0.0.1", Some("private")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("2002:7f00:1::1", Some("loopback")),
            ("2002:c0a8:101::1", Some("private")),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn public_ipv6_addresses_pass() {
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "2001:4860::8888",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn allowed_networks_override_the_class_and_nothing_else() {
        let allowed = AllowedNetworks::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.20.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        let ok = |s: &str| allowed.check(s.parse().unwrap());
        assert_eq!(ok("127.0.0.1"), Ok(()));
        assert_eq!(ok("::ffff:127.0.0.1"), Ok(()));
        assert_eq!(ok("10.20.3.4"), Ok(()));
        assert_eq!(ok("fd00::5"), Ok(()));
        assert_eq!(ok("127.0.0.2"), Err("loopback"));
        assert_eq!(ok("::1"), Err("loopback"));
        assert_eq!(ok("10.21.0.1"), Err("private"));
        assert_eq!(ok("169.254.169.254"), Err("link-local"));
        assert_eq!(ok("8.8.8.8"), Ok(()));
    }

    #[test]
    fn the_default_allows_no_special_address() {
        let none = AllowedNetworks::default();
        assert_eq!(none.check("127.0.0.1".parse().unwrap()), Err("loopback"));
        assert_eq!(
            none.check("::ffff:10.0.0.1".parse().unwrap()),
            Err("private")
        );
    }
}
