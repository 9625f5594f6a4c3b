//! Typed objects cut down to what `lower` reads, as soon as each one is parsed.
//!
//! A k8s-openapi object holds every field of the API, most of them never read here
//! (selectors, annotations, managedFields, targetRefs, a Node's status …), and serde grows
//! each `Vec` by doubling. Parsed objects are the biggest thing alive while a cluster is
//! lowered, so each one keeps only the fields `lower` reads, in exactly sized `Vec`s.
//!
//! Keep this list in step with `lower.rs`: a field read there must be kept here. The test
//! `compacting_changes_nothing` lowers every fixture with and without this step and
//! compares the IR, the diagnostics and the notes.
//!
//! The objects were fully deserialized first, so a type error anywhere in an object is
//! still reported; only the values of unread fields are dropped.

use k8s_openapi::api::core::v1::{
    ClientIPConfig, EndpointAddress, EndpointPort as LegacyPort, EndpointSubset, Endpoints,
    LoadBalancerIngress, LoadBalancerStatus, Node, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{EndpointHints, EndpointPort};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Object, Slice, SliceEndpoint};

/// Drops what `lower` never reads; exactly sizes what it keeps.
pub(super) fn compact(o: &mut Object) {
    match o {
        Object::Service(s) => service(s),
        Object::EndpointSlice(s) => slice(s),
        Object::Endpoints(e) => endpoints(e),
        Object::ServiceCidr(c) => service_cidr(c),
        Object::Node(n) => node(n),
    }
}

/// name, namespace, labels (the zone of a Node, the Service of an EndpointSlice).
fn meta(m: &mut ObjectMeta) {
    let ObjectMeta {
        name,
        namespace,
        labels,
        ..
    } = std::mem::take(m);
    *m = ObjectMeta {
        name,
        namespace,
        labels,
        ..ObjectMeta::default()
    };
}

/// `v` in an exactly sized allocation. A copy, not `shrink_to_fit`: allocators keep a block
/// in place when it shrinks by less than half, which would keep the spare capacity.
fn exact_vec<T>(v: Vec<T>) -> Vec<T> {
    if v.capacity() == v.len() {
        return v;
    }
    let mut out = Vec::with_capacity(v.len());
    out.extend(v);
    out
}

fn exact<T>(v: &mut Option<Vec<T>>) {
    if let Some(x) = v.take() {
        *v = Some(exact_vec(x));
    }
}

/// `v` mapped by `f`, exactly sized.
fn map<T, U>(v: Vec<T>, f: impl FnMut(T) -> U) -> Vec<U> {
    let mut out = Vec::with_capacity(v.len());
    out.extend(v.into_iter().map(f));
    out
}

fn service(s: &mut Service) {
    meta(&mut s.metadata);
    if let Some(spec) = s.spec.take() {
        let ServiceSpec {
            cluster_ip,
            mut cluster_ips,
            mut external_ips,
            external_name,
            external_traffic_policy,
            health_check_node_port,
            internal_traffic_policy,
            mut ip_families,
            ip_family_policy,
            mut load_balancer_source_ranges,
            ports,
            mut selector,
            session_affinity,
            session_affinity_config,
            type_,
            ..
        } = spec;
        // `svcc explain` says whether a Service is selector-less: an empty map keeps that.
        if let Some(sel) = &mut selector {
            sel.clear();
        }
        exact(&mut cluster_ips);
        exact(&mut external_ips);
        exact(&mut ip_families);
        exact(&mut load_balancer_source_ranges);
        s.spec = Some(ServiceSpec {
            cluster_ip,
            cluster_ips,
            external_ips,
            external_name,
            external_traffic_policy,
            health_check_node_port,
            internal_traffic_policy,
            ip_families,
            ip_family_policy,
            load_balancer_source_ranges,
            ports: ports.map(|ports| {
                map(ports, |p| ServicePort {
                    name: p.name,
                    node_port: p.node_port,
                    port: p.port,
                    protocol: p.protocol,
                    ..ServicePort::default()
                })
            }),
            selector,
            session_affinity,
            session_affinity_config: session_affinity_config.map(|c| SessionAffinityConfig {
                client_ip: c.client_ip.map(|c| ClientIPConfig {
                    timeout_seconds: c.timeout_seconds,
                }),
            }),
            type_,
            ..ServiceSpec::default()
        });
    }
    let ingress = s
        .status
        .take()
        .and_then(|st| st.load_balancer)
        .and_then(|lb| lb.ingress);
    if let Some(ingress) = ingress {
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(map(ingress, |i| LoadBalancerIngress {
                    ip: i.ip,
                    ip_mode: i.ip_mode,
                    ..LoadBalancerIngress::default()
                })),
            }),
            ..ServiceStatus::default()
        });
    }
}

