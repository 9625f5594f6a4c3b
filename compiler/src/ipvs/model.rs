//! The IPVS object model: what svcc asks the kernel's IP Virtual Server to hold, plus the
//! addresses for svcc's dummy interface and the nftables glue for what IPVS cannot do.
//!
//! [`super::render`] prints it as `ipvsadm-restore` text; the runtime programs the same
//! values over generic netlink (family `IPVS`) and rtnetlink. Types are stable: add, don't
//! rename (the runtime builds on them).

use std::fmt;
use std::net::IpAddr;

use crate::family::{Family, L4Proto};
use crate::ir::FrontendKind;
use crate::nft::model::Ruleset;

/// svcc's own dummy interface (kube-proxy's `kube-ipvs0`): IPVS only schedules packets routed
/// to a local address, so every VIP that is not already a node address sits here.
pub const DUMMY_IFACE: &str = "svcc-ipvs0";

/// `IP_VS_SVC_F_PERSISTENT`: ClientIP affinity.
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_SCHED1`: `sh-fallback` / `mh-fallback`.
pub const SVC_F_SCHED1: u32 = 0x8;
/// `IP_VS_SVC_F_SCHED2`: `sh-port` / `mh-port`.
pub const SVC_F_SCHED2: u32 = 0x10;

/// An IPVS scheduler svcc accepts (the kernel's `ip_vs_<name>` modules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Scheduler {
    /// Round robin (kube-proxy's default).
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection.
    Wlc,
    /// Locality-based least connection.
    Lblc,
    /// Locality-based least connection with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing.
    Mh,
}

impl Scheduler {
    pub const ALL: [Scheduler; 11] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
    ];

    /// The kernel's scheduler name (`IPVS_SVC_ATTR_SCHED_NAME`, `ipvsadm -s`).
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Dh => "dh",
            Scheduler::Sh => "sh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Mh => "mh",
        }
    }

    /// The scheduler named `s` (kube-proxy: empty means `rr`).
    pub fn parse(s: &str) -> Option<Scheduler> {
        if s.is_empty() {
            return Some(Scheduler::Rr);
        }
        Scheduler::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The kernel module that provides it (named in "missing module" errors).
    pub fn module(self) -> String {
        format!("ip_vs_{}", self.name())
    }

    /// Whether the scheduler knows the `*-fallback` / `*-port` flags (sh and mh only).
    pub fn has_flags(self) -> bool {
        matches!(self, Scheduler::Sh | Scheduler::Mh)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hashing schedulers' flags (`sh-fallback`, `sh-port`, `mh-fallback`, `mh-port`);
/// meaningless (and never set) for the other schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SchedFlags {
    /// `*-fallback` (`IP_VS_SVC_F_SCHED1`): pick another destination when the hashed one is
    /// unavailable (weight 0 or overloaded) instead of refusing the connection.
    pub fallback: bool,
    /// `*-port` (`IP_VS_SVC_F_SCHED2`): hash the source port too.
    pub port: bool,
}

/// ClientIP session affinity as IPVS persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Persistence {
    /// `IPVS_SVC_ATTR_TIMEOUT`, seconds (`ipvsadm -p`).
    pub timeout: u32,
    /// Client prefix length grouped by one template: 32 (IPv4) / 128 (IPv6), per client IP.
    pub netmask: u8,
}

/// How a virtual server is identified in the kernel (`ip:port/PROTO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VsKey {
    pub family: Family,
    pub protocol: L4Proto,
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for VsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port)?,
        }
        write!(f, "/{}", self.protocol.keyword().to_uppercase())
    }
}

/// A real server (IPVS destination). The forwarding method is always masquerade (NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    /// 1 for every endpoint svcc wants (as kube-proxy: `wrr`/`wlc` then act like `rr`/`lc`).
    /// 0 = quiesced: a terminating destination that keeps its established connections but gets
    /// no new ones (graceful termination; the runtime sets it and deletes the destination when
    /// its connection counts reach 0).
    pub weight: u32,
}

