//! The optimizer: IR → nft object model.
//!
//! Layout (see docs/ARCHITECTURE.md, "The nftables layout"): a fixed list of named sets and
//! maps — never one per service or endpoint — so that loading stays linear in the number of
//! services and per-packet dispatch is one verdict-map lookup whatever their number.
//! Per service port there are at most three chains (cluster, local, external); endpoints are
//! picked with `numgen random mod (n-i) == 0` rules that `dnat` directly (no endpoint chains,
//! no anonymous vmaps). Hairpin, affinity and masquerade decisions each live in one shared
//! set or map, consulted from one place.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::*;
use crate::ir::*;
use crate::names;

/// Dynamic affinity entries per table (kube-proxy's per-endpoint sets default to 65535 each).
pub const AFFINITY_SIZE: u32 = 1 << 20;

pub fn build(ir: &Ir) -> Ruleset {
    Ruleset {
        tables: ir.families.iter().map(build_table).collect(),
    }
}

fn comment(s: impl Into<String>) -> Option<String> {
    let mut s: String = s.into();
    if s.len() > super::render::MAX_COMMENT {
        let mut cut = super::render::MAX_COMMENT - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    Some(s)
}

fn set(name: &str, key: Vec<DataType>, data: Option<SetData>, c: &str) -> Set {
    Set {
        name: name.into(),
        key,
        data,
        flags: SetFlags::default(),
        timeout: None,
        size: None,
        comment: comment(c),
        elements: Vec::new(),
    }
}

fn chain(name: &str, base: Option<(ChainType, Hook, i32)>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: base.map(|(kind, hook, priority)| BaseChain {
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
fn goto(c: &str) -> Verdict {
    Verdict::Goto(c.into())
}

const DADDR_PROTO_PORT: [Field; 3] = [Field::Daddr, Field::L4Proto, Field::Dport];
const PROTO_PORT: [Field; 2] = [Field::L4Proto, Field::Dport];
const AFFINITY_KEY: [Field; 4] = [Field::Saddr, Field::L4Proto, Field::Daddr, Field::Dport];

/// Indexes into `Table::sets`, in declaration order.
struct Sets {
    cluster_ips: usize,
    service_ips: usize,
    service_nodeports: usize,
    nodeport_ips: usize,
    no_ep_services: usize,
    no_ep_nodeports: usize,
    firewall_ips: usize,
    firewall_allow: usize,
    hairpin: usize,
    cluster_cidrs: usize,
    service_cidrs: usize,
}

fn build_table(f: &FamilyIr) -> Table {
    let fam = f.family;
    let addr = fam.addr_type();
    let mut sets = vec![
        set(names::CLUSTER_IPS, vec![addr], None, "active ClusterIPs"),
        set(
            names::SERVICE_IPS,
            vec![addr, DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        set(
            names::SERVICE_NODEPORTS,
            vec![DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "NodePort traffic",
        ),
        set(
            names::NODEPORT_IPS,
            vec![addr],
            None,
            "IPs that accept NodePort traffic",
        ),
        set(
            names::NO_ENDPOINT_SERVICES,
            vec![addr, DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        set(
            names::NO_ENDPOINT_NODEPORTS,
            vec![DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        set(
            names::FIREWALL_IPS,
            vec![addr, DataType::InetProto, DataType::InetService],
            None,
            "LoadBalancer frontends restricted by loadBalancerSourceRanges",
        ),
        {
            let mut s = set(
                names::FIREWALL_ALLOW,
                vec![addr, DataType::InetProto, DataType::InetService, addr],
                None,
                "sources allowed to each restricted LoadBalancer frontend",
            );
            s.flags.interval = true;
            s
        },
        {
            let mut s = set(
                names::AFFINITY,
                vec![addr, DataType::InetProto, addr, DataType::InetService],
                Some(SetData::Values(vec![addr, DataType::InetService])),
                "ClientIP session affinity: client . proto . frontend . port -> endpoint",
            );
            s.flags.dynamic = true;
            s.flags.timeout = true;
            s.size = Some(AFFINITY_SIZE);
            s
        },
        set(
            names::HAIRPIN,
            vec![addr, addr],
            None,
            "endpoint . endpoint: a backend reaching itself through a service",
        ),
        {
            let mut s = set(
                names::CLUSTER_CIDRS,
                vec![addr],
                None,
                "pod CIDRs (clusterCIDR): local traffic",
            );
            s.flags.interval = true;
            s
        },
        {
            let mut s = set(
                names::SERVICE_CIDRS,
                vec![addr],
                None,
                "service CIDRs: unallocated addresses are dropped",
            );
            s.flags.interval = true;
            s
        },
    ];
    let ix = Sets {
        cluster_ips: 0,
        service_ips: 1,
        service_nodeports: 2,
        nodeport_ips: 3,
        no_ep_services: 4,
        no_ep_nodeports: 5,
        firewall_ips: 6,
        firewall_allow: 7,
        hairpin: 9,
        cluster_cidrs: 10,
        service_cidrs: 11,
    };

    let has_detector = !f.cluster_cidrs.is_empty();
    for c in &f.cluster_cidrs {
        sets[ix.cluster_cidrs].elements.push(Element {
            key: vec![Value::Prefix(*c)],
            data: None,
            comment: None,
        });
    }
    for c in &f.service_cidrs {
        sets[ix.service_cidrs].elements.push(Element {
            key: vec![Value::Prefix(*c)],
            data: None,
            comment: None,
        });
    }
    if let NodePortAddrs::Addrs(a) = &f.node_ports_on {
        for ip in a {
            sets[ix.nodeport_ips].elements.push(Element {
                key: vec![Value::Addr(*ip)],
                data: None,
                comment: None,
            });
        }
    }

    let mark = f.masquerade_mark;
    let mut chains = base_chains(f, has_detector, mark);

    let mut acc = Acc {
        sets,
        chains: Vec::new(),
        cluster_ips: Vec::new(),
        hairpin: Vec::new(),
        extra_sets: Vec::new(),
    };
    for sp in &f.service_ports {
        build_service_port(f, sp, &ix, &mut acc);
    }
    let Acc {
        mut sets,
        chains: service_chains,
        mut cluster_ips,
        mut hairpin,
        extra_sets,
    } = acc;
    sets.extend(extra_sets);
    cluster_ips.sort();
    cluster_ips.dedup();
    for ip in cluster_ips {
        sets[ix.cluster_ips].elements.push(Element {
            key: vec![Value::Addr(ip)],
            data: None,
            comment: None,
        });
    }
    hairpin.sort();
    hairpin.dedup();
    for ip in hairpin {
        sets[ix.hairpin].elements.push(Element {
            key: vec![Value::Addr(ip), Value::Addr(ip)],
            data: None,
            comment: None,
        });
    }
    chains.extend(service_chains);

    Table {
        family: fam,
        name: names::TABLE.into(),
        comment: comment(names::TABLE_COMMENT),
        sets,
        chains,
    }
}

fn base_chains(f: &FamilyIr, has_detector: bool, mark: u32) -> Vec<Chain> {
    use ChainType::*;
    use Hook::*;
    let ct_new = |v: &str| Rule::new().m(Match::CtStateNew).v(jump(v));
    let nodeport_daddr: Vec<Match> = match &f.node_ports_on {
        NodePortAddrs::Addrs(_) => {
            vec![Match::Daddr {
                negate: false,
                addr: AddrMatch::Set(names::NODEPORT_IPS.into()),
            }]
        }
        NodePortAddrs::AllLocal => vec![
            Match::FibDaddrLocal,
            Match::Daddr {
                negate: true,
                addr: AddrMatch::Net(f.family.loopback()),
            },
        ],
    };
    let cluster_ips = AddrMatch::Set(names::CLUSTER_IPS.into());

    let mut services = Vec::new();
    if f.masquerade_all {
        services.push(
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: cluster_ips.clone(),
                })
                .v(jump(names::MARK_FOR_MASQUERADE))
                .comment("masqueradeAll: every ClusterIP connection"),
        );
    } else if has_detector {
        services.push(
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: cluster_ips.clone(),
                })
                .m(Match::Saddr {
                    negate: true,
                    addr: AddrMatch::Set(names::CLUSTER_CIDRS.into()),
                })
                .v(jump(names::MARK_FOR_MASQUERADE))
                .comment("off-cluster traffic to a ClusterIP"),
        );
    }
    services.push(Rule::new().s(Stmt::Vmap {
        key: DADDR_PROTO_PORT.to_vec(),
        map: names::SERVICE_IPS.into(),
    }));
    let mut np = Rule::new();
    np.matches = nodeport_daddr.clone();
    services.push(np.s(Stmt::Vmap {
        key: PROTO_PORT.to_vec(),
        map: names::SERVICE_NODEPORTS.into(),
    }));

    let mut np_check = Rule::new();
    np_check.matches = nodeport_daddr;
    let np_check = np_check.s(Stmt::Vmap {
        key: PROTO_PORT.to_vec(),
        map: names::NO_ENDPOINT_NODEPORTS.into(),
    });

    let mut cluster_ips_check = vec![Rule::new()
        .m(Match::Daddr {
            negate: false,
            addr: cluster_ips,
        })
        .s(Stmt::Reject)
        .comment("invalid port or protocol of a ClusterIP")];
    if !f.service_cidrs.is_empty() {
        cluster_ips_check.push(
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: AddrMatch::Set(names::SERVICE_CIDRS.into()),
                })
                .v(Verdict::Drop)
                .comment("unallocated address in a service CIDR"),
        );
    }

    vec![
        chain(
            names::FILTER_PREROUTING_PRE_DNAT,
            Some((Filter, Prerouting, -110)),
            vec![ct_new(names::FIREWALL_CHECK)],
        ),
        chain(
            names::FILTER_OUTPUT_PRE_DNAT,
            Some((Filter, Output, -110)),
            vec![ct_new(names::FIREWALL_CHECK)],
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
        chain(
            names::FILTER_INPUT,
            Some((Filter, Input, 0)),
            vec![
                ct_new(names::NODEPORT_ENDPOINTS_CHECK),
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
            ],
        ),
        chain(
            names::FILTER_FORWARD,
            Some((Filter, Forward, 0)),
            vec![
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
                ct_new(names::CLUSTER_IPS_CHECK),
            ],
        ),
        chain(
            names::FILTER_OUTPUT,
            Some((Filter, Output, 0)),
            vec![
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
                ct_new(names::CLUSTER_IPS_CHECK),
            ],
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
                Rule::new()
                    .m(Match::CtStatusDnat)
                    .m(Match::Lookup {
                        key: vec![Field::Saddr, Field::Daddr],
                        set: names::HAIRPIN.into(),
                        negate: false,
                    })
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
                .comment("helper for @no-endpoint-services / @no-endpoint-nodeports")],
        ),
        chain(
            names::FIREWALL_CHECK,
            None,
            vec![Rule::new()
                .m(Match::Lookup {
                    key: DADDR_PROTO_PORT.to_vec(),
                    set: names::FIREWALL_IPS.into(),
                    negate: false,
                })
                .m(Match::Lookup {
                    key: vec![Field::Daddr, Field::L4Proto, Field::Dport, Field::Saddr],
                    set: names::FIREWALL_ALLOW.into(),
                    negate: true,
                })
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
        chain(names::NODEPORT_ENDPOINTS_CHECK, None, vec![np_check]),
        chain(names::CLUSTER_IPS_CHECK, None, cluster_ips_check),
    ]
}

fn elem3(addr: IpAddr, proto: L4Proto, port: u16, data: ElemData, c: &str) -> Element {
    Element {
        key: vec![Value::Addr(addr), Value::Proto(proto), Value::Port(port)],
        data: Some(data),
        comment: comment(c),
    }
}

fn elem2(proto: L4Proto, port: u16, data: ElemData, c: &str) -> Element {
    Element {
        key: vec![Value::Proto(proto), Value::Port(port)],
        data: Some(data),
        comment: comment(c),
    }
}

/// The rules of a chain that picks one of `eps` uniformly at random (and remembers the pick
/// for ClientIP affinity).
///
/// IPv6 affinity cannot use the shared `affinity` map: nft 1.0.6 fails to linearize a
/// dynamic-map update whose concatenated key is wider than 16 bytes (an assertion in
/// netlink_linearize.c), so IPv6 services with affinity use kube-proxy's layout instead, one
/// dynamic set of clients per endpoint (`affinity6-…`), added to `extra_sets`.
fn endpoint_rules(
    fam: Family,
    sp: &ServicePort,
    eps: &[Backend],
    extra_sets: &mut Vec<Set>,
) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(eps.len() * 2 + 1);
    let per_endpoint_sets = fam == Family::Ip6;
    let affinity_set = |ep: &Backend| names::affinity6_set(&sp.name, &ep.to_string());
    match sp.policy.affinity_timeout {
        Some(t) if per_endpoint_sets => {
            for ep in eps {
                let name = affinity_set(ep);
                if !extra_sets.iter().any(|s| s.name == name) {
                    let mut s = set(
                        &name,
                        vec![fam.addr_type()],
                        None,
                        &format!("{} affinity to {ep}", sp.name),
                    );
                    s.flags.dynamic = true;
                    s.flags.timeout = true;
                    s.timeout = Some(t);
                    extra_sets.push(s);
                }
                rules.push(
                    Rule::new()
                        .m(Match::Saddr {
                            negate: false,
                            addr: AddrMatch::Set(name),
                        })
                        .m(Match::L4Proto(sp.protocol))
                        .s(Stmt::Dnat {
                            addr: ep.addr,
                            port: ep.port,
                        })
                        .comment(format!("session affinity: {ep}")),
                );
            }
        }
        Some(_) => rules.push(
            Rule::new()
                .s(Stmt::DnatMap {
                    key: AFFINITY_KEY.to_vec(),
                    map: names::AFFINITY.into(),
                })
                .comment("session affinity: the endpoint this client used before"),
        ),
        None => {}
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let mut r = Rule::new().m(Match::L4Proto(sp.protocol));
        if i + 1 < n {
            r = r.m(Match::NumgenRandomZero {
                modulus: (n - i) as u32,
            });
        }
        if let Some(t) = sp.policy.affinity_timeout {
            r = if per_endpoint_sets {
                r.s(Stmt::Update {
                    set: affinity_set(ep),
                    key: vec![Field::Saddr],
                    timeout: t,
                    data: vec![],
                })
            } else {
                r.s(Stmt::Update {
                    set: names::AFFINITY.into(),
                    key: AFFINITY_KEY.to_vec(),
                    timeout: t,
                    data: vec![Value::Addr(ep.addr), Value::Port(ep.port)],
                })
            };
        }
        rules.push(
            r.s(Stmt::Dnat {
                addr: ep.addr,
                port: ep.port,
            })
            .comment(ep.to_string()),
        );
    }
    rules
}

/// What the service ports add to a table, gathered while building it.
struct Acc {
    /// The fixed sets and maps (indexed by [`Sets`]).
    sets: Vec<Set>,
    /// Per-service-port chains.
    chains: Vec<Chain>,
    cluster_ips: Vec<IpAddr>,
    hairpin: Vec<IpAddr>,
    /// IPv6 per-endpoint affinity sets (see [`endpoint_rules`]).
    extra_sets: Vec<Set>,
}

fn build_service_port(f: &FamilyIr, sp: &ServicePort, ix: &Sets, acc: &mut Acc) {
    let Acc {
        sets,
        chains,
        cluster_ips,
        hairpin,
        extra_sets,
    } = acc;
    let spn = sp.name.to_string();
    let proto = sp.protocol;
    let b = &sp.backends;
    let pol = &sp.policy;
    let cluster_chain = names::cluster_chain(&sp.name);
    let local_chain = names::local_chain(&sp.name);
    let external_chain = names::external_chain(&sp.name);

    let d = sp.dispatch();
    let uses_cluster_chain = d.uses_cluster;
    let uses_local_chain = d.uses_local;
    let policy_chain = |c: PolicyChain| match c {
        PolicyChain::Cluster => &cluster_chain,
        PolicyChain::Local => &local_chain,
    };
    let uses_external_chain = d.uses_external_chain;
    let filter_verdict = |f: FilterVerdict| match f {
        FilterVerdict::Reject => ElemData::Verdict(Verdict::Goto(names::REJECT_CHAIN.into())),
        FilterVerdict::Drop => ElemData::Verdict(Verdict::Drop),
    };
    let internal_filter = d.internal_filter.map(filter_verdict);
    let external_filter = d.external_filter.map(filter_verdict);

    if uses_cluster_chain {
        chains.push(Chain {
            name: cluster_chain.clone(),
            base: None,
            comment: comment(format!("{spn} cluster endpoints")),
            rules: endpoint_rules(f.family, sp, &b.cluster, extra_sets),
        });
    }
    if uses_local_chain {
        chains.push(Chain {
            name: local_chain.clone(),
            base: None,
            comment: comment(format!("{spn} local endpoints")),
            rules: endpoint_rules(f.family, sp, &b.local, extra_sets),
        });
    }
    for ep in b.cluster.iter().chain(b.local.iter()) {
        hairpin.push(ep.addr);
    }
    if uses_external_chain {
        let mut rules = Vec::new();
        if !pol.external_local {
            rules.push(
                Rule::new()
                    .v(jump(names::MARK_FOR_MASQUERADE))
                    .comment("external traffic may leave the node"),
            );
        } else {
            // Pods reaching an external address of the service: neither policy applies
            // (as if they went out to the load balancer and came back).
            let short = if uses_cluster_chain {
                Some(&cluster_chain)
            } else if uses_local_chain {
                Some(&local_chain)
            } else {
                None
            };
            if let Some(target) = short {
                for c in &f.cluster_cidrs {
                    rules.push(
                        Rule::new()
                            .m(Match::Saddr {
                                negate: false,
                                addr: AddrMatch::Net(*c),
                            })
                            .v(goto(target))
                            .comment("short-circuit pod traffic"),
                    );
                }
                rules.push(
                    Rule::new()
                        .m(Match::FibSaddrLocal)
                        .v(jump(names::MARK_FOR_MASQUERADE))
                        .comment("masquerade local traffic"),
                );
                rules.push(
                    Rule::new()
                        .m(Match::FibSaddrLocal)
                        .v(goto(target))
                        .comment("short-circuit local traffic"),
                );
            }
        }
        if let Some(c) = d.external {
            rules.push(Rule::new().v(goto(policy_chain(c))));
        }
        chains.push(Chain {
            name: external_chain.clone(),
            base: None,
            comment: comment(format!("{spn} external traffic")),
            rules,
        });
    }

    for fe in &sp.frontends {
        match fe.kind {
            FrontendKind::ClusterIp => {
                let a = fe.addr.expect("ClusterIP frontend has an address");
                cluster_ips.push(a);
                if let Some(c) = d.internal {
                    sets[ix.service_ips].elements.push(elem3(
                        a,
                        proto,
                        fe.port,
                        ElemData::Verdict(goto(policy_chain(c))),
                        &spn,
                    ));
                } else if let Some(v) = &internal_filter {
                    sets[ix.no_ep_services].elements.push(elem3(
                        a,
                        proto,
                        fe.port,
                        v.clone(),
                        &spn,
                    ));
                }
            }
            FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {
                let a = fe.addr.expect("external frontend has an address");
                if uses_external_chain {
                    sets[ix.service_ips].elements.push(elem3(
                        a,
                        proto,
                        fe.port,
                        ElemData::Verdict(goto(&external_chain)),
                        &spn,
                    ));
                }
                if let Some(v) = &external_filter {
                    sets[ix.no_ep_services].elements.push(elem3(
                        a,
                        proto,
                        fe.port,
                        v.clone(),
                        &spn,
                    ));
                }
                if fe.kind == FrontendKind::LoadBalancer && !pol.source_ranges.is_empty() {
                    let key3 = vec![Value::Addr(a), Value::Proto(proto), Value::Port(fe.port)];
                    sets[ix.firewall_ips].elements.push(Element {
                        key: key3.clone(),
                        data: None,
                        comment: comment(&spn),
                    });
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
                        let mut k = key3.clone();
                        k.push(Value::Prefix(r));
                        sets[ix.firewall_allow].elements.push(Element {
                            key: k,
                            data: None,
                            comment: comment(&spn),
                        });
                    }
                }
            }
            FrontendKind::NodePort => {
                if uses_external_chain {
                    sets[ix.service_nodeports].elements.push(elem2(
                        proto,
                        fe.port,
                        ElemData::Verdict(goto(&external_chain)),
                        &spn,
                    ));
                }
                if let Some(v) = &external_filter {
                    sets[ix.no_ep_nodeports]
                        .elements
                        .push(elem2(proto, fe.port, v.clone(), &spn));
                }
            }
        }
    }
}

/// Endpoint-map ids of the service ports of one family (stable: a function of the names).
#[derive(Debug, Clone, Default)]
pub struct EndpointIds {}

pub fn endpoint_ids(_f: &FamilyIr) -> EndpointIds {
    EndpointIds {}
}

impl EndpointIds {
    pub fn insert(&mut self, _spn: &crate::ir::ServicePortName) -> bool {
        true
    }
    pub fn remove(&mut self, _spn: &crate::ir::ServicePortName) -> bool {
        true
    }
}

/// What one service port adds to its family's table.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePortParts {
    pub chains: Vec<Chain>,
    /// (set or map name, element), for the fixed sets/maps; CLUSTER_IPS and HAIRPIN elements
    /// are included once per service port (several service ports may add the same one).
    pub elements: Vec<(&'static str, Element)>,
    /// IPv6 per-endpoint affinity sets.
    pub extra_sets: Vec<Set>,
}

pub fn service_port_parts(f: &FamilyIr, sp: &ServicePort, _ids: &EndpointIds) -> ServicePortParts {
    const FIXED: [&str; 12] = [
        names::CLUSTER_IPS,
        names::SERVICE_IPS,
        names::SERVICE_NODEPORTS,
        names::NODEPORT_IPS,
        names::NO_ENDPOINT_SERVICES,
        names::NO_ENDPOINT_NODEPORTS,
        names::FIREWALL_IPS,
        names::FIREWALL_ALLOW,
        names::AFFINITY,
        names::HAIRPIN,
        names::CLUSTER_CIDRS,
        names::SERVICE_CIDRS,
    ];
    let empty = FamilyIr {
        family: f.family,
        node_ports_on: f.node_ports_on.clone(),
        node_ips: f.node_ips.clone(),
        cluster_cidrs: f.cluster_cidrs.clone(),
        masquerade_all: f.masquerade_all,
        masquerade_mark: f.masquerade_mark,
        service_cidrs: f.service_cidrs.clone(),
        service_ports: Vec::new(),
    };
    let skeleton = build_table(&empty);
    let one = FamilyIr {
        service_ports: vec![std::sync::Arc::new(sp.clone())],
        ..empty
    };
    let mut t = build_table(&one);
    let chains = t.chains.split_off(skeleton.chains.len());
    let extra_sets = t.sets.split_off(skeleton.sets.len());
    let mut elements = Vec::new();
    for (s, k) in t.sets.into_iter().zip(&skeleton.sets) {
        let name = FIXED.iter().find(|n| **n == s.name).expect("a fixed set");
        elements.extend(
            s.elements
                .into_iter()
                .skip(k.elements.len())
                .map(|e| (*name, e)),
        );
    }
    ServicePortParts {
        chains,
        elements,
        extra_sets,
    }
}