/// (A [`Slice`] holds only what `lower` reads already: its `Vec`s are sized exactly here.)
fn slice(s: &mut Slice) {
    meta(&mut s.metadata);
    s.endpoints = map(std::mem::take(&mut s.endpoints), |e| SliceEndpoint {
        addresses: exact_vec(e.addresses),
        hints: e.hints.map(|h| {
            Box::new(EndpointHints {
                for_nodes: h.for_nodes.map(exact_vec),
                for_zones: h.for_zones.map(exact_vec),
            })
        }),
        ..e
    });
    if let Some(ports) = s.ports.take() {
        s.ports = Some(map(ports, |p| EndpointPort {
            name: p.name,
            port: p.port,
            protocol: p.protocol,
            ..EndpointPort::default()
        }));
    }
}

fn endpoints(e: &mut Endpoints) {
    meta(&mut e.metadata);
    let addrs = |a: Option<Vec<EndpointAddress>>| {
        a.map(|a| {
            map(a, |a| EndpointAddress {
                ip: a.ip,
                node_name: a.node_name,
                ..EndpointAddress::default()
            })
        })
    };
    if let Some(subsets) = e.subsets.take() {
        e.subsets = Some(map(subsets, |s| EndpointSubset {
            addresses: addrs(s.addresses),
            not_ready_addresses: addrs(s.not_ready_addresses),
            ports: s.ports.map(|p| {
                map(p, |p| LegacyPort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    ..LegacyPort::default()
                })
            }),
        }));
    }
}

fn service_cidr(c: &mut ServiceCIDR) {
    meta(&mut c.metadata);
    c.status = None;
    if let Some(spec) = &mut c.spec {
        let ServiceCIDRSpec { mut cidrs } = std::mem::take(spec);
        exact(&mut cidrs);
        *spec = ServiceCIDRSpec { cidrs };
    }
}

