//! Typed objects → IR: validation, joining Services with their endpoints, and every per-node
//! decision kube-proxy makes (`CategorizeEndpoints`, topology, traffic policies).
//!
//! One invalid object never blocks the rest: it gets a diagnostic and is left out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{NodePortAddresses, NodeSettings};
use crate::diag::{Diagnostic, Origin, PathSeg, Severity};
use crate::ir::*;
use crate::manifest::{Object, Parsed};
use crate::nft::model::{Family, L4Proto};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
const MAX_AFFINITY_TIMEOUT: u32 = 86400;

/// Something worth telling a user with `--verbose` (not a problem with the input).
pub type Note = String;

fn key(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}
fn idx(i: usize) -> PathSeg {
    PathSeg::Index(i)
}

/// A validated Service, family-independent.
struct Svc<'a> {
    origin: &'a Origin,
    namespace: String,
    name: String,
    cluster_ips: Vec<IpAddr>,
    ports: Vec<SvcPort>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
    external_local: bool,
    internal_local: bool,
    affinity_timeout: Option<u32>,
    health_check_node_port: Option<u16>,
}

struct SvcPort {
    name: String,
    protocol: L4Proto,
    port: u16,
    node_port: Option<u16>,
}

/// One endpoint of one service port, before categorisation.
#[derive(Debug, Clone)]
pub(crate) struct Ep {
    addr: IpAddr,
    port: u16,
    node: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

/// Endpoints of one Service keyed by (port name, protocol).
pub(crate) type EpMap = BTreeMap<(String, L4Proto), Vec<Ep>>;

/// Lowers every object of `parsed` (see [`lower_objects`]).
pub fn lower(
    parsed: &Parsed,
    settings: &NodeSettings,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> Ir {
    lower_objects(&parsed.objects, settings, diags, notes)
}

/// Lowers objects from any number of sources (the long-running applier keeps them per file).
pub fn lower_objects<'a>(
    objects: impl IntoIterator<Item = &'a (Origin, Object)>,
    settings: &NodeSettings,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> Ir {
    lower_tracked(objects, settings, diags, notes).0
}

/// `namespace`, `name` of a Service.
pub(crate) type SvcKey = (String, String);

/// What an incremental re-lowering of one Service needs from the last full lowering (see
/// [`crate::session`]).
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    /// The node's zone (from its Node object), for topology hints.
    pub zone: Option<String>,
    /// The diagnostics (indexes into the `diags` given) about each Service: its own
    /// validation, its endpoint objects, its slices when it is not lowered.
    pub service_diags: Vec<(SvcKey, std::ops::Range<usize>)>,
    /// The notes (indexes into `notes`) about each Service.
    pub service_notes: Vec<(SvcKey, std::ops::Range<usize>)>,
    /// Services in a conflict (duplicate, nodePort or frontend served twice), either side:
    /// which one wins depends on the input order, so only a full lowering decides.
    pub conflicted: HashSet<SvcKey>,
    /// NodePorts of the lowered Services.
    pub node_ports: HashMap<(L4Proto, u16), SvcKey>,
}

/// `ns/name` (as diagnostics name a Service) back to its key.
fn key_of(s: &str) -> SvcKey {
    let (ns, name) = s.split_once('/').unwrap_or(("", s));
    (ns.to_string(), name.to_string())
}

/// The key of a Service object, valid or not.
pub(crate) fn service_key(s: &Service) -> SvcKey {
    (
        s.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

/// [`lower_objects`], also saying which diagnostics and notes are about which Service, which
/// Services are in a conflict, and what each claims ([`Tracking`]).
pub(crate) fn lower_tracked<'a>(
    objects: impl IntoIterator<Item = &'a (Origin, Object)>,
    settings: &NodeSettings,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> (Ir, Tracking) {
    let mut tracking = Tracking::default();
    let mut node_zone: Option<String> = None;
    let mut service_cidrs: Vec<IpNet> = settings.service_cidrs.clone();
    let mut services: Vec<Svc> = Vec::new();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut node_ports: HashMap<(L4Proto, u16), String> = HashMap::new();
    let mut slices: BTreeMap<(String, String), Vec<(&Origin, &EndpointSlice)>> = BTreeMap::new();
    let mut legacy: BTreeMap<(String, String), (&Origin, &Endpoints)> = BTreeMap::new();

    for (origin, obj) in objects {
        match obj {
            Object::Node(n) => {
                if n.metadata.name.as_deref() == Some(settings.hostname.as_str()) {
                    node_zone = n
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(ZONE_LABEL))
                        .cloned();
                }
            }
            Object::ServiceCidr(sc) => {
                let name = sc.metadata.name.clone().unwrap_or_default();
                let cidrs = sc
                    .spec
                    .as_ref()
                    .and_then(|s| s.cidrs.clone())
                    .unwrap_or_default();
                for (i, c) in cidrs.iter().enumerate() {
                    match c.parse::<IpNet>() {
                        Ok(n) => service_cidrs.push(n.trunc()),
                        Err(_) => diags.push(Diagnostic::at_field(
                            Severity::Error,
                            origin,
                            Some(format!("ServiceCIDR {name}")),
                            &[key("spec"), key("cidrs"), idx(i)],
                            format!("invalid CIDR {c:?}"),
                        )),
                    }
                }
            }
            Object::Service(s) => {
                let (d0, n0) = (diags.len(), notes.len());
                let v = validate_service(origin, s, diags, notes);
                let sk = service_key(s);
                tracking.service_diags.push((sk.clone(), d0..diags.len()));
                tracking.service_notes.push((sk, n0..notes.len()));
                let Some(v) = v else {
                    continue;
                };
                let k = (v.namespace.clone(), v.name.clone());
                if seen.contains_key(&k) {
                    tracking.conflicted.insert(k.clone());
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        origin,
                        Some(format!("Service {}/{}", k.0, k.1)),
                        &[key("metadata"), key("name")],
                        "duplicate Service: defined more than once in the input",
                    ));
                    continue;
                }
                let mut clash = None;
                for (i, p) in v.ports.iter().enumerate() {
                    if let Some(np) = p.node_port {
                        if let Some(other) = node_ports.get(&(p.protocol, np)) {
                            clash = Some((i, np, other.clone()));
                            break;
                        }
                    }
                }
                if let Some((i, np, other)) = clash {
                    tracking.conflicted.insert(k.clone());
                    tracking.conflicted.insert(key_of(&other));
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        origin,
                        Some(format!("Service {}/{}", k.0, k.1)),
                        &[key("spec"), key("ports"), idx(i), key("nodePort")],
                        format!("nodePort {np} is already used by Service {other}"),
                    ));
                    continue;
                }
                for p in &v.ports {
                    if let Some(np) = p.node_port {
                        node_ports.insert((p.protocol, np), format!("{}/{}", k.0, k.1));
                    }
                }
                seen.insert(k, services.len());
                services.push(v);
            }
            Object::EndpointSlice(es) => {
                let ns = es
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let svc = es
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .cloned();
                match svc {
                    Some(svc) => slices.entry((ns, svc)).or_default().push((origin, es)),
                    None => diags.push(Diagnostic::at_field(
                        Severity::Warning,
                        origin,
                        Some(format!("EndpointSlice {ns}/{}", es.metadata.name.clone().unwrap_or_default())),
                        &[key("metadata"), key("labels")],
                        format!("no {SERVICE_NAME_LABEL} label: the slice belongs to no Service and is ignored"),
                    )),
                }
            }
            Object::Endpoints(ep) => {
                let ns = ep
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let name = ep.metadata.name.clone().unwrap_or_default();
                legacy.insert((ns, name), (origin, ep));
            }
        }
    }

    // Endpoint data without a Service: a warning (kube-proxy ignores it too).
    for ((ns, svc), list) in &slices {
        if !seen.contains_key(&(ns.clone(), svc.clone())) {
            let d0 = diags.len();
            orphan_slices(&(ns.clone(), svc.clone()), list, diags);
            tracking
                .service_diags
                .push(((ns.clone(), svc.clone()), d0..diags.len()));
        }
    }
    tracking.node_ports = node_ports.iter().map(|(p, k)| (*p, key_of(k))).collect();
    // Families: those of the node IPs; without any, those the Services use.
    let mut families: BTreeSet<Family> = settings.node_ips.iter().map(Family::of).collect();
    if families.is_empty() {
        families = services
            .iter()
            .flat_map(|s| s.cluster_ips.iter().map(Family::of))
            .collect();
        if families.is_empty() {
            families.insert(Family::Ip);
        }
    }

    // Endpoints per service, validated once.
    let mut eps_by_svc: HashMap<(String, String), EpMap> = HashMap::new();
    for s in &services {
        let k = (s.namespace.clone(), s.name.clone());
        let start = diags.len();
        let map = service_endpoints(
            slices.get(&k).map(Vec::as_slice).unwrap_or_default(),
            legacy.get(&k).copied(),
            diags,
        );
        if diags.len() > start {
            tracking.service_diags.push((k.clone(), start..diags.len()));
        }
        eps_by_svc.insert(k, map);
    }
    tracking.zone = node_zone.clone();

    let mut fams = Vec::new();
    for fam in families {
        let is_fam = |a: &IpAddr| Family::of(a) == fam;
        let node_ips: Vec<IpAddr> = settings.node_ips.iter().copied().filter(is_fam).collect();
        let usable_node_ips: Vec<IpAddr> = node_ips
            .iter()
            .copied()
            .filter(|a| !a.is_loopback())
            .collect();
        let node_ports_on = match &settings.nodeport_addresses {
            NodePortAddresses::Cidrs(c) if c.iter().any(|n| is_fam(&n.addr())) => {
                let c: Vec<&IpNet> = c.iter().filter(|n| is_fam(&n.addr())).collect();
                if c.iter().any(|n| n.prefix_len() == 0) {
                    NodePortAddrs::AllLocal
                } else {
                    NodePortAddrs::Addrs(
                        usable_node_ips
                            .iter()
                            .copied()
                            .filter(|a| c.iter().any(|n| n.contains(a)))
                            .collect(),
                    )
                }
            }
            _ if usable_node_ips.is_empty() => {
                if !services.is_empty() {
                    notes.push(format!(
                        "{}: no node IP of this family given (--node-ip): NodePorts are accepted on every local non-loopback address",
                        fam.keyword()
                    ));
                }
                NodePortAddrs::AllLocal
            }
            // `primary` (and the nftables default): the node's primary IP of the family, which
            // is the first --node-ip of that family, as cmd/kube-proxy passes NodeIPs[family].
            _ => NodePortAddrs::Addrs(usable_node_ips[..1].to_vec()),
        };
        let mut fir = FamilyIr {
            family: fam,
            node_ports_on,
            node_ips: node_ips.clone(),
            cluster_cidrs: settings
                .cluster_cidrs
                .iter()
                .copied()
                .filter(|n| is_fam(&n.addr()))
                .collect(),
            masquerade_all: settings.masquerade_all,
            masquerade_mark: settings.masquerade_mark(),
            service_cidrs: dedup_sorted(
                service_cidrs
                    .iter()
                    .copied()
                    .filter(|n| is_fam(&n.addr()))
                    .collect(),
            ),
            service_ports: Vec::new(),
        };
        // (address, protocol, port) of every frontend so far: a second Service on the same one
        // is an input error (the kernel's maps cannot hold both).
        let mut taken = Taken::new();
        for s in &services {
            let eps = &eps_by_svc[&(s.namespace.clone(), s.name.clone())];
            family_ports(
                s,
                eps,
                fam,
                &node_ips,
                settings,
                node_zone.as_deref(),
                &mut taken,
                diags,
                &mut tracking.conflicted,
                &mut fir.service_ports,
            );
        }
        fir.service_ports.sort_by(|a, b| a.name.cmp(&b.name));
        fams.push(fir);
    }
    (Ir { families: fams }, tracking)
}

