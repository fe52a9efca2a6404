//! `[rate_limit] trusted_proxies`: IP networks written as CIDRs (`10.0.0.0/8`, `::1/128`).
//!
//! Parsed here rather than with a crate: the need is one `contains` test, and the parse
//! errors can then say exactly what to write instead.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: an address whose host bits are zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, as
    /// a dual-stack socket reports IPv4 peers) is the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == u32::from(network),
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                mask_v6(ip, self.prefix) == u128::from(network)
            }
            _ => false,
        }
    }

    /// The prefix length (0 means every address of its family).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> u32 {
    // `checked_shl` because shifting a u32 by 32 overflows: /0 keeps no bits.
    u32::from(ip) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> u128 {
    u128::from(ip) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Why a CIDR was refused; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS/PREFIX`, or a bare address meaning that one address (`/32` or `/128`).
    /// Host bits must be zero: `10.1.2.3/8` is refused rather than silently widened, since
    /// it usually means a mistyped prefix.
    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            CidrError(format!(
                "invalid network {text:?}: expected an IP address or CIDR such as \"10.0.0.0/8\" or \"::1/128\""
            ))
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(digits) => match digits.parse::<u8>() {
                Ok(prefix) if prefix <= max && digits.bytes().all(|b| b.is_ascii_digit()) => prefix,
                _ => {
                    return Err(CidrError(format!(
                        "invalid network {text:?}: the prefix length must be 0 to {max}"
                    )))
                }
            },
        };
        let masked = match network {
            IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(mask_v4(ip, prefix))),
            IpAddr::V6(ip) => IpAddr::V6(Ipv6Addr::from(mask_v6(ip, prefix))),
        };
        if masked != network {
            return Err(CidrError(format!(
                "invalid network {text:?}: host bits are set; write \"{masked}/{prefix}\" for the network, or \"{network}\" for one address"
            )));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.255.0.1")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        assert!(!ten.contains(ip("::1")));

        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));

        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let loopback: Cidr = "::1/128".parse().unwrap();
        assert!(loopback.contains(ip("::1")));

        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.prefix(), 0);
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_networks_say_what_to_write() {
        let error = |text: &str| text.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            error("10.1.2.3/8"),
            "invalid network \"10.1.2.3/8\": host bits are set; write \"10.0.0.0/8\" for the network, or \"10.1.2.3\" for one address"
        );
        assert!(error("10.0.0.0/33").ends_with("the prefix length must be 0 to 32"));
        assert!(error("::/129").ends_with("the prefix length must be 0 to 128"));
        assert!(error("10.0.0.0/+8").ends_with("the prefix length must be 0 to 32"));
        assert!(error("10.0.0.0/").ends_with("the prefix length must be 0 to 32"));
        assert!(error("localhost/8").contains("expected an IP address or CIDR"));
        assert!(error("").contains("expected an IP address or CIDR"));
        assert!(error("10.0.0.0/8 ").contains("prefix length"));
    }
}
