//! The userspace mode (`--backend userspace`): kube-proxy's first mode, rebuilt on svcc's
//! nftables layout.
//!
//! Every service port gets a proxy listener on the node (`svcc run` binds it, see the
//! runtime's `userspace` module) on a port of `--proxy-port-range`, and the rules send each
//! frontend's traffic there: a DNAT to `node IP . listener port` looked up in one map per
//! kind of frontend (`proxy-ports`: ClusterIP / externalIP / LB IP `. proto . port`;
//! `proxy-nodeports`: `proto . port` on the NodePort addresses), from pods and external
//! clients (prerouting) and from the node itself (output), as kube-proxy's
//! `KUBE-PORTALS-*` chains did. Without a node IP of the family, `redirect` (to the incoming
//! interface's primary address; loopback from the node) is used instead.
//!
//! What the nftables mode REJECTs or DROPs is filtered by the very same sets and chains
//! ([`crate::nft::build::skeleton`] and the elements of
//! [`crate::nft::build::service_port_parts`]): no endpoints, Local policy without local
//! endpoints, source ranges, invalid ClusterIP ports, unallocated service-CIDR addresses.
//!
//! Listener ports are assigned deterministically ([`assign`]): FNV-1a of the listener's name
//! picks a slot in the range, collisions probe upwards, and a long-running applier passes the
//! previous assignment so an unchanged service port keeps its port across syncs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::family::{Family, L4Proto};
use crate::ir::{Backend, FamilyIr, Ir, NodePortAddrs, PolicyChain, ServicePort, ServicePortName};
use crate::names;
use crate::nft::build::{endpoint_ids, service_port_parts, skeleton};
use crate::nft::model::*;

/// The map of ClusterIP / externalIP / LB IP frontends to their listener.
pub const PROXY_PORTS: &str = "proxy-ports";
/// The map of NodePorts to their listener.
pub const PROXY_NODEPORTS: &str = "proxy-nodeports";
/// Like [`PROXY_PORTS`], consulted only for pods and the node itself: external frontends of an
/// `externalTrafficPolicy: Local` service without local endpoints, which the nftables mode
/// short-circuits for those sources and drops for the others.
pub const PROXY_PORTS_SHORT: &str = "proxy-ports-short-circuit";
/// Like [`PROXY_NODEPORTS`], for the same short-circuit.
pub const PROXY_NODEPORTS_SHORT: &str = "proxy-nodeports-short-circuit";

/// Which of a service port's listeners: traffic of the internal policy (ClusterIP) or of the
/// external policy (NodePort, externalIPs, LB IPs). A service port has a separate external
/// listener only when the two policies pick differently (see [`plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Internal,
    External,
}

impl Role {
    pub fn keyword(self) -> &'static str {
        match self {
            Role::Internal => "internal",
            Role::External => "external",
        }
    }
}

/// One proxy listener: a service port of one family, in one role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    pub family: Family,
    pub name: ServicePortName,
    pub role: Role,
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, {})",
            self.name,
            self.name.protocol.keyword(),
            self.family.keyword(),
            self.role.keyword()
        )
    }
}

/// Where a service port's traffic goes in userspace mode: the listener of ClusterIP traffic
/// and of external traffic (None: not redirected; the filter rules decide, as in nftables
/// mode). SCTP has no listener: the userspace proxy does not support it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub internal: Option<Role>,
    pub external: Option<Role>,
    /// External traffic reaches the listener only from pods and the node (the short-circuit
    /// of `externalTrafficPolicy: Local`); from elsewhere the filter rules drop it.
    pub external_short_only: bool,
}