/// The endpoints of one Service: from its EndpointSlices, else from its legacy Endpoints.
pub(crate) fn service_endpoints(
    slices: &[(&Origin, &EndpointSlice)],
    legacy: Option<(&Origin, &Endpoints)>,
    diags: &mut Vec<Diagnostic>,
) -> EpMap {
    if !slices.is_empty() {
        collect_slices(slices, diags)
    } else if let Some((origin, ep)) = legacy {
        collect_legacy(origin, ep, diags)
    } else {
        EpMap::new()
    }
}

/// The backends of one service port of one family (kube-proxy's `CategorizeEndpoints`).
#[allow(clippy::too_many_arguments)] // the inputs of CategorizeEndpoints, each named
pub(crate) fn port_backends(
    eps: &EpMap,
    port_name: &str,
    protocol: L4Proto,
    fam: Family,
    policy: &Policy,
    externally_accessible: bool,
    hostname: &str,
    zone: Option<&str>,
) -> Backends {
    let port_eps: Vec<Ep> = eps
        .get(&(port_name.to_string(), protocol))
        .map(|v| {
            v.iter()
                .filter(|e| Family::of(&e.addr) == fam)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    categorize(&port_eps, policy, externally_accessible, hostname, zone)
}

fn dedup_sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn validate_service<'a>(
    origin: &'a Origin,
    s: &Service,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> Option<Svc<'a>> {
    let namespace = s
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(name) = s.metadata.name.clone() else {
        diags.push(Diagnostic::at_field(
            Severity::Error,
            origin,
            Some("Service".into()),
            &[key("metadata"), key("name")],
            "missing metadata.name",
        ));
        return None;
    };
    let obj = format!("Service {namespace}/{name}");
    let mut errs = 0;
    let mut err = |diags: &mut Vec<Diagnostic>, path: &[PathSeg], msg: String| {
        errs += 1;
        diags.push(Diagnostic::at_field(
            Severity::Error,
            origin,
            Some(obj.clone()),
            path,
            msg,
        ));
    };
    let Some(spec) = s.spec.as_ref() else {
        err(diags, &[key("spec")], "missing spec".into());
        return None;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    match ty {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        "ExternalName" => {
            notes.push(format!("{obj}: type ExternalName: DNS only, no rules"));
            return None;
        }
        other => {
            err(
                diags,
                &[key("spec"), key("type")],
                format!("unknown Service type {other:?}"),
            );
            return None;
        }
    }
    // clusterIPs (clusterIP is clusterIPs[0]).
    let mut raw: Vec<(Vec<PathSeg>, String)> = Vec::new();
    match (&spec.cluster_ip, &spec.cluster_ips) {
        (_, Some(list)) if !list.is_empty() => {
            if let Some(ci) = &spec.cluster_ip {
                if !ci.is_empty() && ci != &list[0] {
                    err(
                        diags,
                        &[key("spec"), key("clusterIP")],
                        format!("clusterIP {ci:?} differs from clusterIPs[0] {:?}", list[0]),
                    );
                }
            }
            for (i, c) in list.iter().enumerate() {
                raw.push((vec![key("spec"), key("clusterIPs"), idx(i)], c.clone()));
            }
        }
        (Some(ci), _) => raw.push((vec![key("spec"), key("clusterIP")], ci.clone())),
        _ => {}
    }
    if raw.first().map(|r| r.1.as_str()) == Some("None") {
        notes.push(format!(
            "{obj}: headless (clusterIP None): DNS only, no rules"
        ));
        return None;
    }
    if raw.is_empty() || raw[0].1.is_empty() {
        notes.push(format!("{obj}: no clusterIP allocated: no rules"));
        return None;
    }
    let families = spec.ip_families.clone().unwrap_or_default();
    let mut cluster_ips = Vec::new();
    for (i, (path, c)) in raw.iter().enumerate() {
        match c.parse::<IpAddr>() {
            Ok(a) => {
                if let Some(f) = families.get(i) {
                    let want = if f == "IPv6" { Family::Ip6 } else { Family::Ip };
                    if Family::of(&a) != want {
                        err(diags, path, format!("ClusterIP {a} is not of the family {f} given in spec.ipFamilies[{i}]"));
                        continue;
                    }
                }
                if cluster_ips
                    .iter()
                    .any(|x: &IpAddr| Family::of(x) == Family::of(&a))
                {
                    err(
                        diags,
                        path,
                        format!("two ClusterIPs of the same family ({a})"),
                    );
                    continue;
                }
                cluster_ips.push(a);
            }
            Err(_) => err(diags, path, format!("invalid IP address {c:?}")),
        }
    }
    // Ports.
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let plist = spec.ports.clone().unwrap_or_default();
    if plist.is_empty() {
        notes.push(format!("{obj}: no ports: no rules"));
    }
    for (i, p) in plist.iter().enumerate() {
        let base = [key("spec"), key("ports"), idx(i)];
        let at = |f: &str| {
            let mut v = base.to_vec();
            v.push(key(f));
            v
        };
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => L4Proto::Tcp,
            "UDP" => L4Proto::Udp,
            "SCTP" => L4Proto::Sctp,
            other => {
                err(
                    diags,
                    &at("protocol"),
                    format!("unknown protocol {other:?} (TCP, UDP or SCTP)"),
                );
                continue;
            }
        };
        let port = match u16::try_from(p.port) {
            Ok(v) if v > 0 => v,
            _ => {
                err(
                    diags,
                    &at("port"),
                    format!("port {} out of range 1-65535", p.port),
                );
                continue;
            }
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => match u16::try_from(n) {
                Ok(v) if v > 0 => Some(v),
                _ => {
                    err(
                        diags,
                        &at("nodePort"),
                        format!("nodePort {n} out of range 1-65535"),
                    );
                    continue;
                }
            },
        };
        // As the API server: one port (and nodePort) per protocol (found by fuzz/: two
        // frontends with one key made the kernel refuse the ruleset).
        let mut dup = false;
        for (field, n) in [("port", Some(port)), ("nodePort", node_port)] {
            if let Some(n) = n.filter(|n| !numbers.insert((field, protocol, *n))) {
                err(
                    diags,
                    &at(field),
                    format!("duplicate {field} {n}/{}", protocol.keyword()),
                );
                dup = true;
            }
        }
        if dup {
            continue;
        }
        let pname = p.name.clone().unwrap_or_default();
        if !names.insert((pname.clone(), protocol)) {
            err(
                diags,
                &at("name"),
                format!("duplicate port name {pname:?} for {}", protocol.keyword()),
            );
            continue;
        }
        ports.push(SvcPort {
            name: pname,
            protocol,
            port,
            node_port: if ty == "ClusterIP" { None } else { node_port },
        });
    }
    let mut external_ips = Vec::new();
    for (i, e) in spec
        .external_ips
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match e.parse::<IpAddr>() {
            Ok(a) => external_ips.push(a),
            Err(_) => err(
                diags,
                &[key("spec"), key("externalIPs"), idx(i)],
                format!("invalid IP address {e:?}"),
            ),
        }
    }
    let mut lb_ips = Vec::new();
    if ty == "LoadBalancer" {
        let ingress = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone());
        for (i, ing) in ingress.unwrap_or_default().iter().enumerate() {
            let Some(ip) = ing.ip.as_deref().filter(|x| !x.is_empty()) else {
                continue;
            };
            let path = [
                key("status"),
                key("loadBalancer"),
                key("ingress"),
                idx(i),
                key("ip"),
            ];
            match ip.parse::<IpAddr>() {
                Ok(a) => {
                    if ing.ip_mode.as_deref() == Some("Proxy") {
                        notes.push(format!("{obj}: load-balancer ingress {a} has ipMode Proxy: not captured on the node"));
                    } else {
                        lb_ips.push(a);
                    }
                }
                Err(_) => err(diags, &path, format!("invalid IP address {ip:?}")),
            }
        }
    }
    let mut source_ranges = Vec::new();
    if ty == "LoadBalancer" {
        for (i, r) in spec
            .load_balancer_source_ranges
            .clone()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            // kube-proxy ignores whitespace around ranges.
            let t = r.trim();
            match t.parse::<IpNet>() {
                Ok(n) => source_ranges.push(n.trunc()),
                Err(_) => err(
                    diags,
                    &[key("spec"), key("loadBalancerSourceRanges"), idx(i)],
                    format!("invalid CIDR {r:?}"),
                ),
            }
        }
    }
    let external_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") | Some("") => false,
        Some("Local") => ty != "ClusterIP" || !external_ips.is_empty(),
        Some(o) => {
            err(
                diags,
                &[key("spec"), key("externalTrafficPolicy")],
                format!("unknown policy {o:?} (Cluster or Local)"),
            );
            false
        }
    };
    let internal_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") | Some("") => false,
        Some("Local") => true,
        Some(o) => {
            err(
                diags,
                &[key("spec"), key("internalTrafficPolicy")],
                format!("unknown policy {o:?} (Cluster or Local)"),
            );
            false
        }
    };
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") | Some("") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) if t > 0 && t as u32 <= MAX_AFFINITY_TIMEOUT => Some(t as u32),
                Some(t) => {
                    err(
                        diags,
                        &[
                            key("spec"),
                            key("sessionAffinityConfig"),
                            key("clientIP"),
                            key("timeoutSeconds"),
                        ],
                        format!("timeoutSeconds {t} out of range 1-{MAX_AFFINITY_TIMEOUT}"),
                    );
                    None
                }
            }
        }
        Some(o) => {
            err(
                diags,
                &[key("spec"), key("sessionAffinity")],
                format!("unknown sessionAffinity {o:?} (None or ClientIP)"),
            );
            None
        }
    };
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => match u16::try_from(p) {
            Ok(v) => Some(v),
            Err(_) => {
                err(
                    diags,
                    &[key("spec"), key("healthCheckNodePort")],
                    format!("healthCheckNodePort {p} out of range 1-65535"),
                );
                None
            }
        },
    };
    if errs > 0 {
        return None;
    }
    Some(Svc {
        health_check_node_port,
        origin,
        namespace,
        name,
        cluster_ips,
        ports,
        external_ips,
        lb_ips,
        source_ranges,
        external_local,
        internal_local,
        affinity_timeout,
    })
}

