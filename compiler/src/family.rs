//! The vocabulary every writer shares: address family and transport protocol.
//!
//! It lives apart from any writer's model so the IR depends on no backend: the nftables,
//! iptables, userspace and IPVS writers all import it from here.

use std::net::IpAddr;

use ipnet::IpNet;

/// Address family. svcc owns `ip svcc` and `ip6 svcc` in nftables, one iptables ruleset per
/// family, and IPVS virtual servers of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ip,
            IpAddr::V6(_) => Family::Ip6,
        }
    }
    /// The keyword nft uses for the table family and for address payloads.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
    /// The loopback network, never a NodePort destination.
    pub fn loopback(self) -> IpNet {
        match self {
            Family::Ip => "127.0.0.0/8".parse().unwrap(),
            Family::Ip6 => "::1/128".parse().unwrap(),
        }
    }
}

/// A Service port's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

impl L4Proto {
    pub fn keyword(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
        }
    }
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        }
    }
}
