//! `svcc trace` and `svcc explain`: what the node does with one packet, and how it sees one
//! Service, answered from the IR with the object and field behind every step.
//!
//! The trace is a small interpreter of the IR (`ServicePort::dispatch()` plus the node-wide
//! settings), written to mirror what the backends express: the nftables layout
//! (`nft/build.rs`) and kube-proxy's iptables layout (`iptables/build.rs`), with their
//! documented differences. `tests/trace.rs` checks it against every flow of the packet-flow
//! cases, whose outcomes the real kernel checks: the interpreter, the writers and the kernel
//! must agree.
//!
//! Inputs are taken keep-going: objects with errors are left out and listed.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use crate::config::{Backend as Mode, NodeSettings};
use crate::diag::{Diagnostic, Origin, PathSeg, Severity};
use crate::family::{Family, L4Proto};
use crate::ir::{
    Backend, FamilyIr, FilterVerdict, FrontendKind, Ir, NodePortAddrs, PolicyChain, ServicePort,
};
use crate::lower::{self, SvcKey};
use crate::manifest::{self, Object, Source};
use crate::userspace;

/// A packet as the node first sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub port: u16,
    #[serde(serialize_with = "ser_proto")]
    pub protocol: L4Proto,
}

/// Where a packet comes from, as the node decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// One of the node's IPs: the node itself (output path).
    Node,
    /// Inside the cluster CIDRs (the local-traffic detector): a pod.
    Pod,
    /// Anything else.
    External,
}

/// What happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Destination rewritten to one of `backends`.
    Dnat,
    /// Refused (ICMP port unreachable / TCP reset).
    Reject,
    /// Silently dropped.
    Drop,
    /// Left alone by the proxy.
    Accept,
}

/// One endpoint the packet may go to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceBackend {
    pub address: IpAddr,
    pub port: u16,
    /// The chance this endpoint is picked for a new connection (uniform, as kube-proxy).
    pub probability: f64,
    /// On this node.
    pub local: bool,
    /// The backend sees a node address as the source instead of the client's.
    pub masquerade: bool,
}

/// One step of the path, with the object and field behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub what: String,
    pub why: String,
    /// `file:line Kind ns/name field`, when an object is behind the step.
    pub from: Option<String>,
}

/// The answer of `svcc trace`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    pub packet: Packet,
    /// `nftables` or `iptables`.
    pub mode: &'static str,
    pub source_kind: SourceKind,
    pub verdict: Verdict,
    /// `ns/name:port` of the service port matched, if any.
    pub service: Option<String>,
    /// The kind of frontend matched, if any.
    pub frontend: Option<FrontendKind>,
    pub backends: Vec<TraceBackend>,
    /// Every backend sees a node address as the source (see each backend for hairpin and
    /// locally delivered connections).
    pub masquerade: bool,
    /// ClientIP session affinity: a client keeps its backend.
    pub affinity: bool,
    pub affinity_timeout_seconds: Option<u32>,
    /// IPVS mode: the virtual server's scheduler (`rr`, `sh`, …) that picks among `backends`
    /// (their `probability` is then a long-run share); None in the other modes.
    pub scheduler: Option<String>,
    pub steps: Vec<Step>,
    /// Objects left out because of errors in the input (`FILE:LINE:COL: ...`).
    pub left_out: Vec<String>,
}

/// The inputs, parsed and lowered once, for any number of traces and explanations.
pub struct Model<'s> {
    sources: &'s [Source],
    objects: Vec<(Origin, Object)>,
    settings: NodeSettings,
    pub ir: Ir,
    /// Every diagnostic, located.
    pub diagnostics: Vec<Diagnostic>,
    pub notes: Vec<String>,
    /// Addresses of the node besides its node IPs (see [`Model::with_local_addresses`]).
    local_addresses: Vec<IpAddr>,
    /// Userspace mode: the listener ports `svcc compile` assigns (an idle node).
    listener_ports: userspace::Ports,
}

/// A step's provenance before it is located: the object's origin, its label, the field.
struct At {
    origin: Origin,
    object: String,
    field: Vec<PathSeg>,
}

/// Steps under construction; [`Steps::finish`] locates every provenance in one pass per file.
struct Steps<'a> {
    sources: &'a [Source],
    steps: Vec<(String, String, Option<At>)>,
}

impl<'a> Steps<'a> {
    fn push(&mut self, what: impl Into<String>, why: impl Into<String>, at: Option<At>) {
        self.steps.push((what.into(), why.into(), at));
    }

    fn finish(self) -> Vec<Step> {
        let (texts, ats): (Vec<_>, Vec<_>) = self
            .steps
            .into_iter()
            .map(|(what, why, at)| ((what, why), at))
            .unzip();
        texts
            .into_iter()
            .zip(locate_all(self.sources, ats))
            .map(|((what, why), from)| Step { what, why, from })
            .collect()
    }
}

/// `file:line Kind ns/name field` of each provenance, located in one replay per file.
fn locate_all(sources: &[Source], ats: Vec<Option<At>>) -> Vec<Option<String>> {
    let mut diags: Vec<Diagnostic> = ats
        .iter()
        .flatten()
        .map(|at| {
            Diagnostic::at_field(
                Severity::Warning,
                &at.origin,
                Some(at.object.clone()),
                &at.field,
                "",
            )
        })
        .collect();
    manifest::locate(&mut diags, sources);
    let mut located = diags.into_iter();
    ats.into_iter()
        .map(|at| {
            at.map(|_| {
                let d = located.next().expect("one diagnostic per provenance");
                let mut s = d.file.clone();
                if let Some(l) = d.line {
                    s.push_str(&format!(":{l}"));
                }
                if let Some(o) = &d.object {
                    s.push_str(&format!(" {o}"));
                }
                if let Some(f) = &d.field {
                    s.push_str(&format!(" {f}"));
                }
                s
            })
        })
        .collect()
}

fn key(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}
fn idx(i: usize) -> PathSeg {
    PathSeg::Index(i)
}

fn ser_proto<S: serde::Serializer>(p: &L4Proto, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.keyword())
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Nftables => "nftables",
        Mode::Iptables => "iptables",
        Mode::Userspace => "userspace",
        Mode::Ipvs => "ipvs",
    }
}

fn proto_of(p: Option<&str>) -> Option<L4Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(L4Proto::Tcp),
        "UDP" => Some(L4Proto::Udp),
        "SCTP" => Some(L4Proto::Sctp),
        _ => None,
    }
}

