//! IR → [`IpvsModel`]: a virtual server per frontend (ClusterIP, external IPs, LB ingress
//! IPs, NodePort on each NodePort address), real servers chosen by
//! [`ServicePort::dispatch`], the VIPs for [`DUMMY_IFACE`], and the nftables glue.
//!
//! The glue is one table per family (`ip svcc` / `ip6 svcc`, the nftables mode's names, as
//! the modes exclude each other) with a fixed list of sets keyed like the nftables mode's
//! (`address . protocol . port`); its rules never grow with the number of services. Hook
//! order decides where each check sits: IPVS schedules in LOCAL_IN at priority 98/99 (after
//! filter input 0, which still sees the VIP) and in LOCAL_OUT at -99/-98 (after nat output
//! -100, before filter output 0), so every check on the VIP runs in prerouting, input or an
//! output chain at -110, and masquerade decisions are marks set in nat prerouting/output and
//! applied in postrouting (see docs/ARCHITECTURE.md, "The IPVS layout (and why)").

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::*;
use crate::config::IpvsSettings;
use crate::family::{Family, L4Proto};
use crate::ir::*;
use crate::names;
use crate::nft::model::{
    AddrMatch, Chain, ChainType, DataType, ElemData, Element, Field, Hook, Match, Rule, Ruleset,
    Set, SetData, SetFlags, Stmt, Table, Value, Verdict,
};

/// Addresses on [`DUMMY_IFACE`] (masquerade of node-originated traffic, the VIP filter).
pub const DUMMY_IPS: &str = "dummy-ips";
/// Every virtual server, `address . protocol . port`: what the VIP filter lets through.
pub const VIRTUAL_SERVERS: &str = "virtual-servers";
/// External frontends with externalTrafficPolicy Cluster: every connection is masqueraded.
pub const EXTERNAL_MASQUERADE: &str = "external-masquerade";
/// External frontends with externalTrafficPolicy Local: only node-originated connections
/// are masqueraded (the client's address is kept).
pub const EXTERNAL_LOCAL: &str = "external-local";
/// External frontends with externalTrafficPolicy Local and no local endpoint: dropped,
/// except from the node and its pods (which reach the cluster endpoints, as in nftables mode).
pub const EXTERNAL_POLICY_DROP: &str = "external-policy-drop";
/// `protocol . port` of health-check NodePorts: let through the VIP filter.
pub const HEALTH_CHECK_NODEPORTS: &str = "health-check-nodeports";

// Chains of the glue that the nftables mode does not have.
pub const VIP_FILTER: &str = "vip-filter";
pub const EXTERNAL_POLICY_CHECK: &str = "external-policy-check";

/// What the IPVS build needs besides the IR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsOptions {
    pub scheduler: Scheduler,
    pub timeouts: Timeouts,
    /// The node's local addresses, when the caller knows them (the runtime lists them,
    /// leaving out those on [`DUMMY_IFACE`]): NodePort virtual servers are made on each of them
    /// when NodePorts are accepted on every local address, and external/LB IPs among them are
    /// not bound to [`DUMMY_IFACE`]. None: the IR's node IPs (`--node-ip`) stand for them.
    pub local_addrs: Option<Vec<IpAddr>>,
}

impl IpvsOptions {
    pub fn from_settings(s: &IpvsSettings) -> IpvsOptions {
        IpvsOptions {
            scheduler: s.scheduler,
            timeouts: s.timeouts(),
            local_addrs: None,
        }
    }
}

/// The scheduler flags svcc sets: `mh-port` for mh (as kube-proxy), and `*-fallback` for
/// the hashing schedulers so a connection hashed to a terminating (weight 0) destination
/// goes to another one instead of being refused (kube-proxy sets no fallback; k/k #138688).
pub fn sched_flags(s: Scheduler) -> SchedFlags {
    match s {
        Scheduler::Mh => SchedFlags {
            fallback: true,
            port: true,
        },
        Scheduler::Sh => SchedFlags {
            fallback: true,
            port: false,
        },
        _ => SchedFlags::default(),
    }
}

pub fn build(ir: &Ir, opts: &IpvsOptions) -> IpvsModel {
    let mut services: BTreeMap<VsKey, VirtualServer> = BTreeMap::new();
    let mut dummy: Vec<IpAddr> = Vec::new();
    let mut tables = Vec::new();
    for f in &ir.families {
        let mut g = Glue::default();
        let locals = local_addrs(f, opts);
        for sp in &f.service_ports {
            service_port(f, sp, opts, &locals, &mut services, &mut dummy, &mut g);
        }
        tables.push(glue_table(f, g));
    }
    dummy.sort();
    dummy.dedup();
    IpvsModel {
        services: services.into_values().collect(),
        dummy_addrs: dummy,
        glue: Ruleset { tables },
        timeouts: opts.timeouts,
    }
}

