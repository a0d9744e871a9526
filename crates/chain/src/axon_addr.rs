//! The chain's encoding of an axon address: an ip as `u128` plus an `ip_type` of 4 or 6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `ip_type` of an IPv4 address on chain.
pub const IP_TYPE_V4: u8 = 4;
/// `ip_type` of an IPv6 address on chain.
pub const IP_TYPE_V6: u8 = 6;

/// Formats an on-chain axon address as `ip:port` (`[v6]:port` for IPv6).
///
/// An ip of 0 means "never served" and gives `None`. An `ip_type` other than 4 or 6 is
/// inferred from the value, as the Python SDK does.
pub fn format_axon(ip: u128, ip_type: u8, port: u16) -> Option<String> {
    if ip == 0 {
        return None;
    }
    let addr = match (ip_type, u32::try_from(ip)) {
        (IP_TYPE_V4, Ok(v4)) => IpAddr::V4(Ipv4Addr::from(v4)),
        (IP_TYPE_V6, _) => IpAddr::V6(Ipv6Addr::from(ip)),
        (IP_TYPE_V4, Err(_)) => return None,
        (_, Ok(v4)) => IpAddr::V4(Ipv4Addr::from(v4)),
        (_, Err(_)) => IpAddr::V6(Ipv6Addr::from(ip)),
    };
    Some(SocketAddr::new(addr, port).to_string())
}

/// The chain's `(ip, ip_type)` for an address; IPv4-mapped IPv6 addresses count as IPv4.
pub fn encode_ip(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), IP_TYPE_V4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), IP_TYPE_V4),
            None => (u128::from(v6), IP_TYPE_V6),
        },
    }
}

/// Why an axon at `addr` cannot be published, if it cannot: subtensor refuses the address
/// (`InvalidIpAddress` for `127.0.0.1`, `::1`, `255.255.255.255` and the all-ones IPv6
/// address; `InvalidPort` for port 0) or validators could not dial it (any loopback, the
/// unspecified or a multicast address). IPv4-mapped IPv6 addresses are judged as the IPv4
/// address they are published as.
pub fn unservable_reason(addr: SocketAddr) -> Option<&'static str> {
    if addr.port() == 0 {
        return Some("port 0 is refused by subtensor (InvalidPort)");
    }
    let ip = addr.ip().to_canonical();
    if ip.is_unspecified() {
        return Some("the unspecified address cannot be dialled by validators");
    }
    if ip.is_loopback() {
        return Some(
            "a loopback address: subtensor refuses 127.0.0.1 and ::1 (InvalidIpAddress) and \
             validators cannot reach any loopback address",
        );
    }
    let all_ones = match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::BROADCAST,
        IpAddr::V6(v6) => u128::from(v6) == u128::MAX,
    };
    if all_ones {
        return Some("the all-ones address is refused by subtensor (InvalidIpAddress)");
    }
    if ip.is_multicast() {
        return Some("a multicast address cannot be served");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_v4_v6_and_unset() {
        assert_eq!(
            format_axon(0x0102_0304, 4, 8091).as_deref(),
            Some("1.2.3.4:8091")
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().expect("literal");
        assert_eq!(
            format_axon(u128::from(v6), 6, 443).as_deref(),
            Some("[2001:db8::1]:443")
        );
        assert_eq!(format_axon(0, 4, 8091), None);
        assert_eq!(format_axon(0, 0, 0), None);
        // A v4 type with a value that cannot be v4 is rejected rather than truncated.
        assert_eq!(format_axon(u128::from(v6), 4, 1), None);
        // Unknown type: inferred from the value.
        assert_eq!(
            format_axon(0x7f00_0001, 0, 1).as_deref(),
            Some("127.0.0.1:1")
        );
    }

    #[test]
    fn loopback_and_other_unservable_addresses_are_named() {
        for text in [
            "127.0.0.1:8091",
            "127.0.0.2:8091",
            "[::1]:8091",
            "[::ffff:127.0.0.1]:8091",
            "0.0.0.0:8091",
            "[::]:8091",
            "255.255.255.255:8091",
            "224.0.0.1:8091",
            "203.0.113.5:0",
        ] {
            let addr: SocketAddr = text.parse().expect("literal");
            assert!(
                unservable_reason(addr).is_some(),
                "{text} should be refused"
            );
        }
        assert!(
            unservable_reason("127.0.0.1:1".parse().expect("literal"))
                .is_some_and(|why| why.contains("InvalidIpAddress"))
        );
        for text in [
            "203.0.113.5:8091",
            "[2001:db8::5]:9000",
            "[::ffff:10.1.2.3]:1",
        ] {
            let addr: SocketAddr = text.parse().expect("literal");
            assert_eq!(unservable_reason(addr), None, "{text}");
        }
    }

    #[test]
    fn encodes_and_formats_back() {
        for text in ["203.0.113.7", "2001:db8::42", "::ffff:10.1.2.3"] {
            let ip: IpAddr = text.parse().expect("literal");
            let (value, ip_type) = encode_ip(ip);
            let formatted = format_axon(value, ip_type, 9000).expect("non-zero ip");
            let back: SocketAddr = formatted.parse().expect("socket address");
            assert_eq!(back.port(), 9000);
            match ip {
                IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                    assert_eq!(ip_type, IP_TYPE_V4);
                    assert_eq!(back.ip(), IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")));
                }
                _ => assert_eq!(back.ip(), ip),
            }
        }
        assert_eq!(
            encode_ip("1.2.3.4".parse().expect("literal")),
            (0x0102_0304, 4)
        );
    }
}