pub fn plan(sp: &ServicePort) -> Plan {
    if sp.protocol == L4Proto::Sctp {
        return Plan {
            internal: None,
            external: None,
            external_short_only: false,
        };
    }
    let d = sp.dispatch();
    let internal = d.internal.map(|_| Role::Internal);
    let short =
        sp.policy.external_local && d.uses_external_chain && (d.uses_cluster || d.uses_local);
    let external = match d.external {
        _ if !sp.externally_accessible() => None,
        // Nowhere to go but for pods and the node (eTP Local, no local endpoints).
        None if short => Some(Role::External),
        None => None,
        // Same endpoints whatever the source: share the ClusterIP listener.
        Some(c) if !sp.policy.external_local && d.internal == Some(c) => Some(Role::Internal),
        Some(_) => Some(Role::External),
    };
    Plan {
        internal,
        external,
        external_short_only: external.is_some() && d.external.is_none(),
    }
}

/// The endpoints a listener picks from for a client, as the nftables mode's chains decide:
/// the internal policy for [`Role::Internal`]; for [`Role::External`] the external policy,
/// except that with `externalTrafficPolicy: Local` pods (`cluster_cidrs`) and the node itself
/// (`client_is_local`) are short-circuited to the cluster endpoints (or the local ones when
/// there is no cluster chain), like the `external-…` chain.
pub fn endpoints_for<'a>(
    sp: &'a ServicePort,
    role: Role,
    client: IpAddr,
    cluster_cidrs: &[IpNet],
    client_is_local: bool,
) -> &'a [Backend] {
    let d = sp.dispatch();
    let of = |c: Option<PolicyChain>| match c {
        Some(PolicyChain::Cluster) => &sp.backends.cluster[..],
        Some(PolicyChain::Local) => &sp.backends.local[..],
        None => &[][..],
    };
    match role {
        Role::Internal => of(d.internal),
        Role::External => {
            if sp.policy.external_local
                && (client_is_local || cluster_cidrs.iter().any(|c| c.contains(&client)))
            {
                if d.uses_cluster {
                    &sp.backends.cluster
                } else {
                    &sp.backends.local
                }
            } else {
                of(d.external)
            }
        }
    }
}