impl RealServer {
    pub const WEIGHT: u32 = 1;
    pub fn is_terminating(&self) -> bool {
        self.weight == 0
    }
}

/// One IPVS virtual server: a frontend (address, port, protocol) of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    pub family: Family,
    pub protocol: L4Proto,
    pub addr: IpAddr,
    pub port: u16,
    pub scheduler: Scheduler,
    pub sched_flags: SchedFlags,
    /// Some for ClientIP affinity.
    pub persistence: Option<Persistence>,
    /// Sorted by (address, port); may be empty (the glue rejects or drops such frontends before
    /// IPVS sees them).
    pub real_servers: Vec<RealServer>,
    /// Which frontend of the Service port this is.
    pub kind: FrontendKind,
    /// Provenance: `namespace/name:port`.
    pub comment: String,
}

impl VirtualServer {
    pub fn key(&self) -> VsKey {
        VsKey {
            family: self.family,
            protocol: self.protocol,
            addr: self.addr,
            port: self.port,
        }
    }

    /// `IPVS_SVC_ATTR_FLAGS` (the mask svcc sends with it is all ones).
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.persistence.is_some() {
            f |= SVC_F_PERSISTENT;
        }
        if self.scheduler.has_flags() {
            if self.sched_flags.fallback {
                f |= SVC_F_SCHED1;
            }
            if self.sched_flags.port {
                f |= SVC_F_SCHED2;
            }
        }
        f
    }

    /// `IPVS_SVC_ATTR_TIMEOUT`: the persistence timeout, 0 without persistence.
    pub fn timeout(&self) -> u32 {
        self.persistence.map_or(0, |p| p.timeout)
    }

    /// `IPVS_SVC_ATTR_NETMASK` as a prefix length (kube-proxy: /32 or /128).
    pub fn netmask(&self) -> u8 {
        match self.persistence {
            Some(p) => p.netmask,
            None => full_prefix(self.family),
        }
    }
}

/// 32 or 128.
pub fn full_prefix(f: Family) -> u8 {
    match f {
        Family::Ip => 32,
        Family::Ip6 => 128,
    }
}

/// IPVS's global connection timeouts (`ipvsadm --set`; `IPVS_CMD_SET_CONFIG`), in seconds.
/// None keeps the system's value (kube-proxy's 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub tcp: Option<u32>,
    pub tcp_fin: Option<u32>,
    pub udp: Option<u32>,
}

impl Timeouts {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_none() && self.tcp_fin.is_none() && self.udp.is_none()
    }
}

/// Everything the IPVS mode programs on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvsModel {
    /// Sorted by [`VsKey`]; one per (frontend address, port, protocol).
    pub services: Vec<VirtualServer>,
    /// Sorted, deduplicated: the VIPs to bind on [`DUMMY_IFACE`].
    pub dummy_addrs: Vec<IpAddr>,
    /// The nftables glue (tables `ip svcc` / `ip6 svcc`): masquerade, source ranges,
    /// REJECT/DROP, the VIP port filter.
    pub glue: Ruleset,
    pub timeouts: Timeouts,
}

impl IpvsModel {
    pub fn service(&self, key: &VsKey) -> Option<&VirtualServer> {
        self.services
            .binary_search_by(|v| v.key().cmp(key))
            .ok()
            .map(|i| &self.services[i])
    }

    /// Counts for logs, metrics and tests.
    pub fn stats(&self) -> Stats {
        Stats {
            services: self.services.len(),
            real_servers: self.services.iter().map(|s| s.real_servers.len()).sum(),
            dummy_addrs: self.dummy_addrs.len(),
            glue: self.glue.stats(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub services: usize,
    pub real_servers: usize,
    pub dummy_addrs: usize,
    pub glue: crate::nft::model::Stats,
}