fn parse_proto(p: Option<&str>) -> Result<L4Proto, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(L4Proto::Tcp),
        "UDP" => Ok(L4Proto::Udp),
        "SCTP" => Ok(L4Proto::Sctp),
        o => Err(format!("unknown protocol {o:?} (TCP, UDP or SCTP)")),
    }
}

fn collect_slices(list: &[(&Origin, &EndpointSlice)], diags: &mut Vec<Diagnostic>) -> EpMap {
    let mut map = EpMap::new();
    for (origin, es) in list {
        let ns = es
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let obj = format!(
            "EndpointSlice {ns}/{}",
            es.metadata.name.clone().unwrap_or_default()
        );
        let fam = match es.address_type.as_str() {
            "IPv4" => Family::Ip,
            "IPv6" => Family::Ip6,
            "FQDN" => continue,
            o => {
                diags.push(Diagnostic::at_field(
                    Severity::Error,
                    origin,
                    Some(obj),
                    &[key("addressType")],
                    format!("unknown addressType {o:?} (IPv4, IPv6 or FQDN)"),
                ));
                continue;
            }
        };
        let mut ports = Vec::new();
        let mut bad = false;
        for (i, p) in es.ports.clone().unwrap_or_default().iter().enumerate() {
            let proto = match parse_proto(p.protocol.as_deref()) {
                Ok(x) => x,
                Err(m) => {
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        origin,
                        Some(obj.clone()),
                        &[key("ports"), idx(i), key("protocol")],
                        m,
                    ));
                    bad = true;
                    continue;
                }
            };
            match p.port.map(u16::try_from) {
                Some(Ok(n)) if n > 0 => ports.push((p.name.clone().unwrap_or_default(), proto, n)),
                None => {} // no port: the slice carries addresses only for this port name
                Some(_) => {
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        origin,
                        Some(obj.clone()),
                        &[key("ports"), idx(i), key("port")],
                        format!("port {} out of range 1-65535", p.port.unwrap_or_default()),
                    ));
                    bad = true;
                }
            }
        }
        let mut eps = Vec::new();
        for (i, e) in es.endpoints.iter().enumerate() {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let zone_hints: Vec<String> = e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default();
            let node_hints: Vec<String> = e
                .hints
                .as_ref()
                .and_then(|h| h.for_nodes.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default();
            // kube-proxy uses the first address of an endpoint.
            let Some(a) = e.addresses.first() else {
                continue;
            };
            match a.parse::<IpAddr>() {
                Ok(addr) if Family::of(&addr) == fam => eps.push(Ep {
                    addr,
                    port: 0,
                    node: e.node_name.clone(),
                    ready,
                    serving,
                    terminating,
                    zone_hints,
                    node_hints,
                }),
                Ok(addr) => {
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        origin,
                        Some(obj.clone()),
                        &[key("endpoints"), idx(i), key("addresses"), idx(0)],
                        format!(
                            "address {addr} does not match addressType {}",
                            es.address_type
                        ),
                    ));
                    bad = true;
                }
                Err(_) => {
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        origin,
                        Some(obj.clone()),
                        &[key("endpoints"), idx(i), key("addresses"), idx(0)],
                        format!("invalid IP address {a:?}"),
                    ));
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        for (pname, proto, port) in &ports {
            let v = map.entry((pname.clone(), *proto)).or_default();
            for e in &eps {
                let mut e = e.clone();
                e.port = *port;
                v.push(e);
            }
        }
    }
    for v in map.values_mut() {
        dedup_endpoints(v);
    }
    map
}