/// The family's local addresses (never loopback, never IPv6 link-local: kube-proxy leaves
/// them out of NodePort addresses; never a ClusterIP, which only svcc-ipvs0 holds).
fn local_addrs(f: &FamilyIr, opts: &IpvsOptions) -> Vec<IpAddr> {
    let all = opts.local_addrs.as_deref().unwrap_or(&f.node_ips);
    let cluster_ips: std::collections::HashSet<IpAddr> = f
        .service_ports
        .iter()
        .filter_map(|sp| sp.cluster_ip())
        .collect();
    let mut v: Vec<IpAddr> = all
        .iter()
        .copied()
        .filter(|a| Family::of(a) == f.family && !a.is_loopback() && !is_link_local6(a))
        .filter(|a| !cluster_ips.contains(a))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn is_link_local6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
}

/// The elements of the glue's per-service sets, gathered over the family's service ports.
#[derive(Default)]
struct Glue {
    cluster_ips: Vec<Element>,
    dummy_ips: Vec<Element>,
    virtual_servers: Vec<Element>,
    no_endpoint: Vec<Element>,
    external_masquerade: Vec<Element>,
    external_local: Vec<Element>,
    external_policy_drop: Vec<Element>,
    firewall_ips: Vec<Element>,
    firewall_allow: Vec<Element>,
    hairpin: Vec<Element>,
    health_checks: Vec<Element>,
}

fn key3(addr: IpAddr, proto: L4Proto, port: u16) -> Vec<Value> {
    vec![Value::Addr(addr), Value::Proto(proto), Value::Port(port)]
}

fn elem(key: Vec<Value>, data: Option<ElemData>, comment: Option<&str>) -> Element {
    Element {
        key,
        data,
        comment: comment.map(|c| truncated(c).into()),
    }
}

