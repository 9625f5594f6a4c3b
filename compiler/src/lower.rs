//! Typed objects → IR: validation, joining Services with their endpoints, and every per-node
//! decision kube-proxy makes (`CategorizeEndpoints`, topology, traffic policies).
//!
//! One invalid object never blocks the rest: it gets a diagnostic and is left out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Endpoints, Service};

use crate::config::{NodePortAddresses, NodeSettings};
use crate::diag::{Diagnostic, Origin, PathSeg, Severity};
use crate::family::{Family, L4Proto};
use crate::ir::*;
use crate::manifest::{Object, Parsed, Slice};
use crate::validate;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
const MAX_AFFINITY_TIMEOUT: u32 = 86400;
/// kube-proxy lists Services and EndpointSlices with the selector
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`
/// (cmd/kube-proxy/app/server.go): objects carrying either label are for another proxy, or
/// headless, and never reach its proxier.
const IGNORED_LABELS: [&str; 2] = [
    "service.kubernetes.io/service-proxy-name",
    "service.kubernetes.io/headless",
];

/// The label for which kube-proxy's informers never list this object, if any.
fn ignored_by_label(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&'static str> {
    let labels = m.labels.as_ref()?;
    IGNORED_LABELS.into_iter().find(|l| labels.contains_key(*l))
}

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
    pub(crate) addr: IpAddr,
    pub(crate) port: u16,
    pub(crate) node: Option<String>,
    pub(crate) ready: bool,
    pub(crate) serving: bool,
    pub(crate) terminating: bool,
    pub(crate) zone_hints: Vec<String>,
    pub(crate) node_hints: Vec<String>,
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
    let mut slices: BTreeMap<(String, String), Vec<(&Origin, &Slice)>> = BTreeMap::new();
    let mut legacy: BTreeMap<(String, String), (&Origin, &Endpoints)> = BTreeMap::new();
    // Every Service in the input, lowered or not (headless, ExternalName, invalid …).
    let mut present: HashSet<SvcKey> = HashSet::new();

    for (origin, obj) in objects {
        match obj {
            Object::Node(n) => {
                let obj = format!("Node {}", n.metadata.name.as_deref().unwrap_or_default());
                if report(diags, origin, &obj, node_problems(n)) {
                    continue;
                }
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
                match service_cidr_nets(sc) {
                    Ok(nets) => service_cidrs.extend(nets),
                    Err(problems) => {
                        report(diags, origin, &format!("ServiceCIDR {name}"), problems);
                    }
                }
            }
            Object::Service(s) => {
                present.insert(service_key(s));
                let (d0, n0) = (diags.len(), notes.len());
                let v = validate_service(origin, s, settings, diags, notes);
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
            let k = (ns.clone(), svc.clone());
            orphan_slices(&k, list, present.contains(&k), diags);
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
        // Where NodePorts are accepted (kube-proxy: `NewNodePortAddresses` per family, after
        // cmd/kube-proxy's per-mode default). Loopback never: svcc has no localhost NodePorts.
        let primary_or_all = |notes: &mut Vec<String>| {
            if usable_node_ips.is_empty() {
                if !services.is_empty() {
                    notes.push(format!(
                        "{}: no node IP of this family given (--node-ip): NodePorts are accepted on every local non-loopback address",
                        fam.keyword()
                    ));
                }
                NodePortAddrs::AllLocal
            } else {
                // The node's primary IP of the family: the first --node-ip of that family, as
                // cmd/kube-proxy turns `primary` into NodeIPs[family]/32 (or /128).
                NodePortAddrs::Addrs(usable_node_ips[..1].to_vec())
            }
        };
        let node_ports_on = match &settings.nodeport_addresses {
            NodePortAddresses::Cidrs(c) => {
                let c: Vec<&IpNet> = c.iter().filter(|n| is_fam(&n.addr())).collect();
                // No CIDR of this family: kube-proxy adds 0.0.0.0/0 or ::/0 (match all).
                if c.is_empty() || c.iter().any(|n| n.prefix_len() == 0) {
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
            NodePortAddresses::Primary => primary_or_all(notes),
            // Unset: each mode's default. nftables: `primary` (platformApplyDefaults);
            // iptables: every local address (`--dst-type LOCAL`, loopback excluded here).
            // userspace: svcc's userspace mode is built on its nftables layout, so nftables'.
            NodePortAddresses::Unset => match settings.backend {
                crate::config::Backend::Nftables | crate::config::Backend::Userspace => {
                    primary_or_all(notes)
                }
                crate::config::Backend::Iptables | crate::config::Backend::Ipvs => {
                    if !services.is_empty() {
                        notes.push(format!(
                            "{}: {} mode without nodePortAddresses: NodePorts are accepted on every local address but loopback (kube-proxy's {} default, without its localhost NodePorts); `--nodeport-addresses primary` limits them to the primary node IP",
                            fam.keyword(),
                            settings.backend.name(),
                            settings.backend.name()
                        ));
                    }
                    NodePortAddrs::AllLocal
                }
            },
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
            drop_ct_invalid: !settings.conntrack_tcp_be_liberal,
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
    slices: &[(&Origin, &Slice)],
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
    let port_eps = port_endpoints(eps, port_name, protocol, fam);
    categorize(&port_eps, policy, externally_accessible, hostname, zone)
}

/// The endpoints of one service port of one family, before categorisation.
pub(crate) fn port_endpoints(
    eps: &EpMap,
    port_name: &str,
    protocol: L4Proto,
    fam: Family,
) -> Vec<Ep> {
    eps.get(&(port_name.to_string(), protocol))
        .map(|v| {
            v.iter()
                .filter(|e| Family::of(&e.addr) == fam)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn dedup_sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn validate_service<'a>(
    origin: &'a Origin,
    s: &Service,
    settings: &NodeSettings,
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
    if let Some(l) = ignored_by_label(&s.metadata) {
        notes.push(format!(
            "{obj}: label {l}: not for kube-proxy (its informers skip it), no rules"
        ));
        return None;
    }
    // A Cell: the count is read between reports.
    let errs = std::cell::Cell::new(0);
    let err = |diags: &mut Vec<Diagnostic>, path: &[PathSeg], msg: String| {
        errs.set(errs.get() + 1);
        diags.push(Diagnostic::at_field(
            Severity::Error,
            origin,
            Some(obj.clone()),
            path,
            msg,
        ));
    };
    // ValidateObjectMeta with ValidateServiceName (core/validation: ValidateService).
    if let Err(m) = validate::service_name(&name) {
        err(diags, &[key("metadata"), key("name")], m);
    }
    if let Some(ns) = &s.metadata.namespace {
        if let Err(m) = validate::namespace(ns) {
            err(diags, &[key("metadata"), key("namespace")], m);
        }
    }
    let Some(spec) = s.spec.as_ref() else {
        err(diags, &[key("spec")], "missing spec".into());
        return None;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if errs.get() > 0 {
        return None;
    }
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
    // ipFamilies and ipFamilyPolicy (core/validation: validateServiceClusterIPsRelatedFields;
    // a single-stack policy with two families is refused in registry/core/service/storage/
    // alloc.go: initIPFamilyFields).
    let families = spec.ip_families.clone().unwrap_or_default();
    for (i, f) in families.iter().enumerate() {
        let at = [key("spec"), key("ipFamilies"), idx(i)];
        if f != "IPv4" && f != "IPv6" {
            err(
                diags,
                &at,
                format!("unsupported value {f:?} (IPv4 or IPv6)"),
            );
        } else if families[..i].contains(f) {
            err(diags, &at, format!("duplicate value {f:?}"));
        }
    }
    match spec.ip_family_policy.as_deref() {
        None | Some("PreferDualStack") | Some("RequireDualStack") => {}
        Some("SingleStack") => {
            let n = spec
                .cluster_ips
                .as_ref()
                .map_or(0, Vec::len)
                .max(families.len());
            if n > 1 {
                err(
                    diags,
                    &[key("spec"), key("ipFamilyPolicy")],
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified".into(),
                );
            }
        }
        Some(o) => err(
            diags,
            &[key("spec"), key("ipFamilyPolicy")],
            format!("unsupported value {o:?} (SingleStack, PreferDualStack or RequireDualStack)"),
        ),
    }
    // clusterIPs (clusterIP is clusterIPs[0]; the API server fills clusterIPs from clusterIP).
    let mut raw: Vec<(Vec<PathSeg>, String)> = Vec::new();
    match (&spec.cluster_ip, &spec.cluster_ips) {
        (_, Some(list)) if !list.is_empty() => {
            match &spec.cluster_ip {
                Some(ci) if !ci.is_empty() => {
                    if ci != &list[0] {
                        err(
                            diags,
                            &[key("spec"), key("clusterIPs")],
                            format!("first value {:?} must match `clusterIP` {ci:?}", list[0]),
                        );
                    }
                }
                _ => err(
                    diags,
                    &[key("spec"), key("clusterIPs")],
                    "must be empty when `clusterIP` is not specified".into(),
                ),
            }
            if list.len() > 2 {
                err(
                    diags,
                    &[key("spec"), key("clusterIPs")],
                    format!("may only hold up to 2 values, not {}", list.len()),
                );
            }
            if list[0] == "None" && list.len() > 1 {
                err(
                    diags,
                    &[key("spec"), key("clusterIPs")],
                    "'None' must be the first and only value".into(),
                );
            }
            for (i, c) in list.iter().enumerate() {
                raw.push((vec![key("spec"), key("clusterIPs"), idx(i)], c.clone()));
            }
        }
        (Some(ci), _) => raw.push((vec![key("spec"), key("clusterIP")], ci.clone())),
        _ => {}
    }
    if raw.first().map(|r| r.1.as_str()) == Some("None") {
        // core/validation: ValidateService ("may not be set to 'None' for … services").
        if ty != "ClusterIP" {
            err(
                diags,
                &raw[0].0,
                format!("may not be set to 'None' for {ty} services"),
            );
        }
        if errs.get() > 0 {
            return None;
        }
        notes.push(format!(
            "{obj}: headless (clusterIP None): DNS only, no rules"
        ));
        return None;
    }
    if raw.is_empty() || raw[0].1.is_empty() {
        if errs.get() > 0 {
            return None;
        }
        notes.push(format!("{obj}: no clusterIP allocated: no rules"));
        return None;
    }
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
                        format!("two ClusterIPs of the same family ({a}): may specify no more than one IP for each IP family"),
                    );
                    continue;
                }
                cluster_ips.push(a);
            }
            Err(_) => err(diags, path, format!("invalid IP address {c:?}")),
        }
    }
    // Ports (core/validation: ValidateService, validateServicePort).
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    let mut port_keys = BTreeSet::new();
    let mut node_port_keys = BTreeSet::new();
    let plist = spec.ports.clone().unwrap_or_default();
    if plist.is_empty() {
        err(
            diags,
            &[key("spec"), key("ports")],
            "required: a Service that is not headless needs at least one port".into(),
        );
    }
    let (np_lo, np_hi) = settings.service_node_port_range;
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
        let port = match validate::port_num(p.port) {
            Ok(v) => v,
            Err(m) => {
                err(diags, &at("port"), m);
                continue;
            }
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(_) if ty == "ClusterIP" => {
                err(
                    diags,
                    &at("nodePort"),
                    "may not be used when `type` is 'ClusterIP'".into(),
                );
                continue;
            }
            Some(n) => match validate::port_num(n) {
                Ok(v) => Some(v),
                Err(_) => {
                    err(
                        diags,
                        &at("nodePort"),
                        format!("nodePort {n} out of range 1-65535"),
                    );
                    continue;
                }
            },
        };
        let pname = p.name.clone().unwrap_or_default();
        if pname.is_empty() && plist.len() > 1 {
            err(
                diags,
                &at("name"),
                "required: every port of a Service with several ports needs a name".into(),
            );
            continue;
        }
        if !pname.is_empty() {
            if let Err(m) = validate::port_name(&pname) {
                err(diags, &at("name"), m);
                continue;
            }
        }
        if !names.insert(pname.clone()) {
            err(diags, &at("name"), format!("duplicate port name {pname:?}"));
            continue;
        }
        // Also what the kernel needs: two frontends with one key make it refuse the whole
        // ruleset ("File exists"; found by tests/property.rs).
        if !port_keys.insert((port, protocol)) {
            err(
                diags,
                &at("port"),
                format!("duplicate port {port}/{}", protocol.keyword()),
            );
            continue;
        }
        if let Some(np) = node_port {
            if !node_port_keys.insert((np, protocol)) {
                err(
                    diags,
                    &at("nodePort"),
                    format!("duplicate nodePort {np}/{}", protocol.keyword()),
                );
                continue;
            }
            // The API server allocates nodePorts only inside its --service-node-port-range
            // (registry/core/service/portallocator); kube-proxy never checks and serves any
            // nodePort it is given (a range narrowed later leaves such Services in place),
            // so svcc serves it too and says so.
            if !(np_lo..=np_hi).contains(&np) {
                diags.push(Diagnostic::at_field(
                    Severity::Warning,
                    origin,
                    Some(obj.clone()),
                    &at("nodePort"),
                    format!("nodePort {np} is outside the service-node-port-range {np_lo}-{np_hi}: the API server would not allocate it; served anyway, as kube-proxy does"),
                ));
            }
        }
        ports.push(SvcPort {
            name: pname,
            protocol,
            port,
            node_port,
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
        let at = [key("spec"), key("externalIPs"), idx(i)];
        match e.parse::<IpAddr>() {
            // core/validation: ValidateService → ValidateNonSpecialIP.
            Ok(a) => match validate::non_special_ip(&a) {
                Ok(()) => external_ips.push(a),
                Err(m) => err(diags, &at, format!("{a}: {m}")),
            },
            Err(_) => err(diags, &at, format!("invalid IP address {e:?}")),
        }
    }
    let mut lb_ips = Vec::new();
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    // core/validation: ValidateLoadBalancerStatus.
    if ty != "LoadBalancer" && !ingress.is_empty() {
        err(
            diags,
            &[key("status"), key("loadBalancer"), key("ingress")],
            "may only be used when `spec.type` is 'LoadBalancer'".into(),
        );
    }
    if ty == "LoadBalancer" {
        for (i, ing) in ingress.iter().enumerate() {
            let at_mode = [
                key("status"),
                key("loadBalancer"),
                key("ingress"),
                idx(i),
                key("ipMode"),
            ];
            let has_ip = ing.ip.as_deref().is_some_and(|x| !x.is_empty());
            match ing.ip_mode.as_deref() {
                None | Some("VIP") | Some("Proxy") => {}
                Some(o) => err(
                    diags,
                    &at_mode,
                    format!("unsupported value {o:?} (VIP or Proxy)"),
                ),
            }
            if ing.ip_mode.is_some() && !has_ip {
                err(
                    diags,
                    &at_mode,
                    "may not be specified when `ip` is not".into(),
                );
            }
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
    let ranges = spec.load_balancer_source_ranges.clone().unwrap_or_default();
    // core/validation: ValidateService ("may only be used when `type` is 'LoadBalancer'").
    if ty != "LoadBalancer" && !ranges.is_empty() {
        err(
            diags,
            &[key("spec"), key("loadBalancerSourceRanges")],
            "may only be used when `type` is 'LoadBalancer'".into(),
        );
    }
    if ty == "LoadBalancer" {
        for (i, r) in ranges.iter().enumerate() {
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
    // core/validation: validateServiceExternalTrafficPolicy (apiservice.ExternallyAccessible).
    let externally_accessible = ty != "ClusterIP" || !external_ips.is_empty();
    if !externally_accessible
        && spec
            .external_traffic_policy
            .as_deref()
            .is_some_and(|p| !p.is_empty())
    {
        err(
            diags,
            &[key("spec"), key("externalTrafficPolicy")],
            "may only be set for externally-accessible services (type NodePort or LoadBalancer, or with externalIPs)".into(),
        );
    }
    let external_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") | Some("") => false,
        Some("Local") => externally_accessible,
        Some(_) if !externally_accessible => false, // reported above, as upstream does
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
        None | Some("None") | Some("") => {
            // core/validation: ValidateService.
            if spec.session_affinity_config.is_some() && spec.session_affinity.is_some() {
                err(
                    diags,
                    &[key("spec"), key("sessionAffinityConfig")],
                    "must not be set when session affinity is None".into(),
                );
            }
            None
        }
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
        // core/validation: ValidateService (apiservice.NeedsHealthCheck).
        Some(_) if !(ty == "LoadBalancer" && external_local) => {
            err(
                diags,
                &[key("spec"), key("healthCheckNodePort")],
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'".into(),
            );
            None
        }
        Some(p) => match validate::port_num(p) {
            Ok(v) => {
                if !(np_lo..=np_hi).contains(&v) {
                    diags.push(Diagnostic::at_field(
                        Severity::Warning,
                        origin,
                        Some(obj.clone()),
                        &[key("spec"), key("healthCheckNodePort")],
                        format!("healthCheckNodePort {v} is outside the service-node-port-range {np_lo}-{np_hi}: the API server would not allocate it"),
                    ));
                }
                Some(v)
            }
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
    if errs.get() > 0 {
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

/// Reports each (field, message) problem of one object as an error; true if there was any
/// (the object is then left out).
fn report(
    diags: &mut Vec<Diagnostic>,
    origin: &Origin,
    obj: &str,
    problems: Vec<(Vec<PathSeg>, String)>,
) -> bool {
    let any = !problems.is_empty();
    for (path, m) in problems {
        diags.push(Diagnostic::at_field(
            Severity::Error,
            origin,
            Some(obj.to_string()),
            &path,
            m,
        ));
    }
    any
}

/// Problems of an EndpointSlice the API server would refuse, as (field, message):
/// discovery/validation's `ValidateEndpointSlice` for the fields svcc reads, plus the
/// `kubernetes.io/service-name` label value (`metav1validation.ValidateLabels`). Protocols
/// and the first address of each endpoint are checked where they are read.
fn slice_problems(es: &Slice) -> Vec<(Vec<PathSeg>, String)> {
    let mut out = Vec::new();
    meta_problems(&es.metadata, validate::object_name, &mut out);
    if let Some(v) = es
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    {
        if let Err(m) = validate::label_value(v) {
            out.push((
                vec![key("metadata"), key("labels"), key(SERVICE_NAME_LABEL)],
                m,
            ));
        }
    }
    let fam = match es.address_type.as_str() {
        "IPv4" => Some(Family::Ip),
        "IPv6" => Some(Family::Ip6),
        "" => {
            out.push((
                vec![key("addressType")],
                "required (IPv4, IPv6 or FQDN)".into(),
            ));
            None
        }
        _ => None, // reported where it is read
    };
    if es.endpoints.len() > validate::SLICE_MAX_ENDPOINTS {
        out.push((
            vec![key("endpoints")],
            format!(
                "too many: {} endpoints, at most {} per slice",
                es.endpoints.len(),
                validate::SLICE_MAX_ENDPOINTS
            ),
        ));
        return out;
    }
    for (i, e) in es.endpoints.iter().enumerate() {
        let at = |f: &str| vec![key("endpoints"), idx(i), key(f)];
        if e.addresses.is_empty() {
            out.push((at("addresses"), "must contain at least 1 address".into()));
        } else if e.addresses.len() > validate::SLICE_MAX_ADDRESSES {
            out.push((
                at("addresses"),
                format!(
                    "too many: {} addresses, at most {}",
                    e.addresses.len(),
                    validate::SLICE_MAX_ADDRESSES
                ),
            ));
        }
        if let Some(fam) = fam {
            for (j, a) in e.addresses.iter().enumerate() {
                let mut path = at("addresses");
                path.push(idx(j));
                match a.parse::<IpAddr>() {
                    Ok(ip) if Family::of(&ip) != fam => out.push((
                        path,
                        format!(
                            "address {ip} does not match addressType {}",
                            es.address_type
                        ),
                    )),
                    Ok(ip) => {
                        if let Err(m) = validate::non_special_ip(&ip) {
                            out.push((path, format!("{ip}: {m}")));
                        }
                    }
                    Err(_) => out.push((path, format!("invalid IP address {a:?}"))),
                }
            }
        }
        if let Some(n) = &e.node_name {
            if let Err(m) = validate::object_name(n) {
                out.push((at("nodeName"), m));
            }
        }
        if let Some(h) = &e.hints {
            for (field, names, check) in [
                (
                    "forZones",
                    h.for_zones
                        .as_ref()
                        .map(|z| z.iter().map(|z| z.name.as_str()).collect::<Vec<_>>()),
                    validate::label_value as fn(&str) -> Result<(), String>,
                ),
                (
                    "forNodes",
                    h.for_nodes
                        .as_ref()
                        .map(|z| z.iter().map(|z| z.name.as_str()).collect()),
                    validate::object_name,
                ),
            ] {
                let names = names.unwrap_or_default();
                let base = vec![key("endpoints"), idx(i), key("hints"), key(field)];
                if names.len() > validate::SLICE_MAX_HINTS {
                    out.push((
                        base,
                        format!(
                            "too many: {} hints, at most {}",
                            names.len(),
                            validate::SLICE_MAX_HINTS
                        ),
                    ));
                    continue;
                }
                for (j, n) in names.iter().enumerate() {
                    let mut path = base.clone();
                    path.extend([idx(j), key("name")]);
                    if names[..j].contains(n) {
                        out.push((path, format!("duplicate value {n:?}")));
                    } else if let Err(m) = check(n) {
                        out.push((path, m));
                    }
                }
            }
        }
    }
    let ports = es.ports.as_deref().unwrap_or_default();
    if ports.len() > validate::SLICE_MAX_PORTS {
        out.push((
            vec![key("ports")],
            format!(
                "too many: {} ports, at most {}",
                ports.len(),
                validate::SLICE_MAX_PORTS
            ),
        ));
        return out;
    }
    for (i, p) in ports.iter().enumerate() {
        let name = p.name.as_deref().unwrap_or_default();
        let path = vec![key("ports"), idx(i), key("name")];
        if !name.is_empty() {
            if let Err(m) = validate::port_name(name) {
                out.push((path.clone(), m));
            }
        }
        if ports[..i]
            .iter()
            .any(|q| q.name.as_deref().unwrap_or_default() == name)
        {
            out.push((path, format!("duplicate port name {name:?}")));
        }
    }
    out
}

/// Problems of a Node the API server would refuse (core/validation: `ValidateNode` → name by
/// `ValidateNodeName`; the zone label's value by `ValidateLabels`).
fn node_problems(n: &k8s_openapi::api::core::v1::Node) -> Vec<(Vec<PathSeg>, String)> {
    let mut out = Vec::new();
    match n.metadata.name.as_deref() {
        None | Some("") => out.push((vec![key("metadata"), key("name")], "required".into())),
        Some(name) => {
            if let Err(e) = validate::object_name(name) {
                out.push((vec![key("metadata"), key("name")], e));
            }
        }
    }
    if let Some(z) = n.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)) {
        if let Err(e) = validate::label_value(z) {
            out.push((vec![key("metadata"), key("labels"), key(ZONE_LABEL)], e));
        }
    }
    out
}

/// The CIDRs of a ServiceCIDR, or why the API server would refuse it
/// (networking/validation: `ValidateServiceCIDR`, `validateCIDR`).
fn service_cidr_nets(
    sc: &k8s_openapi::api::networking::v1::ServiceCIDR,
) -> Result<Vec<IpNet>, Vec<(Vec<PathSeg>, String)>> {
    let mut out = Vec::new();
    match sc.metadata.name.as_deref() {
        None | Some("") => out.push((vec![key("metadata"), key("name")], "required".into())),
        Some(name) => {
            if let Err(e) = validate::object_name(name) {
                out.push((vec![key("metadata"), key("name")], e));
            }
        }
    }
    let cidrs = sc
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_deref())
        .unwrap_or_default();
    let at = vec![key("spec"), key("cidrs")];
    if cidrs.is_empty() {
        out.push((at.clone(), "at least one CIDR required".into()));
    } else if cidrs.len() > 2 {
        out.push((at.clone(), "may only hold up to 2 values".into()));
    }
    let mut nets = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        let mut path = at.clone();
        path.push(idx(i));
        match c.parse::<IpNet>() {
            Ok(n) if n.trunc() != n => out.push((
                path,
                format!("{c:?}: wrong CIDR format, IP doesn't match network IP address"),
            )),
            Ok(n) if n.to_string() != *c => out.push((
                path,
                format!("{c:?}: CIDR not in RFC 5952 canonical format ({n})"),
            )),
            Ok(n) => nets.push(n),
            Err(_) => out.push((path, format!("invalid CIDR {c:?}"))),
        }
    }
    if nets.len() == 2 && Family::of(&nets[0].addr()) == Family::of(&nets[1].addr()) {
        out.push((at, "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64".into()));
    }
    if out.is_empty() {
        Ok(nets)
    } else {
        Err(out)
    }
}

/// `ValidateObjectMeta` for the name (by `name_rule`) and namespace of a namespaced object.
fn meta_problems(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    name_rule: fn(&str) -> Result<(), String>,
    out: &mut Vec<(Vec<PathSeg>, String)>,
) {
    match m.name.as_deref() {
        None | Some("") => out.push((vec![key("metadata"), key("name")], "required".into())),
        Some(n) => {
            if let Err(e) = name_rule(n) {
                out.push((vec![key("metadata"), key("name")], e));
            }
        }
    }
    if let Some(ns) = &m.namespace {
        if let Err(e) = validate::namespace(ns) {
            out.push((vec![key("metadata"), key("namespace")], e));
        }
    }
}

/// A slice's label (`EndpointSlice ns/name`) if lowering uses it: not labelled for another
/// proxy (kube-proxy never sees it), and nothing the API server would refuse (reported).
fn usable_slice(diags: &mut Vec<Diagnostic>, origin: &Origin, es: &Slice) -> Option<String> {
    if ignored_by_label(&es.metadata).is_some() {
        return None;
    }
    let obj = format!(
        "EndpointSlice {}/{}",
        es.metadata.namespace.as_deref().unwrap_or("default"),
        es.metadata.name.as_deref().unwrap_or_default()
    );
    (!report(diags, origin, &obj, slice_problems(es))).then_some(obj)
}

fn collect_slices(list: &[(&Origin, &Slice)], diags: &mut Vec<Diagnostic>) -> EpMap {
    let mut map = EpMap::new();
    for (origin, es) in list {
        let Some(obj) = usable_slice(diags, origin, es) else {
            continue;
        };
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

/// Problems of a legacy Endpoints object the API server would refuse, as (field, message)
/// (core/validation: `ValidateEndpoints`, `validateEndpointSubsets`, `validateEndpointAddress`,
/// `validateEndpointPort`), for the fields svcc reads. Addresses that do not parse and
/// protocols are checked where they are read.
fn legacy_problems(ep: &Endpoints) -> Vec<(Vec<PathSeg>, String)> {
    let mut out = Vec::new();
    meta_problems(&ep.metadata, validate::object_name, &mut out);
    for (si, sub) in ep.subsets.as_deref().unwrap_or_default().iter().enumerate() {
        let base = [key("subsets"), idx(si)];
        let (ready, not_ready) = (
            sub.addresses.as_deref().unwrap_or_default(),
            sub.not_ready_addresses.as_deref().unwrap_or_default(),
        );
        if ready.is_empty() && not_ready.is_empty() {
            out.push((
                base.to_vec(),
                "must specify `addresses` or `notReadyAddresses`".into(),
            ));
        }
        for (field, list) in [("addresses", ready), ("notReadyAddresses", not_ready)] {
            for (i, a) in list.iter().enumerate() {
                let at = |f: &str| {
                    let mut v = base.to_vec();
                    v.extend([key(field), idx(i), key(f)]);
                    v
                };
                if let Ok(ip) = a.ip.parse::<IpAddr>() {
                    if let Err(m) = validate::non_special_ip(&ip) {
                        out.push((at("ip"), format!("{ip}: {m}")));
                    }
                }
                if let Some(n) = &a.node_name {
                    if let Err(m) = validate::object_name(n) {
                        out.push((at("nodeName"), m));
                    }
                }
            }
        }
        let ports = sub.ports.as_deref().unwrap_or_default();
        for (pi, p) in ports.iter().enumerate() {
            let mut path = base.to_vec();
            path.extend([key("ports"), idx(pi), key("name")]);
            match p.name.as_deref().unwrap_or_default() {
                "" if ports.len() > 1 => out.push((
                    path,
                    "required: every port of a subset with several ports needs a name".into(),
                )),
                "" => {}
                n => {
                    if let Err(m) = validate::port_name(n) {
                        out.push((path, m));
                    }
                }
            }
        }
    }
    out
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
    if report(diags, origin, &obj, legacy_problems(ep)) {
        return map;
    }
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

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Topology {
    Any,
    SameZone,
    SameNode,
}

/// kube-proxy's `topologyModeFromHints`: hints are used only when every ready endpoint has
/// them and at least one is for this node (zone).
pub(crate) fn topology_mode(eps: &[Ep], node: &str, zone: Option<&str>) -> Topology {
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

pub(crate) fn available(e: &Ep, mode: Topology, node: &str, zone: Option<&str>) -> bool {
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
    list: &[(&Origin, &Slice)],
    service_present: bool,
    diags: &mut Vec<Diagnostic>,
) {
    let (ns, svc) = k;
    for (origin, es) in list {
        // A slice the API server would refuse is an error even without its Service.
        let Some(obj) = usable_slice(diags, origin, es) else {
            continue;
        };
        // The Service is there but has no rules (headless, ExternalName, invalid): its own
        // note or error says why; its slices are simply unused.
        if service_present {
            continue;
        }
        diags.push(Diagnostic::at_field(
            Severity::Warning,
            origin,
            Some(obj),
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
    slices: &[(&Origin, &Slice)],
    legacy: Option<(&Origin, &Endpoints)>,
    families: &[&FamilyIr],
    settings: &NodeSettings,
    zone: Option<&str>,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<Note>,
) -> LoweredService {
    let v = service.and_then(|(o, s)| validate_service(o, s, settings, diags, notes));
    let Some(v) = v else {
        if !slices.is_empty() {
            orphan_slices(k, slices, service.is_some(), diags);
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

#[cfg(test)]
mod tests {
    use crate::config::NodeSettings;
    use crate::{compile, CompileOptions, Source};

    /// Objects labelled for another proxy (or headless) are skipped as kube-proxy's informers
    /// skip them: no rules, no diagnostics, a note for the Service.
    #[test]
    fn objects_for_other_proxies_are_skipped() {
        let text = "\
apiVersion: v1
kind: Service
metadata:
  name: other
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: cilium}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other-abc
  namespace: default
  labels: {kubernetes.io/service-name: other, service.kubernetes.io/service-proxy-name: cilium}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5]}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web, service.kubernetes.io/headless: ''}
addressType: IPv4
endpoints: [{addresses: [10.244.0.6]}]
ports: [{name: http, port: 8080, protocol: TCP}]
";
        let src = Source {
            name: "labels.yaml".into(),
            text: text.into(),
        };
        let settings = NodeSettings {
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            ..NodeSettings::default()
        };
        let out = compile(&[src], &settings, CompileOptions::default()).unwrap();
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        let ports = &out.ir.families[0].service_ports;
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.to_string(), "default/web:http");
        assert!(
            !ports[0].backends.has_any,
            "the headless-labelled slice is skipped"
        );
        assert!(out.notes.iter().any(
            |n| n.contains("Service default/other: label service.kubernetes.io/service-proxy-name")
        ));
    }
}