/// The same endpoint in several slices (during a slice rotation) counts once, with the
/// best conditions seen.
fn dedup_endpoints(v: &mut Vec<Ep>) {
    v.sort_by(|a, b| {
        (a.addr, a.port)
            .cmp(&(b.addr, b.port))
            .then(b.ready.cmp(&a.ready))
            .then(b.serving.cmp(&a.serving))
    });
    v.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
}

/// Legacy v1 Endpoints, converted the way the EndpointSlice mirroring controller does:
/// `addresses` are ready, `notReadyAddresses` not ready (and not serving).
fn collect_legacy(origin: &Origin, ep: &Endpoints, diags: &mut Vec<Diagnostic>) -> EpMap {
    let ns = ep
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let obj = format!(
        "Endpoints {ns}/{}",
        ep.metadata.name.clone().unwrap_or_default()
    );
    let mut map = EpMap::new();
    for (si, sub) in ep.subsets.clone().unwrap_or_default().iter().enumerate() {
        let mut eps = Vec::new();
        let mut bad = false;
        for (field, list, ready) in [
            ("addresses", &sub.addresses, true),
            ("notReadyAddresses", &sub.not_ready_addresses, false),
        ] {
            for (i, a) in list.clone().unwrap_or_default().iter().enumerate() {
                match a.ip.parse::<IpAddr>() {
                    Ok(addr) => eps.push(Ep {
                        addr,
                        port: 0,
                        node: a.node_name.clone(),
                        ready,
                        serving: ready,
                        terminating: false,
                        zone_hints: Vec::new(),
                        node_hints: Vec::new(),
                    }),
                    Err(_) => {
                        diags.push(Diagnostic::at_field(
                            Severity::Error,
                            origin,
                            Some(obj.clone()),
                            &[key("subsets"), idx(si), key(field), idx(i), key("ip")],
                            format!("invalid IP address {:?}", a.ip),
                        ));
                        bad = true;
                    }
                }
            }
        }
        for (pi, p) in sub.ports.clone().unwrap_or_default().iter().enumerate() {
            let proto = match parse_proto(p.protocol.as_deref()) {
                Ok(x) => x,
                Err(m) => {
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        origin,
                        Some(obj.clone()),
                        &[
                            key("subsets"),
                            idx(si),
                            key("ports"),
                            idx(pi),
                            key("protocol"),
                        ],
                        m,
                    ));
                    continue;
                }
            };
            let Ok(port) =
                u16::try_from(p.port)
                    .map_err(|_| ())
                    .and_then(|n| if n > 0 { Ok(n) } else { Err(()) })
            else {
                diags.push(Diagnostic::at_field(
                    Severity::Error,
                    origin,
                    Some(obj.clone()),
                    &[key("subsets"), idx(si), key("ports"), idx(pi), key("port")],
                    format!("port {} out of range 1-65535", p.port),
                ));
                continue;
            };
            if bad {
                continue;
            }
            let v = map
                .entry((p.name.clone().unwrap_or_default(), proto))
                .or_default();
            for e in &eps {
                let mut e = e.clone();
                e.port = port;
                v.push(e);
            }
        }
    }
    for v in map.values_mut() {
        dedup_endpoints(v);
    }
    map
}