/// nft refuses longer comments (the nftables writer cuts them the same way).
fn truncated(s: &str) -> String {
    let max = crate::nft::render::MAX_COMMENT;
    if s.len() <= max {
        return s.into();
    }
    let mut cut = max - 3;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

fn real_servers(eps: &[Backend]) -> Vec<RealServer> {
    let mut v: Vec<RealServer> = eps
        .iter()
        .map(|b| RealServer {
            addr: b.addr,
            port: b.port,
            weight: RealServer::WEIGHT,
        })
        .collect();
    v.sort();
    v.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
    v
}

#[allow(clippy::too_many_arguments)]
fn service_port(
    f: &FamilyIr,
    sp: &ServicePort,
    opts: &IpvsOptions,
    locals: &[IpAddr],
    services: &mut BTreeMap<VsKey, VirtualServer>,
    dummy: &mut Vec<IpAddr>,
    g: &mut Glue,
) {
    let d = sp.dispatch();
    let b = &sp.backends;
    let pol = &sp.policy;
    let proto = sp.protocol;
    let spn = sp.name.to_string();
    let chosen = |c: PolicyChain| match c {
        PolicyChain::Cluster => &b.cluster,
        PolicyChain::Local => &b.local,
    };
    let internal_rs = d
        .internal
        .map(|c| real_servers(chosen(c)))
        .unwrap_or_default();
    // eTP Local without a local endpoint: outsiders are dropped by the glue; what gets
    // through (the node, its pods) reaches the cluster endpoints, as the nftables mode's
    // short-circuit does.
    let external_rs = match d.external {
        Some(c) => real_servers(chosen(c)),
        None if d.has_endpoints => real_servers(&b.cluster),
        None => Vec::new(),
    };
    let persistence = pol.affinity_timeout.map(|t| Persistence {
        timeout: t,
        netmask: full_prefix(f.family),
    });
    let verdict = |v: FilterVerdict| match v {
        FilterVerdict::Reject => ElemData::Verdict(Verdict::Goto(names::REJECT_CHAIN.into())),
        FilterVerdict::Drop => ElemData::Verdict(Verdict::Drop),
    };
    let mut add_vs = |addr: IpAddr, port: u16, kind: FrontendKind, rs: &[RealServer]| {
        let vs = VirtualServer {
            family: f.family,
            protocol: proto,
            addr,
            port,
            scheduler: opts.scheduler,
            sched_flags: sched_flags(opts.scheduler),
            persistence,
            real_servers: rs.to_vec(),
            kind,
            comment: spn.clone(),
        };
        // A frontend claimed twice (e.g. an external IP that is also a NodePort address):
        // the first service port in IR order keeps it.
        let added = !services.contains_key(&vs.key());
        if added {
            services.insert(vs.key(), vs);
        }
        added
    };
    let external_frontend = |g: &mut Glue, addr: IpAddr, port: u16| {
        let k = key3(addr, proto, port);
        if d.uses_external_chain {
            if pol.external_local {
                g.external_local.push(elem(k.clone(), None, Some(&spn)));
            } else {
                g.external_masquerade
                    .push(elem(k.clone(), None, Some(&spn)));
            }
        }
        match d.external_filter {
            Some(FilterVerdict::Drop) => {
                g.external_policy_drop.push(elem(k, None, Some(&spn)));
            }
            Some(v @ FilterVerdict::Reject) => {
                g.no_endpoint.push(elem(k, Some(verdict(v)), Some(&spn)));
            }
            None => {}
        }
    };
    let node_ports: Vec<IpAddr> = match &f.node_ports_on {
        NodePortAddrs::Addrs(a) => a.clone(),
        NodePortAddrs::AllLocal => locals.to_vec(),
    };
    for fe in &sp.frontends {
        match fe.kind {
            FrontendKind::ClusterIp => {
                let a = fe.addr.expect("ClusterIP frontend has an address");
                if !add_vs(a, fe.port, fe.kind, &internal_rs) {
                    continue;
                }
                dummy.push(a);
                g.cluster_ips.push(elem(vec![Value::Addr(a)], None, None));
                g.dummy_ips.push(elem(vec![Value::Addr(a)], None, None));
                g.virtual_servers
                    .push(elem(key3(a, proto, fe.port), None, Some(&spn)));
                if let Some(v) = d.internal_filter {
                    g.no_endpoint
                        .push(elem(key3(a, proto, fe.port), Some(verdict(v)), Some(&spn)));
                }
            }
            FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {
                let a = fe.addr.expect("external frontend has an address");
                if !add_vs(a, fe.port, fe.kind, &external_rs) {
                    continue;
                }
                // kube-proxy binds an external/LB IP only if no other interface has it.
                if !locals.contains(&a) {
                    dummy.push(a);
                    g.dummy_ips.push(elem(vec![Value::Addr(a)], None, None));
                }
                g.virtual_servers
                    .push(elem(key3(a, proto, fe.port), None, Some(&spn)));
                external_frontend(g, a, fe.port);
                if fe.kind == FrontendKind::LoadBalancer && !pol.source_ranges.is_empty() {
                    let k = key3(a, proto, fe.port);
                    g.firewall_ips.push(elem(k.clone(), None, Some(&spn)));
                    let mut allowed: Vec<IpNet> = pol.source_ranges.clone();
                    if pol.allow_lb_ips_as_source {
                        allowed.extend(
                            sp.frontends
                                .iter()
                                .filter(|x| x.kind == FrontendKind::LoadBalancer)
                                .filter_map(|x| x.addr)
                                .map(IpNet::from),
                        );
                    }
                    // Overlapping ranges are refused by the kernel's interval sets: merge them.
                    for r in IpNet::aggregate(&allowed) {
                        let mut k = k.clone();
                        k.push(Value::Prefix(r));
                        g.firewall_allow.push(elem(k, None, Some(&spn)));
                    }
                }
            }
            FrontendKind::NodePort => {
                for &a in &node_ports {
                    if !add_vs(a, fe.port, fe.kind, &external_rs) {
                        continue;
                    }
                    g.virtual_servers
                        .push(elem(key3(a, proto, fe.port), None, Some(&spn)));
                    external_frontend(g, a, fe.port);
                }
            }
        }
    }
    for ep in b.cluster.iter().chain(&b.local) {
        g.hairpin.push(elem(
            vec![Value::Addr(ep.addr), Value::Addr(ep.addr)],
            None,
            None,
        ));
    }
    if let Some(p) = pol.health_check_node_port {
        g.health_checks.push(elem(
            vec![Value::Proto(L4Proto::Tcp), Value::Port(p)],
            None,
            Some(&spn),
        ));
    }
}

fn set(
    name: &str,
    key: Vec<DataType>,
    data: Option<SetData>,
    c: &str,
    mut elements: Vec<Element>,
) -> Set {
    elements.sort_by(|a, b| a.key.cmp(&b.key));
    elements.dedup_by(|a, b| a.key == b.key);
    Set {
        name: name.into(),
        key,
        data,
        flags: SetFlags::default(),
        timeout: None,
        size: None,
        comment: Some(c.into()),
        elements,
    }
}

fn interval(mut s: Set) -> Set {
    s.flags.interval = true;
    s
}

fn chain(name: &str, base: Option<(ChainType, Hook, i32)>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: base.map(|(kind, hook, priority)| crate::nft::model::BaseChain {
            kind,
            hook,
            priority,
        }),
        comment: None,
        rules,
    }
}

