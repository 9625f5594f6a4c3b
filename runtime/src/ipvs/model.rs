//! The compiler's [`IpvsModel`] as the applier's [`Desired`] state, and the node's local
//! addresses the IPVS build needs (NodePort virtual servers on each; external/LB IPs that are
//! already local are not bound to svcc-ipvs0).

use std::collections::BTreeMap;
use std::net::IpAddr;

use svcc_compiler::family::L4Proto;
use svcc_compiler::ipvs::model::IpvsModel;

use super::applier::{Desired, WantedService};
use super::genl::{SvcKey, SvcParams, Timeouts};
use super::link::{LinkError, Links, DUMMY};

fn proto_number(p: L4Proto) -> u16 {
    match p {
        L4Proto::Tcp => libc::IPPROTO_TCP as u16,
        L4Proto::Udp => libc::IPPROTO_UDP as u16,
        L4Proto::Sctp => libc::IPPROTO_SCTP as u16,
    }
}

/// The applier's view of `m`. Weight-0 real servers (terminating) stay listed with weight
/// 0: the applier quiesces them if present and never adds them.
pub fn desired(m: &IpvsModel, strict_arp: bool) -> Desired {
    let mut services = BTreeMap::new();
    for v in &m.services {
        let key = SvcKey {
            addr: v.addr,
            proto: proto_number(v.protocol),
            port: v.port,
        };
        let dests = v
            .real_servers
            .iter()
            .map(|r| ((r.addr, r.port), r.weight))
            .collect();
        services.insert(
            key,
            WantedService {
                params: SvcParams {
                    sched: v.scheduler.name().to_string(),
                    flags: v.flags(),
                    timeout: v.timeout(),
                    netmask: v.netmask(),
                },
                dests,
                origin: format!("{} {:?}", v.comment, v.kind),
            },
        );
    }
    Desired {
        services,
        bind: m.dummy_addrs.iter().copied().collect(),
        timeouts: Timeouts {
            tcp: m.timeouts.tcp.unwrap_or(0),
            tcp_fin: m.timeouts.tcp_fin.unwrap_or(0),
            udp: m.timeouts.udp.unwrap_or(0),
        },
        strict_arp,
        glue: m.glue.clone(),
    }
}

/// The node's addresses for the IPVS build, as kube-proxy lists them: every interface's but
/// svcc-ipvs0's, without loopback and IPv6 link-local ones. Sorted, deduplicated.
pub fn local_addrs() -> Result<Vec<IpAddr>, LinkError> {
    let mut l = Links::open()?;
    let dummy = l.index(DUMMY)?;
    let mut v: Vec<IpAddr> = l
        .addresses()?
        .into_iter()
        .filter(|a| Some(a.index) != dummy)
        .map(|a| a.addr)
        .filter(|a| match a {
            IpAddr::V4(a) => !a.is_loopback(),
            IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}