#[derive(Clone, Copy, PartialEq)]
enum Topology {
    Any,
    SameZone,
    SameNode,
}

/// kube-proxy's `topologyModeFromHints`: hints are used only when every ready endpoint has
/// them and at least one is for this node (zone).
fn topology_mode(eps: &[Ep], node: &str, zone: Option<&str>) -> Topology {
    let ready: Vec<&Ep> = eps.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    if ready.iter().all(|e| !e.node_hints.is_empty())
        && ready.iter().any(|e| e.node_hints.iter().any(|n| n == node))
    {
        return Topology::SameNode;
    }
    if let Some(z) = zone {
        if ready.iter().all(|e| !e.zone_hints.is_empty())
            && ready.iter().any(|e| e.zone_hints.iter().any(|h| h == z))
        {
            return Topology::SameZone;
        }
    }
    Topology::Any
}

fn available(e: &Ep, mode: Topology, node: &str, zone: Option<&str>) -> bool {
    match mode {
        Topology::Any => true,
        Topology::SameNode => e.node_hints.iter().any(|n| n == node),
        Topology::SameZone => zone.is_some_and(|z| e.zone_hints.iter().any(|h| h == z)),
    }
}

/// kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go).
fn categorize(
    eps: &[Ep],
    policy: &Policy,
    externally_accessible: bool,
    node: &str,
    zone: Option<&str>,
) -> Backends {
    let is_local = |e: &Ep| e.node.as_deref() == Some(node);
    let backend = |e: &Ep| Backend {
        addr: e.addr,
        port: e.port,
        local: is_local(e),
    };
    let uses_cluster = !policy.internal_local || (externally_accessible && !policy.external_local);
    let uses_local = policy.internal_local || (externally_accessible && policy.external_local);
    let mut out = Backends {
        serving: eps.iter().filter(|e| e.serving).map(backend).collect(),
        ..Default::default()
    };
    if uses_cluster {
        let mode = topology_mode(eps, node, zone);
        let mut c: Vec<&Ep> = eps
            .iter()
            .filter(|e| e.ready && available(e, mode, node, zone))
            .collect();
        if c.is_empty() {
            c = eps
                .iter()
                .filter(|e| e.serving && e.terminating && available(e, mode, node, zone))
                .collect();
        }
        out.has_any = !c.is_empty();
        out.cluster = c.into_iter().map(backend).collect();
    }
    if !uses_local {
        return out;
    }
    let mut local_ready = false;
    let mut local_term = false;
    for e in eps {
        if e.ready {
            out.has_any = true;
            local_ready |= is_local(e);
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_term |= is_local(e);
        }
    }
    if local_ready {
        out.local = eps
            .iter()
            .filter(|e| is_local(e) && e.ready)
            .map(backend)
            .collect();
    } else if local_term {
        out.local_fallback = true;
        out.local = eps
            .iter()
            .filter(|e| is_local(e) && e.serving && e.terminating)
            .map(backend)
            .collect();
    }
    out
}