fn node(n: &mut Node) {
    meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::{parse_sources_with, Object, Source};
    use crate::config::{parse_cidrs, parse_nodeport_addresses, NodeSettings};
    use crate::lower;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
    }

    fn manifests(dir: &Path) -> Vec<Source> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                (n.ends_with(".yaml") || n.ends_with(".json"))
                    && n != "case.yaml"
                    && n != "kube-proxy.yaml"
            })
            .collect();
        files.sort();
        // Files of fixtures/bad/ that are not UTF-8 have nothing to compact.
        files
            .iter()
            .filter(|p| std::str::from_utf8(&std::fs::read(p).unwrap()).is_ok())
            .map(|p| source(p))
            .collect()
    }

    fn source(p: &Path) -> Source {
        Source {
            name: p.display().to_string(),
            text: std::fs::read_to_string(p).unwrap(),
        }
    }

    /// The node of a fixture case (`case.yaml`), as `tests/common/case.rs` reads it.
    fn node(dir: &Path) -> NodeSettings {
        let mut s = NodeSettings {
            hostname: "node-a".into(),
            ..NodeSettings::default()
        };
        let Ok(text) = std::fs::read_to_string(dir.join("case.yaml")) else {
            s.node_ips = vec!["192.168.0.2".parse().unwrap()];
            return s;
        };
        let case: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let node = &case["node"];
        let list = |k: &str| -> Vec<String> {
            node[k]
                .as_sequence()
                .map(|v| v.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        if let Some(n) = node["name"].as_str() {
            s.hostname = n.into();
        }
        s.node_ips = list("ips").iter().map(|a| a.parse().unwrap()).collect();
        s.cluster_cidrs = parse_cidrs(&list("clusterCidr")).unwrap();
        s.service_cidrs = parse_cidrs(&list("serviceCidr")).unwrap();
        s.masquerade_all = node["masqueradeAll"].as_bool().unwrap_or(false);
        let npa = list("nodePortAddresses");
        if !npa.is_empty() {
            s.nodeport_addresses = parse_nodeport_addresses(&npa).unwrap();
        }
        s
    }

    /// What `lower` makes of the sources: IR, diagnostics, notes, skipped objects.
    fn lowered(sources: &[Source], settings: &NodeSettings, full: bool) -> String {
        let mut diags = Vec::new();
        let mut notes = Vec::new();
        let parsed = parse_sources_with(sources, &mut diags, full);
        let ir = lower::lower(&parsed, settings, &mut diags, &mut notes);
        format!(
            "{}\n{diags:#?}\n{notes:#?}\n{:#?}",
            serde_json::to_string_pretty(&ir).unwrap(),
            parsed.skipped
        )
    }

    /// Every field of every kind svcc reads, and the usual unread ones kubectl prints.
    const RICH: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: shop
    labels: {app: web}
    annotations: {note: "x"}
    uid: 1f0c
    resourceVersion: "42"
    managedFields:
    - {manager: kubectl, operation: Update, apiVersion: v1}
  spec:
    type: LoadBalancer
    selector: {app: web}
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:96::10"]
    ipFamilies: [IPv4, IPv6]
    ipFamilyPolicy: PreferDualStack
    externalIPs: [192.0.2.10, "2001:db8::10"]
    externalTrafficPolicy: Local
    internalTrafficPolicy: Local
    healthCheckNodePort: 32000
    loadBalancerSourceRanges: [198.51.100.0/24, "2001:db8:1::/48"]
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
    allocateLoadBalancerNodePorts: true
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: web, nodePort: 30080, appProtocol: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
  status:
    loadBalancer:
      ingress:
      - {ip: 203.0.113.10, ipMode: VIP, hostname: lb.example, ports: [{port: 80, protocol: TCP}]}
      - {ip: 203.0.113.11, ipMode: Proxy}
    conditions:
    - {type: Ready, status: "True", reason: ok, message: ok, lastTransitionTime: "2024-01-01T00:00:00Z"}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-abc
    namespace: shop
    labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: x}
    ownerReferences:
    - {apiVersion: v1, kind: Service, name: web, uid: 1f0c}
  addressType: IPv4
  endpoints:
  - addresses: [10.0.1.5]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-a
    zone: zone-a
    hostname: web-0
    hints: {forZones: [{name: zone-a}], forNodes: [{name: node-a}]}
    targetRef: {kind: Pod, name: web-0, namespace: shop, uid: 9e1}
  - addresses: [10.0.2.5]
    conditions: {ready: false, serving: true, terminating: true}
    nodeName: node-b
    zone: zone-b
    hints: {forZones: [{name: zone-a}]}
    deprecatedTopology: {a: b}
  ports:
  - {name: http, port: 8080, protocol: TCP, appProtocol: http}
  - {name: dns, port: 5353, protocol: UDP}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-v6
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv6
  endpoints:
  - addresses: ["fd00:10::5"]
    conditions: {ready: true}
    nodeName: node-a
  ports:
  - {name: http, port: 8080, protocol: TCP}
- apiVersion: v1
  kind: Service
  metadata: {name: old, namespace: shop}
  spec:
    clusterIP: 10.96.0.11
    ports: [{name: a, port: 81, protocol: TCP}]
- apiVersion: v1
  kind: Endpoints
  metadata: {name: old, namespace: shop, annotations: {x: y}}
  subsets:
  - addresses:
    - {ip: 10.0.3.5, nodeName: node-a, hostname: h, targetRef: {kind: Pod, name: p}}
    notReadyAddresses:
    - {ip: 10.0.3.6, nodeName: node-b}
    ports:
    - {name: a, port: 9090, protocol: TCP, appProtocol: x}
- apiVersion: v1
  kind: Node
  metadata:
    name: node-a
    labels: {topology.kubernetes.io/zone: zone-a, kubernetes.io/hostname: node-a}
  spec: {podCIDR: 10.0.1.0/24, podCIDRs: [10.0.1.0/24]}
  status:
    addresses: [{type: InternalIP, address: 192.168.0.2}]
    images: [{names: [registry/image:1], sizeBytes: 1000}]
- apiVersion: networking.k8s.io/v1
  kind: ServiceCIDR
  metadata: {name: kubernetes}
  spec: {cidrs: [10.96.0.0/16, "fd00:96::/112"]}
  status: {conditions: [{type: Ready, status: "True", reason: ok, message: ok, lastTransitionTime: "2024-01-01T00:00:00Z"}]}
"#;

    #[test]
    fn compacting_changes_nothing() {
        let mut inputs: Vec<(String, Vec<Source>, NodeSettings)> = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures().join("cases"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        dirs.push(fixtures().join("example"));
        for d in dirs {
            let settings = node(&d);
            inputs.push((d.display().to_string(), manifests(&d), settings));
        }
        for s in manifests(&fixtures().join("bad")) {
            let settings = node(Path::new("/nonexistent"));
            inputs.push((s.name.clone(), vec![s], settings));
        }
        let rich = Source {
            name: "rich.yaml".into(),
            text: RICH.into(),
        };
        for (hostname, ips) in [("node-a", "192.168.0.2,fd00::2"), ("node-b", "")] {
            let settings = NodeSettings {
                hostname: hostname.into(),
                node_ips: ips
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(|a| a.parse().unwrap())
                    .collect(),
                ..NodeSettings::default()
            };
            inputs.push((format!("rich {hostname}"), vec![rich.clone()], settings));
        }
        assert!(inputs.len() > 40);
        for (name, sources, settings) in &inputs {
            assert_eq!(
                lowered(sources, settings, false),
                lowered(sources, settings, true),
                "{name}: compacting the objects changed what lower makes of them"
            );
        }
    }

    #[test]
    fn unread_fields_are_dropped() {
        let rich = Source {
            name: "rich.yaml".into(),
            text: RICH.into(),
        };
        let parsed = parse_sources_with(std::slice::from_ref(&rich), &mut Vec::new(), false);
        assert_eq!(parsed.objects.len(), 7);
        for (_, o) in &parsed.objects {
            match o {
                Object::Service(s) => {
                    assert!(s.metadata.annotations.is_none() && s.metadata.uid.is_none());
                    assert!(s.metadata.managed_fields.is_none());
                    let spec = s.spec.as_ref().unwrap();
                    // The selector's presence is kept (`svcc explain`), not its labels.
                    assert!(spec.selector.as_ref().is_none_or(|s| s.is_empty()));
                    assert!(spec.allocate_load_balancer_node_ports.is_none());
                    assert!(spec.ports.iter().flatten().all(|p| p.target_port.is_none()));
                }
                Object::EndpointSlice(s) => {
                    assert!(s.metadata.owner_references.is_none());
                    assert_eq!(s.endpoints.capacity(), s.endpoints.len());
                }
                Object::Endpoints(e) => assert!(e
                    .subsets
                    .iter()
                    .flatten()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .all(|a| a.target_ref.is_none() && a.hostname.is_none())),
                Object::Node(n) => {
                    assert!(n.spec.is_none() && n.status.is_none());
                    assert!(n.metadata.labels.is_some());
                }
                Object::ServiceCidr(c) => assert!(c.status.is_none()),
            }
        }
    }
}
