//! IR → iptables chains, the way kube-proxy's iptables mode lays them out
//! (pkg/proxy/iptables/proxier.go), under svcc's own `SVCC-` prefix so that it can run beside
//! a kube-proxy without collisions. The decisions all come from the IR; only their expression
//! differs from the nftables writer.

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::model::*;
use crate::ir::*;

pub const SERVICES: &str = "SVCC-SERVICES";
pub const EXTERNAL_SERVICES: &str = "SVCC-EXTERNAL-SERVICES";
pub const NODEPORTS: &str = "SVCC-NODEPORTS";
pub const POSTROUTING: &str = "SVCC-POSTROUTING";
pub const MARK_MASQ: &str = "SVCC-MARK-MASQ";
pub const PROXY_FIREWALL: &str = "SVCC-PROXY-FIREWALL";
pub const FORWARD: &str = "SVCC-FORWARD";
/// Masquerade-unless-local, for more than one pod CIDR per family (`! -s` takes one).
pub const CIP_MASQ: &str = "SVCC-CIP-MASQ";
/// Every chain name svcc owns starts with this.
pub const PREFIX: &str = "SVCC-";

/// kube-proxy's `portProtoHash`: base32(sha256(servicePortName + protocol))[:16].
fn hash16(s: &str) -> String {
    let h = Sha256::digest(s.as_bytes());
    data_encoding::BASE32.encode(&h)[..16].to_string()
}

fn port_chain(prefix: &str, sp: &ServicePort) -> String {
    format!(
        "{prefix}{}",
        hash16(&format!("{}{}", sp.name, sp.protocol.keyword()))
    )
}

fn sep_chain(sp: &ServicePort, ep: &Backend) -> String {
    format!(
        "SVCC-SEP-{}",
        hash16(&format!("{}{}{}", sp.name, sp.protocol.keyword(), ep))
    )
}

