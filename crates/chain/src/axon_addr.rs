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