/// The Service an EndpointSlice (by its service-name label) or legacy Endpoints (by its name)
/// belongs to; None for other objects and for unlabelled slices.
pub(crate) fn endpoint_owner(obj: &Object) -> Option<SvcKey> {
    let (meta, label) = match obj {
        Object::EndpointSlice(es) => (&es.metadata, true),
        Object::Endpoints(ep) => (&ep.metadata, false),
        _ => return None,
    };
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = if label {
        meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone()
    } else {
        meta.name.clone().unwrap_or_default()
    };
    Some((ns, name))
}

/// (address — None for a NodePort —, protocol, port) -> the Service (`ns/name`) serving it.
type Taken = HashMap<(Option<IpAddr>, L4Proto, u16), String>;

/// The service ports of one valid Service in one family, after the frontends other Services
/// already serve (`taken`, which this extends) are reported and left out.
#[allow(clippy::too_many_arguments)] // one Service's lowering context, each named
fn family_ports(
    s: &Svc,
    eps: &EpMap,
    fam: Family,
    node_ips: &[IpAddr],
    settings: &NodeSettings,
    zone: Option<&str>,
    taken: &mut Taken,
    diags: &mut Vec<Diagnostic>,
    conflicted: &mut HashSet<SvcKey>,
    out: &mut Vec<Arc<ServicePort>>,
) {
    let is_fam = |a: &IpAddr| Family::of(a) == fam;
    let Some(cip) = s.cluster_ips.iter().copied().find(is_fam) else {
        return;
    };
    for p in &s.ports {
        let name = ServicePortName {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            port: p.name.clone(),
            protocol: p.protocol,
        };
        let mut frontends = vec![Frontend {
            kind: FrontendKind::ClusterIp,
            addr: Some(cip),
            port: p.port,
        }];
        if let Some(np) = p.node_port {
            frontends.push(Frontend {
                kind: FrontendKind::NodePort,
                addr: None,
                port: np,
            });
        }
        for a in s.external_ips.iter().filter(|a| is_fam(a)) {
            frontends.push(Frontend {
                kind: FrontendKind::ExternalIp,
                addr: Some(*a),
                port: p.port,
            });
        }
        for a in s.lb_ips.iter().filter(|a| is_fam(a)) {
            frontends.push(Frontend {
                kind: FrontendKind::LoadBalancer,
                addr: Some(*a),
                port: p.port,
            });
        }
        frontends.retain(|fe| {
            let k = (fe.addr, p.protocol, fe.port);
            if let Some(other) = taken.get(&k) {
                if *other != format!("{}/{}", s.namespace, s.name) {
                    conflicted.insert((s.namespace.clone(), s.name.clone()));
                    conflicted.insert(key_of(other));
                    let what = match fe.addr {
                        Some(a) => format!("{a} port {}", fe.port),
                        None => format!("nodePort {}", fe.port),
                    };
                    let field: &[PathSeg] = match fe.kind {
                        FrontendKind::ClusterIp => &[key("spec"), key("clusterIP")],
                        FrontendKind::ExternalIp => &[key("spec"), key("externalIPs")],
                        FrontendKind::LoadBalancer => {
                            &[key("status"), key("loadBalancer"), key("ingress")]
                        }
                        FrontendKind::NodePort => &[key("spec"), key("ports")],
                    };
                    diags.push(Diagnostic::at_field(
                        Severity::Error,
                        s.origin,
                        Some(format!("Service {}/{}", s.namespace, s.name)),
                        field,
                        format!(
                            "{what}/{} is already served by Service {other}; ignored here",
                            p.protocol.keyword()
                        ),
                    ));
                    return false;
                }
            }
            taken.insert(k, format!("{}/{}", s.namespace, s.name));
            true
        });
        if frontends.first().map(|f| f.kind) != Some(FrontendKind::ClusterIp) {
            continue;
        }
        let externally_accessible = frontends.len() > 1;
        let policy = Policy {
            external_local: s.external_local && externally_accessible,
            internal_local: s.internal_local,
            affinity_timeout: s.affinity_timeout,
            source_ranges: s
                .source_ranges
                .iter()
                .copied()
                .filter(|n| is_fam(&n.addr()))
                .collect(),
            allow_lb_ips_as_source: false,
            health_check_node_port: s.health_check_node_port.filter(|_| s.external_local),
        };
        let mut policy = policy;
        policy.allow_lb_ips_as_source = policy
            .source_ranges
            .iter()
            .any(|r| node_ips.iter().any(|ip| r.contains(ip)));
        let backends = port_backends(
            eps,
            &p.name,
            p.protocol,
            fam,
            &policy,
            externally_accessible,
            &settings.hostname,
            zone,
        );
        out.push(Arc::new(ServicePort {
            name,
            provenance: Provenance {
                file: s.origin.file.to_string(),
                object_path: s.origin.object_path(),
            },
            protocol: p.protocol,
            frontends,
            backends,
            policy,
        }));
    }
}