fn jump(c: &str) -> Verdict {
    Verdict::Jump(c.into())
}

const DADDR_PROTO_PORT: [Field; 3] = [Field::Daddr, Field::L4Proto, Field::Dport];

fn lookup(set: &str, key: &[Field], negate: bool) -> Match {
    Match::Lookup {
        key: key.to_vec(),
        set: set.into(),
        negate,
    }
}

fn daddr_in(set: &str) -> Match {
    Match::Daddr {
        negate: false,
        addr: AddrMatch::Set(set.into()),
    }
}

fn glue_table(f: &FamilyIr, g: Glue) -> Table {
    use ChainType::{Filter, Nat};
    use Hook::*;
    let fam = f.family;
    let addr = fam.addr_type();
    let k3 = vec![addr, DataType::InetProto, DataType::InetService];
    let plain = |a: &IpNet| elem(vec![Value::Prefix(*a)], None, None);
    let sets = vec![
        set(
            names::CLUSTER_IPS,
            vec![addr],
            None,
            "active ClusterIPs",
            g.cluster_ips,
        ),
        set(
            DUMMY_IPS,
            vec![addr],
            None,
            "addresses on svcc-ipvs0",
            g.dummy_ips,
        ),
        set(
            VIRTUAL_SERVERS,
            k3.clone(),
            None,
            "IPVS virtual servers",
            g.virtual_servers,
        ),
        set(
            names::NO_ENDPOINT_SERVICES,
            k3.clone(),
            Some(SetData::Verdict),
            "vmap to drop or reject packets to services with no endpoints",
            g.no_endpoint,
        ),
        set(
            EXTERNAL_MASQUERADE,
            k3.clone(),
            None,
            "external frontends (externalTrafficPolicy Cluster): masqueraded",
            g.external_masquerade,
        ),
        set(
            EXTERNAL_LOCAL,
            k3.clone(),
            None,
            "external frontends (externalTrafficPolicy Local): client address kept",
            g.external_local,
        ),
        set(
            EXTERNAL_POLICY_DROP,
            k3.clone(),
            None,
            "externalTrafficPolicy Local without local endpoints: dropped from outside",
            g.external_policy_drop,
        ),
        set(
            names::FIREWALL_IPS,
            k3.clone(),
            None,
            "LoadBalancer frontends restricted by loadBalancerSourceRanges",
            g.firewall_ips,
        ),
        interval(set(
            names::FIREWALL_ALLOW,
            vec![addr, DataType::InetProto, DataType::InetService, addr],
            None,
            "sources allowed to each restricted LoadBalancer frontend",
            g.firewall_allow,
        )),
        {
            let mut s = set(
                names::HAIRPIN,
                vec![addr, addr],
                None,
                "endpoint . endpoint: a backend reaching itself through a service",
                g.hairpin,
            );
            s.size = Some(crate::nft::build::hairpin_size(s.elements.len()));
            s
        },
        set(
            HEALTH_CHECK_NODEPORTS,
            vec![DataType::InetProto, DataType::InetService],
            None,
            "health-check NodePorts",
            g.health_checks,
        ),
        interval(set(
            names::CLUSTER_CIDRS,
            vec![addr],
            None,
            "pod CIDRs (clusterCIDR): local traffic",
            f.cluster_cidrs.iter().map(plain).collect(),
        )),
        interval(set(
            names::SERVICE_CIDRS,
            vec![addr],
            None,
            "service CIDRs: unallocated addresses are dropped",
            f.service_cidrs.iter().map(plain).collect(),
        )),
    ];
    let has_detector = !f.cluster_cidrs.is_empty();
    let mark = f.masquerade_mark;
    let ct_new = |c: &str| Rule::new().m(Match::CtStateNew).v(jump(c));

    let mut services = vec![Rule::new()
        .m(Match::Saddr {
            negate: false,
            addr: AddrMatch::Set(DUMMY_IPS.into()),
        })
        .v(jump(names::MARK_FOR_MASQUERADE))
        .comment("from the node with a VIP as source: replies must come back here")];
    if f.masquerade_all {
        services.push(
            Rule::new()
                .m(daddr_in(names::CLUSTER_IPS))
                .v(jump(names::MARK_FOR_MASQUERADE))
                .comment("masqueradeAll: every ClusterIP connection"),
        );
    } else if has_detector {
        services.push(
            Rule::new()
                .m(daddr_in(names::CLUSTER_IPS))
                .m(Match::Saddr {
                    negate: true,
                    addr: AddrMatch::Set(names::CLUSTER_CIDRS.into()),
                })
                .v(jump(names::MARK_FOR_MASQUERADE))
                .comment("off-cluster traffic to a ClusterIP"),
        );
    }
    services.push(
        Rule::new()
            .m(lookup(EXTERNAL_MASQUERADE, &DADDR_PROTO_PORT, false))
            .v(jump(names::MARK_FOR_MASQUERADE))
            .comment("external traffic may leave the node"),
    );
    services.push(
        Rule::new()
            .m(Match::FibSaddrLocal)
            .m(lookup(EXTERNAL_LOCAL, &DADDR_PROTO_PORT, false))
            .v(jump(names::MARK_FOR_MASQUERADE))
            .comment("masquerade local traffic"),
    );

    let mut policy_check = vec![Rule::new()
        .m(Match::FibSaddrLocal)
        .v(Verdict::Return)
        .comment("the node reaches the cluster endpoints")];
    if has_detector {
        policy_check.push(
            Rule::new()
                .m(Match::Saddr {
                    negate: false,
                    addr: AddrMatch::Set(names::CLUSTER_CIDRS.into()),
                })
                .v(Verdict::Return)
                .comment("pods reach the cluster endpoints"),
        );
    }
    policy_check.push(
        Rule::new()
            .v(Verdict::Drop)
            .comment("externalTrafficPolicy Local without local endpoints"),
    );

    let mut cidr_check = vec![Rule::new()
        .m(daddr_in(names::CLUSTER_IPS))
        .v(Verdict::Return)];
    if !f.service_cidrs.is_empty() {
        cidr_check.push(
            Rule::new()
                .m(daddr_in(names::SERVICE_CIDRS))
                .v(Verdict::Drop)
                .comment("unallocated address in a service CIDR"),
        );
    }

    let chains = vec![
        chain(
            names::FILTER_PREROUTING_PRE_DNAT,
            Some((Filter, Prerouting, -110)),
            vec![ct_new(names::FIREWALL_CHECK)],
        ),
        // Before IPVS's LOCAL_OUT hook (-99), which rewrites the destination.
        chain(
            names::FILTER_OUTPUT_PRE_DNAT,
            Some((Filter, Output, -110)),
            vec![
                ct_new(names::FIREWALL_CHECK),
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
                ct_new(names::CLUSTER_IPS_CHECK),
            ],
        ),
        chain(
            names::NAT_PREROUTING,
            Some((Nat, Prerouting, -100)),
            vec![Rule::new().v(jump(names::SERVICES))],
        ),
        chain(
            names::NAT_OUTPUT,
            Some((Nat, Output, -100)),
            vec![Rule::new().v(jump(names::SERVICES))],
        ),
        // Before IPVS's LOCAL_IN hook (98/99): the destination is still the VIP.
        chain(
            names::FILTER_INPUT,
            Some((Filter, Input, 0)),
            vec![
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
                Rule::new()
                    .m(Match::CtStateNew)
                    .m(lookup(EXTERNAL_POLICY_DROP, &DADDR_PROTO_PORT, false))
                    .v(jump(EXTERNAL_POLICY_CHECK)),
                ct_new(VIP_FILTER),
            ],
        ),
        chain(
            names::FILTER_FORWARD,
            Some((Filter, Forward, 0)),
            vec![ct_new(names::CLUSTER_IPS_CHECK)],
        ),
        chain(
            names::NAT_POSTROUTING,
            Some((Nat, Postrouting, 100)),
            vec![Rule::new().v(jump(names::MASQUERADING))],
        ),
        chain(names::SERVICES, None, services),
        chain(
            names::MASQUERADING,
            None,
            vec![
                // No `ct status dnat` here: IPVS rewrites the conntrack reply tuple without
                // setting it; saddr == daddr == an endpoint only happens through a service.
                Rule::new()
                    .m(lookup(names::HAIRPIN, &[Field::Saddr, Field::Daddr], false))
                    .v(jump(names::MARK_FOR_MASQUERADE))
                    .comment("hairpin: a backend reached itself through a service"),
                Rule::new().m(Match::MarkClear(mark)).v(Verdict::Return),
                Rule::new().s(Stmt::MarkXor(mark)),
                Rule::new().s(Stmt::Masquerade { fully_random: true }),
            ],
        ),
        chain(
            names::MARK_FOR_MASQUERADE,
            None,
            vec![Rule::new().s(Stmt::MarkOr(mark))],
        ),
        chain(
            names::REJECT_CHAIN,
            None,
            vec![Rule::new()
                .s(Stmt::Reject)
                .comment("helper for @no-endpoint-services")],
        ),
        chain(
            names::FIREWALL_CHECK,
            None,
            vec![Rule::new()
                .m(lookup(names::FIREWALL_IPS, &DADDR_PROTO_PORT, false))
                .m(lookup(
                    names::FIREWALL_ALLOW,
                    &[Field::Daddr, Field::L4Proto, Field::Dport, Field::Saddr],
                    true,
                ))
                .v(Verdict::Drop)
                .comment("source not in loadBalancerSourceRanges")],
        ),
        chain(
            names::SERVICE_ENDPOINTS_CHECK,
            None,
            vec![Rule::new().s(Stmt::Vmap {
                key: DADDR_PROTO_PORT.to_vec(),
                map: names::NO_ENDPOINT_SERVICES.into(),
            })],
        ),
        chain(EXTERNAL_POLICY_CHECK, None, policy_check),
        chain(
            VIP_FILTER,
            None,
            vec![
                Rule::new()
                    .m(lookup(
                        HEALTH_CHECK_NODEPORTS,
                        &[Field::L4Proto, Field::Dport],
                        false,
                    ))
                    .v(Verdict::Return),
                Rule::new()
                    .m(daddr_in(DUMMY_IPS))
                    .m(lookup(VIRTUAL_SERVERS, &DADDR_PROTO_PORT, true))
                    .s(Stmt::Reject)
                    .comment("a VIP on a port that is no service"),
            ],
        ),
        chain(names::CLUSTER_IPS_CHECK, None, cidr_check),
    ];
    Table {
        family: fam,
        name: names::TABLE.into(),
        comment: Some(names::TABLE_COMMENT.into()),
        sets,
        chains,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompileOptions, NodeSettings, Source};

    fn ir(manifests: &str, node_ips: &[&str], cidrs: &[&str]) -> Ir {
        let settings = NodeSettings {
            hostname: "node-a".into(),
            node_ips: node_ips.iter().map(|a| a.parse().unwrap()).collect(),
            cluster_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            backend: crate::Backend::Ipvs,
            ..NodeSettings::default()
        };
        let src = Source {
            name: "m.yaml".into(),
            text: manifests.into(),
        };
        crate::compile(&[src], &settings, CompileOptions::default())
            .expect("compiles")
            .ir
    }

    fn v4(manifests: &str) -> Ir {
        ir(manifests, &["192.168.0.2"], &["10.0.0.0/16"])
    }

    fn vs<'a>(m: &'a IpvsModel, addr: &str, port: u16, proto: L4Proto) -> &'a VirtualServer {
        let addr: IpAddr = addr.parse().unwrap();
        m.service(&VsKey {
            family: Family::of(&addr),
            protocol: proto,
            addr,
            port,
        })
        .unwrap_or_else(|| panic!("no virtual server {addr}:{port}"))
    }

    fn rs(v: &VirtualServer) -> Vec<String> {
        v.real_servers
            .iter()
            .map(|r| format!("{}:{} w{}", r.addr, r.port, r.weight))
            .collect()
    }

    fn elements(m: &IpvsModel, fam: Family, set: &str) -> usize {
        m.glue
            .tables
            .iter()
            .find(|t| t.family == fam)
            .and_then(|t| t.set(set))
            .map_or(0, |s| s.elements.len())
    }

    const AFFINITY: &str = include_str!("../../../fixtures/cases/session-affinity/manifests.yaml");
    const ETP_LOCAL: &str = include_str!("../../../fixtures/cases/etp-local/manifests.yaml");
    const ETP_NO_LOCAL: &str =
        include_str!("../../../fixtures/cases/etp-local-no-local/manifests.yaml");
    const TERMINATING: &str =
        include_str!("../../../fixtures/cases/terminating-fallback/manifests.yaml");
    const DUAL: &str = include_str!("../../../fixtures/cases/dual-stack/manifests.yaml");
    const EXTERNAL: &str = include_str!("../../../fixtures/cases/externalip/manifests.yaml");

    /// Every scheduler reaches every virtual server; only sh and mh get flags (fallback, and
    /// for mh the port as kube-proxy), persistence adds its own bit.
    #[test]
    fn schedulers_and_flags() {
        let ir = v4(AFFINITY);
        for s in Scheduler::ALL {
            let m = build(
                &ir,
                &IpvsOptions {
                    scheduler: s,
                    ..Default::default()
                },
            );
            assert!(m.services.iter().all(|v| v.scheduler == s));
            let sticky = vs(&m, "172.30.0.90", 80, L4Proto::Tcp);
            let loose = vs(&m, "172.30.0.91", 80, L4Proto::Tcp);
            let sched = match s {
                Scheduler::Mh => SVC_F_SCHED1 | SVC_F_SCHED2,
                Scheduler::Sh => SVC_F_SCHED1,
                _ => 0,
            };
            assert_eq!(loose.flags(), sched, "{s}");
            assert_eq!(sticky.flags(), sched | SVC_F_PERSISTENT, "{s}");
        }
    }

    /// ClientIP affinity = persistence with the Service's timeout, per client address.
    #[test]
    fn persistence() {
        let m = build(&v4(AFFINITY), &IpvsOptions::default());
        let sticky = vs(&m, "172.30.0.90", 80, L4Proto::Tcp);
        assert_eq!(
            sticky.persistence,
            Some(Persistence {
                timeout: 600,
                netmask: 32
            })
        );
        assert_eq!((sticky.timeout(), sticky.netmask()), (600, 32));
        let loose = vs(&m, "172.30.0.91", 80, L4Proto::Tcp);
        assert_eq!((loose.persistence, loose.timeout()), (None, 0));
        // Every frontend of the sticky service is persistent (NodePort, LB too).
        assert!(m
            .services
            .iter()
            .filter(|v| v.comment.starts_with("default/sticky:"))
            .all(|v| v.persistence.is_some()));
        let m6 = build(
            &ir(
                include_str!("../../../fixtures/cases/ipv6-affinity/manifests.yaml"),
                &["fd00::2"],
                &[],
            ),
            &IpvsOptions::default(),
        );
        assert!(m6
            .services
            .iter()
            .all(|v| v.persistence.map(|p| p.netmask) == Some(128)));
    }

    /// Real servers carry weight 1 (kube-proxy); without a ready endpoint the
    /// serving+terminating ones are used (the IR's fallback). Weight 0 — quiesced — is what
    /// the runtime sets on a destination that is going away.
    #[test]
    fn weights_and_terminating_fallback() {
        let m = build(&v4(TERMINATING), &IpvsOptions::default());
        assert!(!m.services.is_empty());
        for v in &m.services {
            assert!(v
                .real_servers
                .iter()
                .all(|r| r.weight == 1 && !r.is_terminating()));
            let mut sorted = v.real_servers.clone();
            sorted.sort();
            assert_eq!(sorted, v.real_servers);
        }
        let ir = v4(TERMINATING);
        for f in &ir.families {
            for sp in &f.service_ports {
                let ca = sp.cluster_ip().unwrap();
                let fe = sp
                    .frontends
                    .iter()
                    .find(|x| x.kind == FrontendKind::ClusterIp)
                    .unwrap();
                let v = vs(&m, &ca.to_string(), fe.port, sp.protocol);
                let want: Vec<(IpAddr, u16)> = {
                    let mut w: Vec<_> = sp
                        .backends
                        .cluster
                        .iter()
                        .map(|b| (b.addr, b.port))
                        .collect();
                    w.sort();
                    w
                };
                let got: Vec<(IpAddr, u16)> =
                    v.real_servers.iter().map(|r| (r.addr, r.port)).collect();
                if sp.policy.internal_local {
                    continue;
                }
                assert_eq!(got, want, "{}", sp.name);
            }
        }
        assert!(RealServer {
            addr: "10.0.0.1".parse().unwrap(),
            port: 1,
            weight: 0
        }
        .is_terminating());
    }

    /// eTP Local: the external virtual servers get the local endpoints only (kube-proxy's
    /// IPVS mode), the ClusterIP all; the client address is kept (external-local set).
    #[test]
    fn external_policy_local() {
        let m = build(&v4(ETP_LOCAL), &IpvsOptions::default());
        let ir = v4(ETP_LOCAL);
        let sp = &ir.families[0].service_ports[0];
        let np = sp
            .frontends
            .iter()
            .find(|f| f.kind == FrontendKind::NodePort)
            .unwrap();
        let local: Vec<IpAddr> = sp.backends.local.iter().map(|b| b.addr).collect();
        let v = vs(&m, "192.168.0.2", np.port, sp.protocol);
        assert!(!v.real_servers.is_empty());
        assert!(
            v.real_servers.iter().all(|r| local.contains(&r.addr)),
            "{:?}",
            rs(v)
        );
        let c = vs(
            &m,
            &sp.cluster_ip().unwrap().to_string(),
            sp.frontends[0].port,
            sp.protocol,
        );
        assert_eq!(c.real_servers.len(), sp.backends.cluster.len());
        assert!(elements(&m, Family::Ip, EXTERNAL_LOCAL) > 0);
        assert_eq!(elements(&m, Family::Ip, EXTERNAL_MASQUERADE), 0);
        assert_eq!(elements(&m, Family::Ip, EXTERNAL_POLICY_DROP), 0);
    }

    /// eTP Local without local endpoints: dropped from outside (the glue), the node and pods
    /// reach every endpoint (the virtual server has the cluster endpoints).
    #[test]
    fn external_policy_local_without_local_endpoints() {
        let m = build(&v4(ETP_NO_LOCAL), &IpvsOptions::default());
        let v = vs(&m, "192.168.0.2", 30060, L4Proto::Tcp);
        assert_eq!(v.real_servers.len(), 3, "{:?}", rs(v));
        assert_eq!(elements(&m, Family::Ip, EXTERNAL_POLICY_DROP), 6);
        assert_eq!(elements(&m, Family::Ip, names::NO_ENDPOINT_SERVICES), 0);
    }

    /// Dual-stack: virtual servers, glue tables and VIPs of both families.
    #[test]
    fn dual_stack() {
        let m = build(
            &ir(
                DUAL,
                &["192.168.0.2", "fd00::2"],
                &["10.0.0.0/16", "fd00:10::/64"],
            ),
            &IpvsOptions::default(),
        );
        for fam in [Family::Ip, Family::Ip6] {
            assert!(m.services.iter().any(|v| v.family == fam));
            assert!(m.services.iter().all(|v| v
                .real_servers
                .iter()
                .all(|r| Family::of(&r.addr) == v.family)));
            assert!(m.dummy_addrs.iter().any(|a| Family::of(a) == fam));
            assert!(m.glue.tables.iter().any(|t| t.family == fam));
        }
        // Sorted by key: IPv4 first, no duplicates.
        let keys: Vec<VsKey> = m.services.iter().map(|v| v.key()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted);
        let text = super::super::render::render(&m);
        assert!(text.contains("-A -t [fd00:30::"), "{text}");
        assert!(text.contains("-r [fd00:10::"), "{text}");
    }

    /// An external IP the node already has is not bound to svcc-ipvs0; NodePorts on "every
    /// local address" go to each address the caller lists.
    #[test]
    fn local_addresses() {
        let ir = v4(EXTERNAL);
        let m = build(&ir, &IpvsOptions::default());
        let ext: Vec<IpAddr> = ir.families[0]
            .service_ports
            .iter()
            .flat_map(|sp| &sp.frontends)
            .filter(|f| f.kind == FrontendKind::ExternalIp)
            .filter_map(|f| f.addr)
            .collect();
        assert!(!ext.is_empty());
        assert!(ext.iter().all(|a| m.dummy_addrs.contains(a)));
        let cip = ir.families[0].service_ports[0].cluster_ip().unwrap();
        let mut locals = vec![
            ext[0],
            "127.0.0.1".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            cip,
        ];
        locals.push("192.168.0.2".parse().unwrap());
        let m2 = build(
            &ir,
            &IpvsOptions {
                local_addrs: Some(locals),
                ..Default::default()
            },
        );
        assert!(!m2.dummy_addrs.contains(&ext[0]));
        assert!(m2.dummy_addrs.contains(&cip));
        assert!(m2.services.iter().all(|v| !v.addr.is_loopback()));
        // NodePorts (every local address, the IPVS default) on each listed address but
        // loopback, link-local and a ClusterIP (a leftover of svcc-ipvs0).
        let ir = v4(include_str!(
            "../../../fixtures/cases/nodeport-basic/manifests.yaml"
        ));
        let cip = ir.families[0].service_ports[0].cluster_ip().unwrap();
        let listed: Vec<IpAddr> = ["192.168.0.2", "192.168.7.7", "127.0.0.1", "fe80::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .chain([cip])
            .collect();
        let m3 = build(
            &ir,
            &IpvsOptions {
                local_addrs: Some(listed),
                ..Default::default()
            },
        );
        let mut np_addrs: Vec<String> = m3
            .services
            .iter()
            .filter(|v| v.kind == FrontendKind::NodePort)
            .map(|v| v.addr.to_string())
            .collect();
        np_addrs.sort();
        np_addrs.dedup();
        assert_eq!(np_addrs, ["192.168.0.2", "192.168.7.7"]);
    }
}