fn sock(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'s> Model<'s> {
    /// Parses and lowers `sources` for the node `settings` describes (keep-going).
    pub fn new(sources: &'s [Source], settings: &NodeSettings) -> Model<'s> {
        let mut diagnostics = Vec::new();
        let mut notes = Vec::new();
        let parsed = manifest::parse_sources(sources, &mut diagnostics);
        let ir = lower::lower(&parsed, settings, &mut diagnostics, &mut notes);
        manifest::locate(&mut diagnostics, sources);
        let listener_ports = if settings.backend == Mode::Userspace {
            let keys = userspace::listener_keys(&ir);
            userspace::assign(
                &keys,
                settings.proxy_port_range,
                &Default::default(),
                |_, _| true,
            )
            .ports
        } else {
            Default::default()
        };
        Model {
            sources,
            objects: parsed.objects,
            settings: settings.clone(),
            ir,
            diagnostics,
            notes,
            local_addresses: Vec::new(),
            listener_ports,
        }
    }

    /// Other addresses the node has (svcc is told only its node IPs): they are the node as a
    /// source, and accept NodePorts where every local address does.
    pub fn with_local_addresses(mut self, addrs: Vec<IpAddr>) -> Self {
        self.local_addresses = addrs;
        self
    }

    /// Every address of the node that trace knows: node IPs, then the other local addresses.
    fn node_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .ir
            .families
            .iter()
            .flat_map(|f| f.node_ips.clone())
            .collect();
        v.extend(self.settings.node_ips.iter().copied());
        v.extend(self.local_addresses.iter().copied());
        v
    }

    /// The address the node's own packets to `dst` leave with: its first node IP (or other
    /// local address) of that family; None if trace knows no such address.
    pub fn node_source(&self, dst: IpAddr) -> Option<IpAddr> {
        self.node_addresses()
            .into_iter()
            .find(|a| a.is_ipv4() == dst.is_ipv4() && !a.is_loopback())
    }

    fn left_out(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string().trim_start_matches("error: ").to_string())
            .collect()
    }

    /// The first Service of that name (the one lowering keeps).
    fn service(&self, ns: &str, name: &str) -> Option<(&Origin, &Service)> {
        self.objects.iter().find_map(|(o, obj)| match obj {
            Object::Service(s) if lower::service_key(s) == (ns.to_string(), name.to_string()) => {
                Some((o, s.as_ref()))
            }
            _ => None,
        })
    }

    /// The Service names in the input (for suggestions).
    fn service_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .objects
            .iter()
            .filter_map(|(_, o)| match o {
                Object::Service(s) => {
                    let (ns, n) = lower::service_key(s);
                    Some(format!("{ns}/{n}"))
                }
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The endpoint objects of a Service, with their endpoints as lowering reads them.
    fn endpoints(&self, k: &SvcKey) -> (Vec<(&Origin, &Object)>, lower::EpMap) {
        let owned: Vec<(&Origin, &Object)> = self
            .objects
            .iter()
            .filter(|(_, o)| lower::endpoint_owner(o).as_ref() == Some(k))
            .map(|(o, obj)| (o, obj))
            .collect();
        let slices: Vec<_> = owned
            .iter()
            .filter_map(|(o, obj)| match obj {
                Object::EndpointSlice(es) => Some((*o, es.as_ref())),
                _ => None,
            })
            .collect();
        let legacy = owned.iter().find_map(|(o, obj)| match obj {
            Object::Endpoints(ep) => Some((*o, ep.as_ref())),
            _ => None,
        });
        let map = lower::service_endpoints(&slices, legacy, &mut Vec::new());
        (owned, map)
    }

    /// Where an endpoint address is written: its slice and `endpoints[i]`, or the legacy
    /// Endpoints' `subsets[i].addresses[j]`.
    fn endpoint_at(&self, owned: &[(&Origin, &Object)], addr: IpAddr) -> Option<At> {
        let same = |a: &str| a.parse::<IpAddr>().ok() == Some(addr);
        for (o, obj) in owned {
            match obj {
                Object::EndpointSlice(es) => {
                    if let Some(i) = es
                        .endpoints
                        .iter()
                        .position(|e| e.addresses.first().is_some_and(|a| same(a)))
                    {
                        return Some(At {
                            origin: (*o).clone(),
                            object: format!(
                                "EndpointSlice {}/{}",
                                es.metadata.namespace.as_deref().unwrap_or("default"),
                                es.metadata.name.as_deref().unwrap_or_default()
                            ),
                            field: vec![key("endpoints"), idx(i)],
                        });
                    }
                }
                Object::Endpoints(ep) => {
                    for (si, sub) in ep.subsets.iter().flatten().enumerate() {
                        for (field, l) in [
                            ("addresses", &sub.addresses),
                            ("notReadyAddresses", &sub.not_ready_addresses),
                        ] {
                            if let Some(i) = l.iter().flatten().position(|a| same(&a.ip)) {
                                return Some(At {
                                    origin: (*o).clone(),
                                    object: format!(
                                        "Endpoints {}/{}",
                                        ep.metadata.namespace.as_deref().unwrap_or("default"),
                                        ep.metadata.name.as_deref().unwrap_or_default()
                                    ),
                                    field: vec![key("subsets"), idx(si), key(field), idx(i)],
                                });
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// What the node does with `p`.
    pub fn trace(&self, p: &Packet) -> Trace {
        let mode = self.settings.backend;
        let mut steps = Steps {
            sources: self.sources,
            steps: Vec::new(),
        };
        let fam_of = Family::of(&p.destination);
        let fir = self.ir.families.iter().find(|f| f.family == fam_of);
        let source_kind = self.source_kind(p.source, fir, &mut steps);
        let mut t = Trace {
            packet: *p,
            mode: mode_name(mode),
            source_kind,
            verdict: Verdict::Accept,
            service: None,
            frontend: None,
            backends: Vec::new(),
            masquerade: false,
            affinity: false,
            affinity_timeout_seconds: None,
            scheduler: None,
            steps: Vec::new(),
            left_out: self.left_out(),
        };
        let Some(fir) = fir else {
            steps.push(
                format!("no {} table", fam_of.keyword()),
                "the node programs no rules for this IP family (no --node-ip of it, and no Service of it)",
                None,
            );
            t.steps = steps.finish();
            return t;
        };
        if Family::of(&p.source) != fam_of {
            steps.push(
                "source and destination of different families",
                "not a packet the node can see",
                None,
            );
            t.steps = steps.finish();
            return t;
        }
        match self.frontend(fir, p) {
            Some((sp, kind)) => {
                self.service_path(fir, sp, kind, p, source_kind, &mut t, &mut steps)
            }
            None => self.no_frontend(fir, p, &mut t, &mut steps),
        }
        t.steps = steps.finish();
        t
    }

    fn source_kind(&self, src: IpAddr, fir: Option<&FamilyIr>, steps: &mut Steps) -> SourceKind {
        if self.node_addresses().contains(&src) || src.is_loopback() {
            steps.push(
                format!("source {src} is the node itself"),
                "an address of the node: the packet starts in the node's output path",
                None,
            );
            return SourceKind::Node;
        }
        let cidrs = fir.map(|f| f.cluster_cidrs.as_slice()).unwrap_or_default();
        if let Some(c) = cidrs.iter().find(|c| c.contains(&src)) {
            steps.push(
                format!("source {src} is a pod"),
                format!("inside the cluster CIDR {c} (the local-traffic detector, --cluster-cidr)"),
                None,
            );
            SourceKind::Pod
        } else {
            let why = if cidrs.is_empty() {
                "no cluster CIDR is configured (--cluster-cidr), so no source counts as a pod"
                    .to_string()
            } else {
                format!("outside the cluster CIDRs {}", list(cidrs))
            };
            steps.push(format!("source {src} is an external client"), why, None);
            SourceKind::External
        }
    }

    /// The service port and frontend the packet's destination matches. Address frontends
    /// win over NodePorts, as the `services` chain looks them up first.
    fn frontend<'i>(
        &self,
        fir: &'i FamilyIr,
        p: &Packet,
    ) -> Option<(&'i ServicePort, FrontendKind)> {
        let mut node_port = None;
        for sp in fir
            .service_ports
            .iter()
            .filter(|sp| sp.protocol == p.protocol)
        {
            for f in &sp.frontends {
                if f.port != p.port {
                    continue;
                }
                match f.kind {
                    FrontendKind::NodePort
                        if node_port.is_none() && self.node_port_address(fir, p.destination) =>
                    {
                        node_port = Some((sp.as_ref(), f.kind));
                    }
                    FrontendKind::NodePort => {}
                    _ if f.addr == Some(p.destination) => return Some((sp, f.kind)),
                    _ => {}
                }
            }
        }
        node_port
    }

    fn no_frontend(&self, fir: &FamilyIr, p: &Packet, t: &mut Trace, steps: &mut Steps) {
        let mode = self.settings.backend;
        let dst = p.destination;
        // iptables mode: the filter rules for NodePorts with nowhere to go match every local
        // address (`-m addrtype --dst-type LOCAL`), loopback and addresses outside
        // nodePortAddresses included.
        if mode == Mode::Iptables && (dst.is_loopback() || self.node_addresses().contains(&dst)) {
            for sp in fir
                .service_ports
                .iter()
                .filter(|sp| sp.protocol == p.protocol)
            {
                let np = sp
                    .frontends
                    .iter()
                    .any(|f| f.kind == FrontendKind::NodePort && f.port == p.port);
                let Some(v) = sp.dispatch().external_filter.filter(|_| np) else {
                    continue;
                };
                let (verdict, name, why) = match v {
                    FilterVerdict::Reject => {
                        (Verdict::Reject, "REJECT", "the Service has no endpoints")
                    }
                    FilterVerdict::Drop => (
                        Verdict::Drop,
                        "DROP",
                        "externalTrafficPolicy Local and no endpoint on this node",
                    ),
                };
                let field = match self.port_index(sp) {
                    Some(i) => vec![key("spec"), key("ports"), idx(i), key("nodePort")],
                    None => vec![key("spec"), key("ports")],
                };
                steps.push(
                    format!("{} is a local address and {}/{} the NodePort of {}", dst, p.port, p.protocol.keyword(), sp.name),
                    format!("{why}: kube-proxy's iptables mode filters such NodePorts on every local address (even outside nodePortAddresses, even loopback)"),
                    self.service_at(sp, &field),
                );
                steps.push(name, why, None);
                t.service = Some(sp.name.to_string());
                t.frontend = Some(FrontendKind::NodePort);
                t.verdict = verdict;
                return;
            }
        }
        if let Some(sp) = fir
            .service_ports
            .iter()
            .find(|sp| sp.cluster_ip() == Some(dst))
        {
            let at = self.service_at(sp, &[key("spec"), key("ports")]);
            let defined: Vec<String> = fir
                .service_ports
                .iter()
                .filter(|s| s.cluster_ip() == Some(dst))
                .flat_map(|s| {
                    s.frontends
                        .iter()
                        .filter(|f| f.kind == FrontendKind::ClusterIp)
                        .map(move |f| format!("{}/{}", f.port, s.protocol.keyword()))
                })
                .collect();
            let what = format!(
                "{}/{} is not a port of ClusterIP {dst} (Service {}/{} defines {})",
                p.port,
                p.protocol.keyword(),
                sp.name.namespace,
                sp.name.name,
                defined.join(", ")
            );
            match mode {
                Mode::Nftables | Mode::Userspace => {
                    steps.push(what, "kube-proxy's nftables mode rejects traffic to an undefined port of a ClusterIP (cluster-ips-check)", at);
                    t.verdict = Verdict::Reject;
                }
                Mode::Ipvs => {
                    steps.push(what, "kube-proxy's IPVS mode rejects new connections to an address on its dummy interface on a port that is no virtual server (svcc: vip-filter)", at);
                    t.verdict = Verdict::Reject;
                }
                Mode::Iptables => {
                    steps.push(what, "kube-proxy's iptables mode leaves an undefined port of a ClusterIP untouched (the nftables mode rejects it)", at);
                }
            }
            return;
        }
        // IPVS schedules only locally routed packets, so external and LB IPs that are not the
        // node's are bound to svcc-ipvs0 too; their other ports meet the same filter.
        if mode == Mode::Ipvs && !self.node_addresses().contains(&dst) {
            if let Some(sp) = fir.service_ports.iter().find(|sp| {
                sp.frontends.iter().any(|f| {
                    matches!(
                        f.kind,
                        FrontendKind::ExternalIp | FrontendKind::LoadBalancer
                    ) && f.addr == Some(dst)
                })
            }) {
                let at = self.service_at(sp, &[key("spec")]);
                steps.push(
                    format!(
                        "{} is not a port of {dst}, an external or load-balancer IP of Service {}/{} bound to svcc-ipvs0",
                        sock(dst, p.port),
                        sp.name.namespace,
                        sp.name.name
                    ),
                    "kube-proxy's IPVS mode rejects new connections to an address on its dummy interface on a port that is no virtual server (svcc: vip-filter)",
                    at,
                );
                t.verdict = Verdict::Reject;
                return;
            }
        }
        if let Some(c) = fir.service_cidrs.iter().find(|c| c.contains(&dst)) {
            let what = format!("{dst} is in the service CIDR {c} but is no Service's ClusterIP");
            match mode {
                Mode::Nftables | Mode::Userspace => {
                    steps.push(what, "kube-proxy's nftables mode drops traffic to unallocated service-CIDR addresses (cluster-ips-check)", None);
                    t.verdict = Verdict::Drop;
                }
                Mode::Ipvs => {
                    steps.push(what, "svcc's IPVS mode drops traffic to unallocated service-CIDR addresses like the nftables mode (kube-proxy's IPVS mode leaves them untouched)", None);
                    t.verdict = Verdict::Drop;
                }
                Mode::Iptables => {
                    steps.push(what, "kube-proxy's iptables mode leaves unallocated service-CIDR addresses untouched (the nftables mode drops them)", None);
                }
            }
            return;
        }
        let why = if self.node_addresses().contains(&dst) {
            format!(
                "no Service has a NodePort {}/{}",
                p.port,
                p.protocol.keyword()
            )
        } else {
            "no Service has this address as a ClusterIP, external IP or load-balancer IP".into()
        };
        steps.push(
            format!(
                "{} is not a Service address: not touched",
                sock(dst, p.port)
            ),
            why,
            None,
        );
    }

    /// The provenance of a field of the Service behind `sp`.
    fn service_at(&self, sp: &ServicePort, field: &[PathSeg]) -> Option<At> {
        let (o, _) = self.service(&sp.name.namespace, &sp.name.name)?;
        Some(At {
            origin: o.clone(),
            object: format!("Service {}/{}", sp.name.namespace, sp.name.name),
            field: field.to_vec(),
        })
    }

    /// The index of `sp`'s port in its Service's `spec.ports`.
    fn port_index(&self, sp: &ServicePort) -> Option<usize> {
        let (_, s) = self.service(&sp.name.namespace, &sp.name.name)?;
        s.spec.as_ref()?.ports.as_ref()?.iter().position(|q| {
            q.name.as_deref().unwrap_or_default() == sp.name.port
                && proto_of(q.protocol.as_deref()) == Some(sp.protocol)
        })
    }

    /// The field that defines a frontend of `sp` at `addr`.
    fn frontend_field(&self, sp: &ServicePort, kind: FrontendKind, addr: IpAddr) -> Vec<PathSeg> {
        let spec = self
            .service(&sp.name.namespace, &sp.name.name)
            .and_then(|(_, s)| s.spec.as_ref());
        let pos = |l: Option<&Vec<String>>| {
            l.and_then(|l| {
                l.iter()
                    .position(|x| x.trim().parse::<IpAddr>().ok() == Some(addr))
            })
        };
        match kind {
            FrontendKind::ClusterIp => match spec.and_then(|s| pos(s.cluster_ips.as_ref())) {
                Some(i) => vec![key("spec"), key("clusterIPs"), idx(i)],
                None => vec![key("spec"), key("clusterIP")],
            },
            FrontendKind::ExternalIp => match spec.and_then(|s| pos(s.external_ips.as_ref())) {
                Some(i) => vec![key("spec"), key("externalIPs"), idx(i)],
                None => vec![key("spec"), key("externalIPs")],
            },
            FrontendKind::NodePort => match self.port_index(sp) {
                Some(i) => vec![key("spec"), key("ports"), idx(i), key("nodePort")],
                None => vec![key("spec"), key("ports")],
            },
            FrontendKind::LoadBalancer => {
                let ing = self
                    .service(&sp.name.namespace, &sp.name.name)
                    .and_then(|(_, s)| s.status.as_ref())
                    .and_then(|st| st.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .and_then(|l| {
                        l.iter().position(|i| {
                            i.ip.as_deref().and_then(|x| x.parse().ok()) == Some(addr)
                        })
                    });
                match ing {
                    Some(i) => vec![
                        key("status"),
                        key("loadBalancer"),
                        key("ingress"),
                        idx(i),
                        key("ip"),
                    ],
                    None => vec![key("status"), key("loadBalancer"), key("ingress")],
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one packet's path, each input named
    fn service_path(
        &self,
        fir: &FamilyIr,
        sp: &ServicePort,
        kind: FrontendKind,
        p: &Packet,
        src_kind: SourceKind,
        t: &mut Trace,
        steps: &mut Steps,
    ) {
        let mode = self.settings.backend;
        let d = sp.dispatch();
        let pol = &sp.policy;
        let b = &sp.backends;
        t.service = Some(sp.name.to_string());
        t.frontend = Some(kind);
        let kind_name = match kind {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::ExternalIp => "external IP",
            FrontendKind::LoadBalancer => "load-balancer IP",
            FrontendKind::NodePort => "NodePort",
        };
        let where_ = match kind {
            FrontendKind::NodePort => match &fir.node_ports_on {
                NodePortAddrs::AllLocal => {
                    "accepted on every local address but loopback".to_string()
                }
                NodePortAddrs::Addrs(a) => format!("accepted on {}", list(a)),
            },
            _ => format!("{} is this Service's {kind_name}", p.destination),
        };
        steps.push(
            format!(
                "matches the {kind_name} {}/{} of {}",
                sock(p.destination, p.port),
                p.protocol.keyword(),
                sp.name
            ),
            where_,
            self.service_at(sp, &self.frontend_field(sp, kind, p.destination)),
        );
        let external = kind != FrontendKind::ClusterIp;
        if mode == Mode::Userspace && sp.protocol == L4Proto::Sctp {
            let (verdict, why) = if external {
                (
                    Verdict::Accept,
                    "no listener, so no redirect: the packet is left alone",
                )
            } else {
                (Verdict::Reject, "no listener, so no redirect: the ClusterIP's filter rule rejects it (cluster-ips-check)")
            };
            steps.push("SCTP is not supported by the userspace proxy", why, None);
            t.verdict = verdict;
            return;
        }

        // loadBalancerSourceRanges: a pre-DNAT filter (nftables: always; iptables: only while
        // the service has endpoints, `usesFWChain`).
        if kind == FrontendKind::LoadBalancer && !pol.source_ranges.is_empty() {
            let lb_src = pol.allow_lb_ips_as_source
                && sp
                    .frontends
                    .iter()
                    .any(|f| f.kind == FrontendKind::LoadBalancer && f.addr == Some(p.source));
            let allowed = pol.source_ranges.iter().any(|r| r.contains(&p.source)) || lb_src;
            let at = self.service_at(sp, &[key("spec"), key("loadBalancerSourceRanges")]);
            let enforced = mode != Mode::Iptables || d.has_endpoints;
            if !allowed && enforced {
                steps.push(
                    format!("source {} is outside loadBalancerSourceRanges", p.source),
                    format!("allowed: {}; everything else to this load-balancer IP is dropped before DNAT", list(&pol.source_ranges)),
                    at,
                );
                t.verdict = Verdict::Drop;
                return;
            }
            if !allowed {
                steps.push(
                    format!("source {} is outside loadBalancerSourceRanges, but the Service has no endpoints", p.source),
                    "kube-proxy's iptables mode installs the firewall only while the Service has endpoints",
                    at,
                );
            } else {
                steps.push(
                    format!("source {} is allowed by loadBalancerSourceRanges", p.source),
                    if lb_src { "a range contains a node IP, so the load-balancer IPs are allowed as sources".to_string() } else { format!("inside {}", list(&pol.source_ranges)) },
                    at,
                );
            }
        }

        // Which endpoint set, and whether the external chain masquerades.
        let mut masq_reason: Option<String> = None;
        let chain: Option<PolicyChain> = if !external {
            let at = self.service_at(sp, &[key("spec"), key("internalTrafficPolicy")]);
            if pol.internal_local {
                steps.push(
                    "internalTrafficPolicy Local",
                    "ClusterIP traffic goes only to endpoints on this node",
                    at,
                );
            }
            d.internal
        } else if !d.uses_external_chain {
            None
        } else {
            let at = self.service_at(sp, &[key("spec"), key("externalTrafficPolicy")]);
            if !pol.external_local {
                masq_reason = Some("externalTrafficPolicy Cluster: external traffic may cross nodes, so it is masqueraded".into());
                steps.push(
                    "externalTrafficPolicy Cluster",
                    "external traffic goes to every endpoint of the cluster, masqueraded",
                    at,
                );
                d.external
            } else if mode == Mode::Ipvs
                && d.external == Some(PolicyChain::Local)
                && src_kind != SourceKind::External
            {
                if src_kind == SourceKind::Node {
                    masq_reason = Some("the node's own traffic to an external address of an eTP=Local Service is masqueraded".into());
                }
                steps.push(
                    "externalTrafficPolicy Local (IPVS)",
                    "one virtual server per address, whoever the client: pods and the node reach the local endpoints only, as kube-proxy's IPVS mode (the nftables mode short-circuits them to every endpoint)",
                    at,
                );
                d.external
            } else if src_kind == SourceKind::Pod && !b.cluster.is_empty() {
                steps.push(
                    "externalTrafficPolicy Local, but the source is a pod",
                    "pod traffic to an external address is short-circuited to every endpoint of the cluster, source kept",
                    at,
                );
                Some(PolicyChain::Cluster)
            } else if src_kind == SourceKind::Node && !b.cluster.is_empty() {
                masq_reason = Some("the node's own traffic to an external address of an eTP=Local Service is masqueraded".into());
                steps.push(
                    "externalTrafficPolicy Local, but the source is the node",
                    "the node's own traffic is short-circuited to every endpoint of the cluster, masqueraded",
                    at,
                );
                Some(PolicyChain::Cluster)
            } else {
                steps.push(
                    "externalTrafficPolicy Local",
                    "external traffic goes only to endpoints on this node, with its source kept",
                    at,
                );
                d.external
            }
        };

        let Some(chain) = chain else {
            let filter = if external {
                d.external_filter
            } else {
                d.internal_filter
            };
            let (verdict, why) = match filter {
                Some(FilterVerdict::Reject) | None => (
                    Verdict::Reject,
                    "the Service has no usable endpoint (none ready, none serving and terminating): rejected".to_string(),
                ),
                Some(FilterVerdict::Drop) => (
                    Verdict::Drop,
                    format!(
                        "{} traffic policy is Local and no endpoint is on this node ({}): dropped",
                        if external { "the external" } else { "the internal" },
                        self.settings.hostname
                    ),
                ),
            };
            self.endpoint_steps(sp, p, chain_for_report(external, pol), &[], steps);
            steps.push(
                match verdict {
                    Verdict::Reject => "REJECT",
                    _ => "DROP",
                },
                why,
                None,
            );
            t.verdict = verdict;
            return;
        };
        let set: &[Backend] = match chain {
            PolicyChain::Cluster => &b.cluster,
            PolicyChain::Local => &b.local,
        };
        self.endpoint_steps(sp, p, chain, set, steps);
        if mode == Mode::Userspace {
            self.userspace_path(fir, sp, external, set, t, steps);
            return;
        }

        // Masquerade (kube-proxy's mark-for-masquerade), then what the kernel does with it.
        // IPVS: an address on svcc-ipvs0 is local, so the node's own connection to it takes it
        // as source, and is masqueraded (kube-proxy's `KUBE-CLUSTER-IP src,dst`).
        let on_dummy = !external || !self.node_addresses().contains(&p.destination);
        if mode == Mode::Ipvs
            && src_kind == SourceKind::Node
            && on_dummy
            && kind != FrontendKind::NodePort
        {
            masq_reason = Some(format!(
                "the node's connection to {} (an address of svcc-ipvs0) takes it as source, so it is masqueraded",
                p.destination
            ));
        } else if !external {
            if fir.masquerade_all {
                masq_reason =
                    Some("masqueradeAll: every ClusterIP connection is masqueraded".into());
            } else if !fir.cluster_cidrs.is_empty()
                && !fir.cluster_cidrs.iter().any(|c| c.contains(&p.source))
            {
                masq_reason = Some(format!(
                    "the source is outside the cluster CIDRs ({}): off-cluster traffic to a ClusterIP is masqueraded",
                    list(&fir.cluster_cidrs)
                ));
            }
        }
        let n = set.len() as f64;
        let node_ips = self.node_addresses();
        t.backends = set
            .iter()
            .map(|e| {
                let local_delivery = node_ips.contains(&e.addr) && src_kind != SourceKind::Node;
                TraceBackend {
                    address: e.addr,
                    port: e.port,
                    probability: 1.0 / n,
                    local: e.local,
                    masquerade: !local_delivery && (masq_reason.is_some() || e.addr == p.source),
                }
            })
            .collect();
        t.masquerade = t.backends.iter().all(|b| b.masquerade);
        match &masq_reason {
            Some(r) => steps.push("masquerade", r.clone(), None),
            None => steps.push(
                "no masquerade",
                match (external, src_kind) {
                    (false, SourceKind::Pod) => "the source is a pod (inside the cluster CIDRs): it is kept".to_string(),
                    (false, _) if fir.cluster_cidrs.is_empty() => "no cluster CIDR is configured: the local-traffic detector is off and the source is kept".to_string(),
                    _ => "the source is kept".to_string(),
                },
                None,
            ),
        }
        for e in &t.backends {
            if e.address == p.source {
                steps.push(
                    format!("hairpin at {}", sock(e.address, e.port)),
                    "the client is this endpoint: a connection to itself is masqueraded so that the answer comes back through the node",
                    None,
                );
            }
            if node_ips.contains(&e.address)
                && src_kind != SourceKind::Node
                && (masq_reason.is_some() || e.address == p.source)
            {
                steps.push(
                    format!("no masquerade at {}", sock(e.address, e.port)),
                    "the endpoint is the node itself: the connection is delivered locally and never passes POSTROUTING, where masquerading happens",
                    None,
                );
            }
        }
        if let Some(to) = pol.affinity_timeout {
            t.affinity = true;
            t.affinity_timeout_seconds = Some(to);
            steps.push(
                "ClientIP session affinity",
                format!("a client keeps the endpoint it was given for {to} s after its last new connection"),
                self.service_at(sp, &[key("spec"), key("sessionAffinity")]),
            );
        }
        if mode == Mode::Ipvs {
            t.scheduler = Some(self.settings.ipvs.scheduler.to_string());
            steps.push(
                "IPVS",
                format!(
                    "the virtual server's scheduler ({}) picks one of {} real server(s), weight 1 each (the chances are its long-run shares)",
                    self.settings.ipvs.scheduler,
                    set.len()
                ),
                None,
            );
        } else {
            steps.push(
                "DNAT",
                format!(
                    "to one of {} endpoint(s), each with chance 1/{}",
                    set.len(),
                    set.len()
                ),
                None,
            );
        }
        t.verdict = Verdict::Dnat;
    }

    /// `dst` is where this family accepts NodePorts.
    fn node_port_address(&self, fir: &FamilyIr, dst: IpAddr) -> bool {
        if dst.is_loopback() {
            return false;
        }
        match &fir.node_ports_on {
            // Every local address: those trace knows (node IPs, --local-address).
            NodePortAddrs::AllLocal => self.node_addresses().contains(&dst),
            NodePortAddrs::Addrs(a) => a.contains(&dst),
        }
    }

    /// Userspace mode: the packet is DNATed to the proxy's listener, which opens its own
    /// connection from the node to an endpoint (round robin, ClientIP affinity).
    fn userspace_path(
        &self,
        fir: &FamilyIr,
        sp: &ServicePort,
        external: bool,
        set: &[Backend],
        t: &mut Trace,
        steps: &mut Steps,
    ) {
        let plan = userspace::plan(sp);
        let role = if external {
            plan.external
        } else {
            plan.internal
        };
        let listener = role.map(|role| userspace::ListenerKey {
            family: fir.family,
            name: sp.name.clone(),
            role,
        });
        let port = listener.as_ref().and_then(|k| self.listener_ports.get(k));
        steps.push(
            match port {
                Some(p) => format!("redirected to the userspace proxy's listener on node port {p}"),
                None => "redirected to the userspace proxy's listener".to_string(),
            },
            "the listener's port is assigned from --proxy-port-range by a hash of the service port's name (svcc run keeps it while the service port exists)",
            None,
        );
        let n = set.len() as f64;
        t.backends = set
            .iter()
            .map(|e| TraceBackend {
                address: e.addr,
                port: e.port,
                probability: 1.0 / n,
                local: e.local,
                masquerade: true,
            })
            .collect();
        t.masquerade = true;
        steps.push(
            "the backend sees a node address",
            "the proxy opens its own connection from the node (the userspace mode's trade-off: no client address at the backend)",
            None,
        );
        if let Some(to) = sp.policy.affinity_timeout {
            t.affinity = true;
            t.affinity_timeout_seconds = Some(to);
            steps.push(
                "ClientIP session affinity",
                format!("the proxy keeps a client on its endpoint for {to} s"),
                self.service_at(sp, &[key("spec"), key("sessionAffinity")]),
            );
        }
        steps.push(
            "proxied",
            format!(
                "to one of {} endpoint(s) in turn (round robin; each gets 1/{} of new connections); a failed connect tries the next",
                set.len(),
                set.len()
            ),
            None,
        );
        t.verdict = Verdict::Dnat;
    }

    /// One step for the endpoint set, and one per endpoint left out of it, with the reason.
    fn endpoint_steps(
        &self,
        sp: &ServicePort,
        p: &Packet,
        chain: PolicyChain,
        set: &[Backend],
        steps: &mut Steps,
    ) {
        let k = (sp.name.namespace.clone(), sp.name.name.clone());
        let (owned, map) = self.endpoints(&k);
        let fam = Family::of(&p.destination);
        let eps = lower::port_endpoints(&map, &sp.name.port, sp.protocol, fam);
        let node = self.settings.hostname.as_str();
        let zone = self.node_zone();
        let topo = lower::topology_mode(&eps, node, zone.as_deref());
        let which = match chain {
            PolicyChain::Cluster => "cluster",
            PolicyChain::Local => "local",
        };
        if owned.is_empty() {
            steps.push(
                "no endpoints",
                format!("no EndpointSlice (label kubernetes.io/service-name={}) or Endpoints object in the input", sp.name.name),
                None,
            );
            return;
        }
        if set.is_empty() {
            steps.push(
                format!("{which} endpoints: none usable"),
                format!(
                    "{} endpoint(s) known for port {:?}",
                    eps.len(),
                    sp.name.port
                ),
                None,
            );
        } else {
            steps.push(
                format!(
                    "{which} endpoints: {}",
                    set.iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                match topo {
                    lower::Topology::Any => "every usable endpoint, picked uniformly".to_string(),
                    lower::Topology::SameZone => format!(
                        "topology hints: only endpoints hinted for this node's zone ({})",
                        zone.as_deref().unwrap_or_default()
                    ),
                    lower::Topology::SameNode => {
                        format!("topology hints: only endpoints hinted for this node ({node})")
                    }
                },
                None,
            );
        }
        let any_ready = eps
            .iter()
            .any(|e| e.ready && (chain == PolicyChain::Cluster || e.node.as_deref() == Some(node)));
        for e in &eps {
            if set.iter().any(|b| b.addr == e.addr && b.port == e.port) {
                continue;
            }
            let why = if chain == PolicyChain::Local && e.node.as_deref() != Some(node) {
                match &e.node {
                    Some(n) => format!("on node {n}, not this node ({node})"),
                    None => format!("no nodeName: not on this node ({node})"),
                }
            } else if e.ready {
                if chain == PolicyChain::Cluster
                    && !lower::available(e, topo, node, zone.as_deref())
                {
                    format!(
                        "topology hints for other zones/nodes (zones [{}], nodes [{}])",
                        list(&e.zone_hints),
                        list(&e.node_hints)
                    )
                } else {
                    "not in the set".to_string()
                }
            } else if e.serving && e.terminating {
                if any_ready {
                    "terminating: used only while no endpoint is ready".to_string()
                } else {
                    "terminating, and outside the topology hints".to_string()
                }
            } else if e.terminating {
                "terminating and not serving".to_string()
            } else {
                "not ready".to_string()
            };
            steps.push(
                format!("endpoint {} left out", sock(e.addr, e.port)),
                why,
                self.endpoint_at(&owned, e.addr),
            );
        }
    }

    /// The zone of this node, from its Node object.
    fn node_zone(&self) -> Option<String> {
        self.objects.iter().find_map(|(_, o)| match o {
            Object::Node(n)
                if n.metadata.name.as_deref() == Some(self.settings.hostname.as_str()) =>
            {
                n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("topology.kubernetes.io/zone"))
                    .cloned()
            }
            _ => None,
        })
    }

    /// One Service as this node sees it (`ns/name`, or `name` in `default`).
    pub fn explain(&self, service: &str) -> Result<Explanation, String> {
        let (ns, name) = service.split_once('/').unwrap_or(("default", service));
        let Some((origin, svc)) = self.service(ns, name) else {
            let names = self.service_names();
            let near = nearest(&format!("{ns}/{name}"), &names);
            return Err(match near {
                Some(n) => format!("no Service {ns}/{name} in the input; did you mean {n}?"),
                None if names.is_empty() => {
                    format!("no Service {ns}/{name} in the input (it has no Services)")
                }
                None => format!("no Service {ns}/{name} in the input"),
            });
        };
        let obj = format!("Service {ns}/{name}");
        let mut steps = Steps {
            sources: self.sources,
            steps: Vec::new(),
        };
        let at = |f: &[PathSeg]| {
            Some(At {
                origin: origin.clone(),
                object: obj.clone(),
                field: f.to_vec(),
            })
        };
        let spec = svc.spec.as_ref();
        let ty = spec
            .and_then(|s| s.type_.clone())
            .unwrap_or_else(|| "ClusterIP".into());
        steps.push(format!("type {ty}"), "", at(&[]));
        for n in self
            .notes
            .iter()
            .filter(|n| n.starts_with(&format!("{obj}:")))
        {
            let text = n[obj.len() + 1..].trim().to_string();
            steps.push("note", text, None);
        }
        if ty == "ExternalName" {
            let target = spec
                .and_then(|s| s.external_name.clone())
                .unwrap_or_default();
            steps.push(
                format!("ExternalName {target}"),
                format!("the cluster DNS answers {name}.{ns}.svc with a CNAME to {target}: the redirect happens in DNS, not in the proxy, so there are no rules"),
                at(&[key("spec"), key("externalName")]),
            );
        }
        let errors: Vec<String> = self
            .diagnostics
            .iter()
            .filter(|d| {
                d.object.as_deref() == Some(obj.as_str())
                    || d.message.contains(&format!("Service {ns}/{name}"))
            })
            .map(|d| d.to_string())
            .collect();
        for e in &errors {
            steps.push("problem", e.clone(), None);
        }
        // Compaction keeps an empty map for a selector (its labels are never read).
        let selector_less = spec.is_some_and(|s| s.selector.is_none());
        let k = (ns.to_string(), name.to_string());
        let (owned, map) = self.endpoints(&k);
        if selector_less && !owned.is_empty() {
            steps.push(
                "selector-less",
                "no spec.selector: its endpoints are hand-made EndpointSlices/Endpoints, not managed by the EndpointSlice controller",
                None,
            );
        }
        let mut ports = Vec::new();
        let mut frontend_ats = Vec::new();
        for fir in &self.ir.families {
            for sp in fir
                .service_ports
                .iter()
                .filter(|sp| sp.name.namespace == ns && sp.name.name == name)
            {
                let d = sp.dispatch();
                let mut frontends = Vec::new();
                for f in &sp.frontends {
                    let addrs = match (f.kind, f.addr) {
                        (_, Some(a)) => vec![a.to_string()],
                        (_, None) => match &fir.node_ports_on {
                            NodePortAddrs::AllLocal => {
                                vec!["every local address but loopback".into()]
                            }
                            NodePortAddrs::Addrs(a) => a.iter().map(|x| x.to_string()).collect(),
                        },
                    };
                    frontend_ats.push(self.service_at(
                        sp,
                        &self.frontend_field(
                            sp,
                            f.kind,
                            f.addr.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                        ),
                    ));
                    frontends.push(ExplainFrontend {
                        kind: f.kind,
                        addresses: addrs,
                        port: f.port,
                        from: None, // located below, with the others
                    });
                }
                let eps = lower::port_endpoints(&map, &sp.name.port, sp.protocol, fir.family);
                let endpoints = eps
                    .iter()
                    .map(|e| ExplainEndpoint {
                        address: e.addr,
                        port: e.port,
                        node: e.node.clone(),
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                        cluster: sp
                            .backends
                            .cluster
                            .iter()
                            .any(|b| b.addr == e.addr && b.port == e.port),
                        local: sp
                            .backends
                            .local
                            .iter()
                            .any(|b| b.addr == e.addr && b.port == e.port),
                    })
                    .collect();
                let route = |c: Option<PolicyChain>, f: Option<FilterVerdict>| match (c, f) {
                    (Some(PolicyChain::Cluster), _) => "cluster endpoints",
                    (Some(PolicyChain::Local), _) => "local endpoints",
                    (None, Some(FilterVerdict::Drop)) => {
                        "DROP (Local policy, no endpoint on this node)"
                    }
                    (None, _) => "REJECT (no endpoints)",
                };
                ports.push(ExplainPort {
                    service_port: sp.name.to_string(),
                    family: fir.family.keyword(),
                    protocol: sp.protocol.keyword(),
                    frontends,
                    endpoints,
                    internal_traffic: route(d.internal, d.internal_filter),
                    external_traffic: if sp.externally_accessible() {
                        Some(route(d.external, d.external_filter))
                    } else {
                        None
                    },
                    internal_traffic_policy_local: sp.policy.internal_local,
                    external_traffic_policy_local: sp.policy.external_local,
                    affinity_timeout_seconds: sp.policy.affinity_timeout,
                    source_ranges: sp.policy.source_ranges.clone(),
                    health_check_node_port: sp.policy.health_check_node_port,
                });
            }
        }
        // Every frontend's provenance in one replay of the inputs.
        let mut froms = locate_all(self.sources, frontend_ats).into_iter();
        for fe in ports.iter_mut().flat_map(|p| p.frontends.iter_mut()) {
            fe.from = froms.next().flatten();
        }
        Ok(Explanation {
            service: format!("{ns}/{name}"),
            mode: mode_name(self.settings.backend),
            notes: steps.finish(),
            ports,
        })
    }
}

fn chain_for_report(external: bool, pol: &crate::ir::Policy) -> PolicyChain {
    if (external && pol.external_local) || (!external && pol.internal_local) {
        PolicyChain::Local
    } else {
        PolicyChain::Cluster
    }
}

/// The name closest to `want` (edit distance at most a third of its length).
fn nearest(want: &str, names: &[String]) -> Option<String> {
    let dist = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    };
    names
        .iter()
        .map(|n| (dist(want, n), n))
        .filter(|(d, _)| *d <= want.len().div_ceil(3))
        .min()
        .map(|(_, n)| n.clone())
}

/// The answer of `svcc explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub service: String,
    pub mode: &'static str,
    /// The type, svcc's notes (headless, ExternalName, selector-less …) and problems.
    pub notes: Vec<Step>,
    /// One per (port, family) that has rules.
    pub ports: Vec<ExplainPort>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainPort {
    pub service_port: String,
    pub family: &'static str,
    pub protocol: &'static str,
    pub frontends: Vec<ExplainFrontend>,
    pub endpoints: Vec<ExplainEndpoint>,
    /// Where ClusterIP traffic goes.
    pub internal_traffic: &'static str,
    /// Where NodePort / external IP / load-balancer traffic goes (None: not exposed).
    pub external_traffic: Option<&'static str>,
    pub internal_traffic_policy_local: bool,
    pub external_traffic_policy_local: bool,
    pub affinity_timeout_seconds: Option<u32>,
    pub source_ranges: Vec<IpNet>,
    pub health_check_node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainFrontend {
    pub kind: FrontendKind,
    pub addresses: Vec<String>,
    pub port: u16,
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainEndpoint {
    pub address: IpAddr,
    pub port: u16,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Used for traffic with the Cluster policy.
    pub cluster: bool,
    /// Used for traffic with the Local policy.
    pub local: bool,
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.packet;
        writeln!(
            f,
            "packet {} -> {} {} ({} mode)",
            p.source,
            sock(p.destination, p.port),
            p.protocol.keyword(),
            self.mode
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            write!(f, "{:>3}. {}", i + 1, s.what)?;
            if !s.why.is_empty() {
                write!(f, ": {}", s.why)?;
            }
            writeln!(f)?;
            if let Some(from) = &s.from {
                writeln!(f, "       from {from}")?;
            }
        }
        let verdict = match self.verdict {
            Verdict::Dnat => "DNAT",
            Verdict::Reject => "REJECT",
            Verdict::Drop => "DROP",
            Verdict::Accept => "ACCEPT (not touched by the proxy)",
        };
        write!(f, "verdict: {verdict}")?;
        if let Some(s) = &self.service {
            write!(f, " ({s})")?;
        }
        writeln!(f)?;
        for b in &self.backends {
            writeln!(
                f,
                "  -> {} chance {:.3}{}{}",
                sock(b.address, b.port),
                b.probability,
                if b.local { ", local" } else { "" },
                if b.masquerade {
                    ", masqueraded"
                } else {
                    ", source kept"
                }
            )?;
        }
        if self.affinity {
            writeln!(
                f,
                "  session affinity: ClientIP, {} s",
                self.affinity_timeout_seconds.unwrap_or(0)
            )?;
        }
        if !self.left_out.is_empty() {
            writeln!(f, "left out (errors in the input):")?;
            for l in &self.left_out {
                writeln!(f, "  {l}")?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Service {} ({} mode)", self.service, self.mode)?;
        for s in &self.notes {
            write!(f, "  {}", s.what)?;
            if !s.why.is_empty() {
                write!(f, ": {}", s.why)?;
            }
            if let Some(from) = &s.from {
                write!(f, "  [{from}]")?;
            }
            writeln!(f)?;
        }
        if self.ports.is_empty() {
            writeln!(f, "  no rules on this node")?;
        }
        for p in &self.ports {
            writeln!(f, "port {} ({}, {})", p.service_port, p.family, p.protocol)?;
            for fe in &p.frontends {
                let kind = match fe.kind {
                    FrontendKind::ClusterIp => "ClusterIP",
                    FrontendKind::ExternalIp => "external IP",
                    FrontendKind::LoadBalancer => "load-balancer IP",
                    FrontendKind::NodePort => "NodePort",
                };
                write!(
                    f,
                    "  {kind:<17} {} port {}",
                    fe.addresses.join(", "),
                    fe.port
                )?;
                if let Some(from) = &fe.from {
                    write!(f, "  [{from}]")?;
                }
                writeln!(f)?;
            }
            writeln!(f, "  ClusterIP traffic -> {}", p.internal_traffic)?;
            if let Some(e) = p.external_traffic {
                writeln!(f, "  external traffic  -> {e}")?;
            }
            let mut pol = Vec::new();
            if p.internal_traffic_policy_local {
                pol.push("internalTrafficPolicy Local".to_string());
            }
            if p.external_traffic_policy_local {
                pol.push("externalTrafficPolicy Local".to_string());
            }
            if let Some(t) = p.affinity_timeout_seconds {
                pol.push(format!("ClientIP affinity {t} s"));
            }
            if !p.source_ranges.is_empty() {
                pol.push(format!("source ranges {}", list(&p.source_ranges)));
            }
            if let Some(h) = p.health_check_node_port {
                pol.push(format!("health check node port {h}"));
            }
            if !pol.is_empty() {
                writeln!(f, "  policies: {}", pol.join("; "))?;
            }
            if p.endpoints.is_empty() {
                writeln!(f, "  endpoints: none")?;
            }
            for e in &p.endpoints {
                let state = if e.ready {
                    "ready"
                } else if e.serving && e.terminating {
                    "terminating, serving"
                } else if e.terminating {
                    "terminating"
                } else {
                    "not ready"
                };
                let used = match (e.cluster, e.local) {
                    (true, true) => "used for cluster and local traffic",
                    (true, false) => "used for cluster traffic",
                    (false, true) => "used for local traffic",
                    (false, false) => "not used",
                };
                writeln!(
                    f,
                    "  endpoint {:<24} node {:<10} {state}; {used}",
                    sock(e.address, e.port),
                    e.node.as_deref().unwrap_or("-"),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPVS mode differs from nftables mode where kube-proxy's IPVS mode does: eTP Local
    /// with local endpoints gives pods and the node the local endpoints only, and the node's
    /// connection to a VIP is masqueraded; everything else traces the same.
    #[test]
    fn ipvs_mode_differences() {
        let text = include_str!("../../fixtures/cases/etp-local/manifests.yaml");
        let sources = vec![Source {
            name: "m.yaml".into(),
            text: text.into(),
        }];
        let settings = |backend| NodeSettings {
            hostname: "node-a".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            cluster_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            backend,
            ..NodeSettings::default()
        };
        let nft_settings = settings(Mode::Nftables);
        let ipvs_settings = settings(Mode::Ipvs);
        let nft = Model::new(&sources, &nft_settings);
        let ipvs = Model::new(&sources, &ipvs_settings);
        let ir = &ipvs.ir.families[0];
        let sp = &ir.service_ports[0];
        let np = sp
            .frontends
            .iter()
            .find(|f| f.kind == FrontendKind::NodePort)
            .unwrap()
            .port;
        let cip = sp.cluster_ip().unwrap();
        let cport = sp.frontends[0].port;
        let pkt = |src: &str, dst: IpAddr, port| Packet {
            source: src.parse().unwrap(),
            destination: dst,
            port,
            protocol: sp.protocol,
        };
        let node_ip: IpAddr = "192.168.0.2".parse().unwrap();
        let n_backends = |m: &Model, p: &Packet| m.trace(p).backends.len();
        // A pod and the node to the NodePort: nftables short-circuits to every endpoint.
        for src in ["10.0.1.5", "192.168.0.2"] {
            let p = pkt(src, node_ip, np);
            assert_eq!(n_backends(&nft, &p), sp.backends.cluster.len(), "{src}");
            assert_eq!(n_backends(&ipvs, &p), sp.backends.local.len(), "{src}");
        }
        assert!(sp.backends.local.len() < sp.backends.cluster.len());
        // An external client: the same in both.
        let p = pkt("203.0.113.9", node_ip, np);
        assert_eq!(nft.trace(&p).backends, ipvs.trace(&p).backends);
        // The node to the ClusterIP: masqueraded in IPVS mode only (VIP source).
        let p = pkt("192.168.0.2", cip, cport);
        let t = ipvs.trace(&p);
        assert_eq!(t.mode, "ipvs");
        assert!(t.masquerade, "{:?}", t.steps);
        // A pod to the ClusterIP: kept in both.
        let p = pkt("10.0.1.5", cip, cport);
        assert!(!ipvs.trace(&p).masquerade);
        assert!(!nft.trace(&p).masquerade);
    }

    #[test]
    fn nearest_names() {
        let names = vec!["default/web".to_string(), "shop/cart".to_string()];
        assert_eq!(nearest("default/wbe", &names), Some("default/web".into()));
        assert_eq!(nearest("kube-system/dns", &names), None);
    }
}