fn host(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

struct Writer {
    nat_chains: Vec<String>,
    nat: Vec<IptRule>,
    filter: Vec<IptRule>,
}

fn rule(chain: &str, comment: Option<String>, matches: Vec<IptMatch>, target: Target) -> IptRule {
    IptRule {
        chain: chain.to_string(),
        comment,
        matches,
        target,
    }
}

pub fn build(ir: &Ir) -> Vec<IptRuleset> {
    ir.families.iter().map(build_family).collect()
}

fn build_family(f: &FamilyIr) -> IptRuleset {
    let mark = f.masquerade_mark;
    let mut w = Writer {
        nat_chains: Vec::new(),
        nat: Vec::new(),
        filter: Vec::new(),
    };
    let loopback = f.family.loopback();
    let multi_cidr = f.cluster_cidrs.len() > 1;

    for sp in &f.service_ports {
        write_service_port(f, sp, &mut w);
    }

    // NodePorts: the last rule of SVCC-SERVICES. Never on loopback (no route_localnet).
    match &f.node_ports_on {
        NodePortAddrs::AllLocal => w.nat.push(rule(
            SERVICES,
            Some("svcc service nodeports; NOTE: this must be the last rule in this chain".into()),
            vec![
                IptMatch::Dst {
                    negate: true,
                    net: loopback,
                },
                IptMatch::DstLocal,
            ],
            Target::Jump(NODEPORTS.into()),
        )),
        NodePortAddrs::Addrs(a) => {
            for ip in a {
                w.nat.push(rule(
                    SERVICES,
                    Some(
                        "svcc service nodeports; NOTE: this must be the last rule in this chain"
                            .into(),
                    ),
                    vec![IptMatch::Dst {
                        negate: false,
                        net: host(*ip),
                    }],
                    Target::Jump(NODEPORTS.into()),
                ));
            }
        }
    }
    let mut nat_chains = vec![
        SERVICES.to_string(),
        NODEPORTS.to_string(),
        POSTROUTING.to_string(),
        MARK_MASQ.to_string(),
    ];
    let mut nat = vec![
        rule(MARK_MASQ, None, vec![], Target::MarkOr(mark)),
        rule(
            POSTROUTING,
            None,
            vec![IptMatch::Mark { negate: true, mark }],
            Target::Return,
        ),
        rule(POSTROUTING, None, vec![], Target::MarkXor(mark)),
        rule(
            POSTROUTING,
            Some("svcc service traffic requiring SNAT".into()),
            vec![],
            Target::Masquerade { random_fully: true },
        ),
    ];
    if multi_cidr {
        nat_chains.push(CIP_MASQ.into());
        for c in &f.cluster_cidrs {
            nat.push(rule(
                CIP_MASQ,
                Some("pod traffic".into()),
                vec![IptMatch::Src {
                    negate: false,
                    net: *c,
                }],
                Target::Return,
            ));
        }
        nat.push(rule(CIP_MASQ, None, vec![], Target::Jump(MARK_MASQ.into())));
    }
    nat_chains.extend(w.nat_chains);
    nat.extend(w.nat);

    let filter_chains: Vec<String> = [
        SERVICES,
        EXTERNAL_SERVICES,
        NODEPORTS,
        PROXY_FIREWALL,
        FORWARD,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut filter = w.filter;
    if f.drop_ct_invalid {
        filter.push(rule(
            FORWARD,
            None,
            vec![IptMatch::CtState("INVALID")],
            Target::Drop,
        ));
    }
    filter.push(rule(
        FORWARD,
        Some("svcc forwarding rules".into()),
        vec![IptMatch::Mark {
            negate: false,
            mark,
        }],
        Target::Accept,
    ));
    filter.push(rule(
        FORWARD,
        Some("svcc forwarding conntrack rule".into()),
        vec![IptMatch::CtState("RELATED,ESTABLISHED")],
        Target::Accept,
    ));

    let j =
        |table: &'static str, chain: &'static str, comment: &str, ct_new: bool, to: &str| IptJump {
            table,
            chain,
            rule: IptRule {
                chain: chain.to_string(),
                comment: Some(comment.to_string()),
                matches: if ct_new {
                    vec![IptMatch::CtState("NEW")]
                } else {
                    vec![]
                },
                target: Target::Jump(to.to_string()),
            },
        };
    let jumps = vec![
        j("nat", "PREROUTING", "svcc service portals", false, SERVICES),
        j("nat", "OUTPUT", "svcc service portals", false, SERVICES),
        j(
            "nat",
            "POSTROUTING",
            "svcc postrouting rules",
            false,
            POSTROUTING,
        ),
        j(
            "filter",
            "INPUT",
            "svcc load balancer firewall",
            true,
            PROXY_FIREWALL,
        ),
        j(
            "filter",
            "INPUT",
            "svcc health check service ports",
            false,
            NODEPORTS,
        ),
        j(
            "filter",
            "INPUT",
            "svcc externally-visible service portals",
            true,
            EXTERNAL_SERVICES,
        ),
        j(
            "filter",
            "FORWARD",
            "svcc load balancer firewall",
            true,
            PROXY_FIREWALL,
        ),
        j("filter", "FORWARD", "svcc forwarding rules", false, FORWARD),
        j("filter", "FORWARD", "svcc service portals", true, SERVICES),
        j(
            "filter",
            "FORWARD",
            "svcc externally-visible service portals",
            true,
            EXTERNAL_SERVICES,
        ),
        j(
            "filter",
            "OUTPUT",
            "svcc load balancer firewall",
            true,
            PROXY_FIREWALL,
        ),
        j("filter", "OUTPUT", "svcc service portals", true, SERVICES),
    ];

    IptRuleset {
        family: f.family,
        tables: vec![
            IptTable {
                name: "nat",
                chains: nat_chains,
                rules: nat,
            },
            IptTable {
                name: "filter",
                chains: filter_chains,
                rules: filter,
            },
        ],
        jumps,
    }
}

fn write_service_port(f: &FamilyIr, sp: &ServicePort, w: &mut Writer) {
    let spn = sp.name.to_string();
    let b = &sp.backends;
    let pol = &sp.policy;
    let proto = sp.protocol;
    let svc = port_chain("SVCC-SVC-", sp);
    let svl = port_chain("SVCC-SVL-", sp);
    let ext = port_chain("SVCC-EXT-", sp);
    let fw = port_chain("SVCC-FW-", sp);

    let d = sp.dispatch();
    let (uses_cluster, uses_local, has_endpoints) = (d.uses_cluster, d.uses_local, d.has_endpoints);
    let policy_chain = |c: PolicyChain| match c {
        PolicyChain::Cluster => &svc,
        PolicyChain::Local => &svl,
    };
    let uses_ext = d.uses_external_chain;
    let lb_ips: Vec<IpAddr> = sp
        .frontends
        .iter()
        .filter(|x| x.kind == FrontendKind::LoadBalancer)
        .filter_map(|x| x.addr)
        .collect();
    let uses_fw = has_endpoints && !lb_ips.is_empty() && !pol.source_ranges.is_empty();
    let target = |f: FilterVerdict| match f {
        FilterVerdict::Reject => Target::Reject,
        FilterVerdict::Drop => Target::Drop,
    };
    let (internal_filter, external_filter) =
        (d.internal_filter.map(target), d.external_filter.map(target));
    let pm = |port| IptMatch::Proto {
        proto,
        dport: Some(port),
    };
    let dst = |a: IpAddr| IptMatch::Dst {
        negate: false,
        net: host(a),
    };

    if uses_cluster {
        w.nat_chains.push(svc.clone());
    }
    if uses_local {
        w.nat_chains.push(svl.clone());
    }
    if uses_ext {
        w.nat_chains.push(ext.clone());
    }
    if uses_fw {
        w.nat_chains.push(fw.clone());
    }
    // The health check port gets through the node's firewall, with or without local
    // endpoints (kube-proxy's iptables mode: filter KUBE-NODEPORTS; its nftables mode has no
    // such rule).
    if let Some(hc) = pol.health_check_node_port {
        w.filter.push(rule(
            NODEPORTS,
            Some(format!("{spn} health check node port")),
            vec![IptMatch::Proto {
                proto: crate::family::L4Proto::Tcp,
                dport: Some(hc),
            }],
            Target::Accept,
        ));
    }

    let no_endpoints = Some(format!(
        "{spn} has no {}endpoints",
        if has_endpoints { "local " } else { "" }
    ));
    for fe in &sp.frontends {
        match fe.kind {
            FrontendKind::ClusterIp => {
                let a = fe.addr.expect("ClusterIP has an address");
                if let Some(internal_chain) = d.internal.map(policy_chain) {
                    let c = Some(format!("{spn} cluster IP"));
                    w.nat.push(rule(
                        SERVICES,
                        c.clone(),
                        vec![pm(fe.port), dst(a)],
                        Target::Jump(internal_chain.clone()),
                    ));
                    // Masquerade off-cluster traffic to the ClusterIP (first rule of the chain).
                    let m = vec![pm(fe.port), dst(a)];
                    if f.masquerade_all {
                        w.nat
                            .push(rule(internal_chain, c, m, Target::Jump(MARK_MASQ.into())));
                    } else if f.cluster_cidrs.len() == 1 {
                        let mut m = m;
                        m.push(IptMatch::Src {
                            negate: true,
                            net: f.cluster_cidrs[0],
                        });
                        w.nat
                            .push(rule(internal_chain, c, m, Target::Jump(MARK_MASQ.into())));
                    } else if f.cluster_cidrs.len() > 1 {
                        w.nat
                            .push(rule(internal_chain, c, m, Target::Jump(CIP_MASQ.into())));
                    }
                } else if let Some(t) = &internal_filter {
                    let c = no_endpoints.clone();
                    w.filter
                        .push(rule(SERVICES, c, vec![pm(fe.port), dst(a)], t.clone()));
                }
            }
            FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {
                let a = fe.addr.expect("external frontend has an address");
                let lb = fe.kind == FrontendKind::LoadBalancer;
                if uses_ext {
                    let c = Some(format!(
                        "{spn} {}",
                        if lb { "loadbalancer IP" } else { "external IP" }
                    ));
                    let to = if lb && uses_fw { &fw } else { &ext };
                    w.nat.push(rule(
                        SERVICES,
                        c,
                        vec![pm(fe.port), dst(a)],
                        Target::Jump(to.clone()),
                    ));
                }
                if let Some(t) = &external_filter {
                    let c = no_endpoints.clone();
                    w.filter.push(rule(
                        EXTERNAL_SERVICES,
                        c,
                        vec![pm(fe.port), dst(a)],
                        t.clone(),
                    ));
                }
                if lb && uses_fw {
                    w.filter.push(rule(
                        PROXY_FIREWALL,
                        Some(format!("{spn} traffic not accepted by {fw}")),
                        vec![pm(fe.port), dst(a)],
                        Target::Drop,
                    ));
                }
            }
            FrontendKind::NodePort => {
                if uses_ext {
                    w.nat.push(rule(
                        NODEPORTS,
                        Some(spn.clone()),
                        vec![pm(fe.port)],
                        Target::Jump(ext.clone()),
                    ));
                }
                if let Some(t) = &external_filter {
                    let c = no_endpoints.clone();
                    w.filter.push(rule(
                        EXTERNAL_SERVICES,
                        c,
                        vec![IptMatch::DstLocal, pm(fe.port)],
                        t.clone(),
                    ));
                }
            }
        }
    }

    if uses_ext {
        if !pol.external_local {
            w.nat.push(rule(
                &ext,
                Some(format!(
                    "masquerade traffic for {spn} external destinations"
                )),
                vec![],
                Target::Jump(MARK_MASQ.into()),
            ));
        } else {
            let short = if uses_cluster {
                Some(&svc)
            } else if uses_local {
                Some(&svl)
            } else {
                None
            };
            if let Some(target) = short {
                for c in &f.cluster_cidrs {
                    w.nat.push(rule(
                        &ext,
                        Some(format!("pod traffic for {spn} external destinations")),
                        vec![IptMatch::Src {
                            negate: false,
                            net: *c,
                        }],
                        Target::Jump(target.clone()),
                    ));
                }
                w.nat.push(rule(
                    &ext,
                    Some(format!(
                        "masquerade LOCAL traffic for {spn} external destinations"
                    )),
                    vec![IptMatch::SrcLocal],
                    Target::Jump(MARK_MASQ.into()),
                ));
                w.nat.push(rule(
                    &ext,
                    Some(format!(
                        "route LOCAL traffic for {spn} external destinations"
                    )),
                    vec![IptMatch::SrcLocal],
                    Target::Jump(target.clone()),
                ));
            }
        }
        if let Some(c) = d.external {
            w.nat.push(rule(
                &ext,
                None,
                vec![],
                Target::Jump(policy_chain(c).clone()),
            ));
        }
    }

    if uses_fw {
        let mut allowed = pol.source_ranges.clone();
        if pol.allow_lb_ips_as_source {
            allowed.extend(lb_ips.iter().map(|a| host(*a)));
        }
        for r in allowed {
            w.nat.push(rule(
                &fw,
                Some(format!("{spn} loadbalancer IP")),
                vec![IptMatch::Src {
                    negate: false,
                    net: r,
                }],
                Target::Jump(ext.clone()),
            ));
        }
    }

    let mut seps: Vec<(String, &Backend)> = Vec::new();
    if uses_cluster {
        endpoint_rules(sp, &svc, &b.cluster, w, &mut seps);
    }
    if uses_local {
        endpoint_rules(sp, &svl, &b.local, w, &mut seps);
    }
    seps.sort_by(|a, b| a.0.cmp(&b.0));
    seps.dedup_by(|a, b| a.0 == b.0);
    for (chain, ep) in seps {
        w.nat_chains.push(chain.clone());
        w.nat.push(rule(
            &chain,
            Some(spn.clone()),
            vec![IptMatch::Src {
                negate: false,
                net: host(ep.addr),
            }],
            Target::Jump(MARK_MASQ.into()),
        ));
        let mut m = vec![IptMatch::Proto { proto, dport: None }];
        if pol.affinity_timeout.is_some() {
            m.push(IptMatch::RecentSet {
                name: chain.clone(),
            });
        }
        w.nat.push(rule(
            &chain,
            Some(spn.clone()),
            m,
            Target::Dnat {
                addr: ep.addr,
                port: ep.port,
            },
        ));
    }
}

/// Affinity checks, then `statistic` probabilities 1/(n-i) — kube-proxy's
/// `writeServiceToEndpointRules`.
fn endpoint_rules<'a>(
    sp: &ServicePort,
    chain: &str,
    eps: &'a [Backend],
    w: &mut Writer,
    seps: &mut Vec<(String, &'a Backend)>,
) {
    let spn = sp.name.to_string();
    if let Some(t) = sp.policy.affinity_timeout {
        for ep in eps {
            let sep = sep_chain(sp, ep);
            w.nat.push(rule(
                chain,
                Some(format!("{spn} -> {ep}")),
                vec![IptMatch::RecentCheck {
                    name: sep.clone(),
                    seconds: t,
                }],
                Target::Jump(sep),
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(sp, ep);
        let mut m = Vec::new();
        if i + 1 < n {
            m.push(IptMatch::Probability(1.0 / (n - i) as f64));
        }
        w.nat.push(rule(
            chain,
            Some(format!("{spn} -> {ep}")),
            m,
            Target::Jump(sep.clone()),
        ));
        seps.push((sep, ep));
    }
}