/// Slices of a Service that is not lowered: a warning each (kube-proxy ignores them too).
pub(crate) fn orphan_slices(
    k: &SvcKey,
    list: &[(&Origin, &EndpointSlice)],
    diags: &mut Vec<Diagnostic>,
) {
    let (ns, svc) = k;
    for (origin, es) in list {
        diags.push(Diagnostic::at_field(
            Severity::Warning,
            origin,
            Some(format!(
                "EndpointSlice {ns}/{}",
                es.metadata.name.clone().unwrap_or_default()
            )),
            &[key("metadata"), key("labels"), key(SERVICE_NAME_LABEL)],
            format!("Service {ns}/{svc} is not in the input; the slice is ignored"),
        ));
    }
}

/// One Service lowered alone, for the compile session's deltas: the caller has made sure no
/// other Service claims its nodePorts or frontends (see [`Tracking::conflicted`]).
pub(crate) struct LoweredService {
    /// Per family of `families`, its service ports (sorted).
    pub ports: Vec<Vec<Arc<ServicePort>>>,
    pub node_ports: Vec<(L4Proto, u16)>,
}

/// Lowers one Service (None: absent or invalid) with its endpoint objects, into the families
/// of a previous full lowering. Diagnostics and notes are those a full lowering gives about it.
#[allow(clippy::too_many_arguments)] // one Service's lowering context, each named
pub(crate) fn lower_service(
    service: Option<(&Origin, &Service)>,
    k: &SvcKey,
    slices: &[(&Origin, &EndpointSlice)],
    legacy: Option<(&Origin, &Endpoints)>,
    families: &[&FamilyIr],
    settings: &NodeSettings,
    zone: Option<&str>,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> LoweredService {
    let v = service.and_then(|(o, s)| validate_service(o, s, diags, notes));
    let Some(v) = v else {
        if !slices.is_empty() {
            orphan_slices(k, slices, diags);
        }
        return LoweredService {
            ports: families.iter().map(|_| Vec::new()).collect(),
            node_ports: Vec::new(),
        };
    };
    let eps = service_endpoints(slices, legacy, diags);
    let mut conflicted = HashSet::new();
    let ports = families
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            family_ports(
                &v,
                &eps,
                f.family,
                &f.node_ips,
                settings,
                zone,
                &mut Taken::new(),
                diags,
                &mut conflicted,
                &mut out,
            );
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out
        })
        .collect();
    LoweredService {
        ports,
        node_ports: v
            .ports
            .iter()
            .filter_map(|p| p.node_port.map(|np| (p.protocol, np)))
            .collect(),
    }
}