/// Every listener of the IR, sorted.
pub fn listener_keys(ir: &Ir) -> Vec<ListenerKey> {
    let mut out = BTreeSet::new();
    for f in &ir.families {
        for sp in &f.service_ports {
            let p = plan(sp);
            for r in [p.internal, p.external].into_iter().flatten() {
                out.insert(ListenerKey {
                    family: f.family,
                    name: sp.name.clone(),
                    role: r,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// The preferred slot of a listener in a range of `size` ports: 32-bit FNV-1a of
/// `family/ns/svc/proto/port/role`, a fixed function of the names (as `names::endpoint_id_seed`).
pub fn port_seed(key: &ListenerKey, size: u32) -> u32 {
    let s = format!(
        "{}/{}/{}/{}/{}/{}",
        key.family.keyword(),
        key.name.namespace,
        key.name.name,
        key.name.protocol.keyword(),
        key.name.port,
        key.role.keyword()
    );
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % size.max(1)
}

/// Listener ports: key → port.
pub type Ports = BTreeMap<ListenerKey, u16>;

/// The result of [`assign`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub ports: Ports,
    /// Listeners that got no port: the range has no usable port left.
    pub unassigned: Vec<ListenerKey>,
}

/// Assigns a port of `range` to every key: its `previous` port when it had one (stable across
/// syncs), else its [`port_seed`] slot or the next one up (wrapping) that no other listener of
/// the same family and protocol holds and that `usable` accepts (the runtime: "binds"; a
/// compile: always). Keys are taken in order (sorted: the same inputs give the same ports).
pub fn assign(
    keys: &[ListenerKey],
    range: (u16, u16),
    previous: &Ports,
    mut usable: impl FnMut(&ListenerKey, u16) -> bool,
) -> Assignment {
    let (lo, hi) = range;
    let size = u32::from(hi) - u32::from(lo) + 1;
    let mut taken: BTreeSet<(Family, L4Proto, u16)> = BTreeSet::new();
    let mut out = Assignment::default();
    let slot = |k: &ListenerKey| (k.family, k.name.protocol);
    for k in keys {
        if let Some(&p) = previous.get(k) {
            if p >= lo && p <= hi && taken.insert((slot(k).0, slot(k).1, p)) {
                out.ports.insert(k.clone(), p);
            }
        }
    }
    for k in keys {
        if out.ports.contains_key(k) {
            continue;
        }
        let seed = port_seed(k, size);
        let mut found = None;
        for i in 0..size {
            let p = (u32::from(lo) + (seed + i) % size) as u16;
            let t = (slot(k).0, slot(k).1, p);
            if taken.contains(&t) || !usable(k, p) {
                continue;
            }
            taken.insert(t);
            found = Some(p);
            break;
        }
        match found {
            Some(p) => {
                out.ports.insert(k.clone(), p);
            }
            None => out.unassigned.push(k.clone()),
        }
    }
    out
}

/// The userspace mode's tables (`ip svcc` / `ip6 svcc`): the nftables mode's filter chains and
/// sets, and DNAT (or `redirect`) of every frontend with a listener to it.
/// The DNAT target of each family is its first node IP.
pub fn build(ir: &Ir, ports: &Ports) -> Ruleset {
    build_with_targets(ir, ports, &BTreeMap::new())
}

/// [`build`], with the DNAT target of the families without a node IP given (`svcc run` picks
/// a local address); a family with neither uses `redirect`.
pub fn build_with_targets(ir: &Ir, ports: &Ports, targets: &BTreeMap<Family, IpAddr>) -> Ruleset {
    Ruleset {
        tables: ir
            .families
            .iter()
            .map(|f| {
                let t = f
                    .node_ips
                    .first()
                    .copied()
                    .or_else(|| targets.get(&f.family).copied());
                build_table(f, ports, t)
            })
            .collect(),
    }
}

/// Sets of the nftables layout the userspace mode uses (filtering only).
const KEPT_SETS: [&str; 8] = [
    names::CLUSTER_CIDRS,
    names::CLUSTER_IPS,
    names::NODEPORT_IPS,
    names::NO_ENDPOINT_SERVICES,
    names::NO_ENDPOINT_NODEPORTS,
    names::FIREWALL_IPS,
    names::FIREWALL_ALLOW,
    names::SERVICE_CIDRS,
];

/// Chains of the nftables layout the userspace mode uses (`services` gets its own rules).
const KEPT_CHAINS: [&str; 13] = [
    names::FILTER_PREROUTING_PRE_DNAT,
    names::FILTER_OUTPUT_PRE_DNAT,
    names::NAT_PREROUTING,
    names::NAT_OUTPUT,
    names::FILTER_INPUT,
    names::FILTER_FORWARD,
    names::FILTER_OUTPUT,
    names::SERVICES,
    names::REJECT_CHAIN,
    names::FIREWALL_CHECK,
    names::SERVICE_ENDPOINTS_CHECK,
    names::NODEPORT_ENDPOINTS_CHECK,
    names::CLUSTER_IPS_CHECK,
    // (not masquerading, mark-for-masquerade, nat-postrouting: the proxy connects from the
    // node, so nothing is masqueraded)
];

fn build_table(f: &FamilyIr, ports: &Ports, target: Option<IpAddr>) -> Table {
    let ids = endpoint_ids(f);
    let mut t = skeleton(f, &ids);
    t.sets.retain(|s| KEPT_SETS.contains(&s.name.as_str()));
    t.chains.retain(|c| KEPT_CHAINS.contains(&c.name.as_str()));
    let fam = f.family;
    let addr = fam.addr_type();
    // The DNAT target: the primary node IP of the family (kube-proxy's `hostIP`).
    let data = match target {
        Some(_) => vec![addr, DataType::InetService],
        None => vec![DataType::InetService],
    };
    let mut proxy_ports = Set {
        name: PROXY_PORTS.into(),
        key: vec![addr, DataType::InetProto, DataType::InetService],
        data: Some(SetData::Values(data.clone())),
        flags: SetFlags::default(),
        timeout: None,
        size: None,
        comment: Some("ClusterIP, ExternalIP and LoadBalancer IP traffic -> proxy listener".into()),
        elements: Vec::new(),
    };
    let mut proxy_nodeports = Set {
        name: PROXY_NODEPORTS.into(),
        key: vec![DataType::InetProto, DataType::InetService],
        comment: Some("NodePort traffic -> proxy listener".into()),
        ..proxy_ports.clone()
    };
    let mut short_ports = Set {
        name: PROXY_PORTS_SHORT.into(),
        comment: Some("external frontends of eTP Local without local endpoints, for pods and the node -> proxy listener".into()),
        ..proxy_ports.clone()
    };
    let mut short_nodeports = Set {
        name: PROXY_NODEPORTS_SHORT.into(),
        comment: Some("NodePorts of eTP Local without local endpoints, for pods and the node -> proxy listener".into()),
        ..proxy_nodeports.clone()
    };
    let to = |port: u16| -> ElemData {
        ElemData::Values(match target {
            Some(a) => vec![Value::Addr(a), Value::Port(port)],
            None => vec![Value::Port(port)],
        })
    };
    let index: BTreeMap<String, usize> = t
        .sets
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    let mut cluster_ips = Vec::new();
    for sp in &f.service_ports {
        // The filter elements, exactly as the nftables mode writes them.
        for (name, e) in service_port_parts(f, sp, &ids).elements {
            if name == names::CLUSTER_IPS {
                cluster_ips.push(e);
            } else if let Some(&i) = index.get(name) {
                t.sets[i].elements.push(e);
            }
        }
        let p = plan(sp);
        let port_of = |r: Option<Role>| {
            r.and_then(|role| {
                ports.get(&ListenerKey {
                    family: fam,
                    name: sp.name.clone(),
                    role,
                })
            })
        };
        let spn: std::sync::Arc<str> = sp.name.to_string().into();
        for fe in &sp.frontends {
            let cluster_ip = fe.kind == crate::ir::FrontendKind::ClusterIp;
            let role = if cluster_ip { p.internal } else { p.external };
            let short = !cluster_ip && p.external_short_only;
            let Some(&port) = port_of(role) else { continue };
            let elem = |key: Vec<Value>| Element {
                key,
                data: Some(to(port)),
                comment: Some(spn.clone()),
            };
            let (by_addr, by_port) = if short {
                (&mut short_ports, &mut short_nodeports)
            } else {
                (&mut proxy_ports, &mut proxy_nodeports)
            };
            match fe.addr {
                Some(a) => by_addr.elements.push(elem(vec![
                    Value::Addr(a),
                    Value::Proto(sp.protocol),
                    Value::Port(fe.port),
                ])),
                None => by_port
                    .elements
                    .push(elem(vec![Value::Proto(sp.protocol), Value::Port(fe.port)])),
            }
        }
    }
    cluster_ips.sort_by(|a, b| a.key.cmp(&b.key));
    cluster_ips.dedup_by(|a, b| a.key == b.key);
    t.sets[index[names::CLUSTER_IPS]]
        .elements
        .extend(cluster_ips);
    t.sets.push(proxy_ports);
    t.sets.push(proxy_nodeports);
    t.sets.push(short_ports);
    t.sets.push(short_nodeports);

    let stmt = |key: Vec<Field>, map: &str| match target {
        Some(_) => Stmt::DnatMap {
            key,
            map: map.into(),
        },
        None => Stmt::RedirectMap {
            key,
            map: map.into(),
        },
    };
    let mut np = Rule::new();
    np.matches = match &f.node_ports_on {
        NodePortAddrs::Addrs(_) => vec![Match::Daddr {
            negate: false,
            addr: AddrMatch::Set(names::NODEPORT_IPS.into()),
        }],
        NodePortAddrs::AllLocal => vec![
            Match::FibDaddrLocal,
            Match::Daddr {
                negate: true,
                addr: AddrMatch::Net(fam.loopback()),
            },
        ],
    };
    let svc = Rule::new()
        .s(stmt(
            vec![Field::Daddr, Field::L4Proto, Field::Dport],
            PROXY_PORTS,
        ))
        .comment("to the proxy listener");
    let np_match = np.matches.clone();
    let np = np
        .s(stmt(vec![Field::L4Proto, Field::Dport], PROXY_NODEPORTS))
        .comment("NodePorts to the proxy listener");
    // The short-circuit of eTP Local, for pods (the local-traffic detector) and the node.
    let mut short = Vec::new();
    for src in [
        Match::Saddr {
            negate: false,
            addr: AddrMatch::Set(names::CLUSTER_CIDRS.into()),
        },
        Match::FibSaddrLocal,
    ] {
        let mut r = Rule::new().m(src.clone());
        r = r.s(stmt(
            vec![Field::Daddr, Field::L4Proto, Field::Dport],
            PROXY_PORTS_SHORT,
        ));
        short.push(r.comment("eTP Local short-circuit to the proxy listener"));
        let mut r = Rule::new().m(src);
        r.matches.extend(np_match.iter().cloned());
        r = r.s(stmt(
            vec![Field::L4Proto, Field::Dport],
            PROXY_NODEPORTS_SHORT,
        ));
        short.push(r.comment("eTP Local short-circuit of NodePorts to the proxy listener"));
    }
    let services = if target.is_some() {
        let mut v = vec![svc, np];
        v.extend(short);
        v
    } else {
        // `redirect` to a port needs the transport protocol known: one rule per protocol.
        let with = |r: &Rule, p: L4Proto| {
            let mut r = r.clone();
            r.matches.push(Match::L4Proto(p));
            r
        };
        let mut v = Vec::new();
        for r in std::iter::once(&svc)
            .chain(std::iter::once(&np))
            .chain(&short)
        {
            v.push(with(r, L4Proto::Tcp));
            v.push(with(r, L4Proto::Udp));
        }
        v
    };
    if let Some(c) = t.chains.iter_mut().find(|c| c.name == names::SERVICES) {
        c.rules = services;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, proto: L4Proto) -> ListenerKey {
        ListenerKey {
            family: Family::Ip,
            name: ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: "p".into(),
                protocol: proto,
            },
            role: Role::Internal,
        }
    }

    #[test]
    fn ports_are_stable_unique_and_probe() {
        let keys: Vec<ListenerKey> = (0..20)
            .map(|i| key(&format!("s{i}"), L4Proto::Tcp))
            .collect();
        let a = assign(&keys, (40000, 40019), &Ports::new(), |_, _| true);
        assert!(a.unassigned.is_empty());
        let mut seen: Vec<u16> = a.ports.values().copied().collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 20, "every port of a full range used once");
        // Same input, same ports; a removed key frees its port and changes nobody else's.
        let b = assign(&keys[1..], (40000, 40019), &a.ports, |_, _| true);
        for k in &keys[1..] {
            assert_eq!(a.ports[k], b.ports[k]);
        }
        // Too small a range: the rest are named.
        let c = assign(&keys, (40000, 40009), &Ports::new(), |_, _| true);
        assert_eq!(c.ports.len(), 10);
        assert_eq!(c.unassigned.len(), 10);
        // A port that cannot be bound is skipped.
        let d = assign(&keys[..1], (40000, 40019), &Ports::new(), |_, p| {
            p != a.ports[&keys[0]]
        });
        assert_ne!(d.ports[&keys[0]], a.ports[&keys[0]]);
        // TCP and UDP may share a number.
        let u = key("s0", L4Proto::Udp);
        let e = assign(
            &[keys[0].clone(), u.clone()],
            (40000, 40000),
            &Ports::new(),
            |_, _| true,
        );
        assert_eq!(e.ports.len(), 2);
    }
}
