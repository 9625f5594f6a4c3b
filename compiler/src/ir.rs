//! The IR between manifests and backends: one [`ServicePort`] per (Service, port, family),
//! already resolved against the node (which endpoints are local, topology, fallbacks).
//!
//! Everything kube-proxy decides per node is decided here, once; the backends (nftables,
//! later iptables) only choose how to express it. Each item keeps its provenance so
//! generated rules can say which object made them.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::family::{Family, L4Proto};

/// The IR of one node: one [`FamilyIr`] per IP family svcc programs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ir {
    pub families: Vec<FamilyIr>,
}

/// Node-wide settings and the service ports of one IP family.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FamilyIr {
    #[serde(serialize_with = "ser_family")]
    pub family: Family,
    /// Where NodePorts are accepted.
    pub node_ports_on: NodePortAddrs,
    /// The node's own addresses of this family (LB source-range "allow from node").
    pub node_ips: Vec<IpAddr>,
    /// Pod CIDRs of the local-traffic detector (`clusterCIDR`); empty = no detector.
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    /// The masquerade mark bit value (1 << masqueradeBit).
    pub masquerade_mark: u32,
    /// Service CIDRs: a destination in them that is not an allocated ClusterIP is dropped.
    pub service_cidrs: Vec<IpNet>,
    /// iptables mode: drop INVALID conntrack packets in the forward chain (kube-proxy's
    /// KUBE-FORWARD, unless `nf_conntrack_tcp_be_liberal`: `conntrack.tcpBeLiberal`).
    /// kube-proxy's nftables mode has no such rule.
    pub drop_ct_invalid: bool,
    /// Sorted by (namespace, name, port name, protocol). Shared: the long-running applier
    /// replaces the few that change and keeps the rest (see `session`).
    pub service_ports: Vec<Arc<ServicePort>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum NodePortAddrs {
    /// Every local address except loopback (`fib daddr type local`).
    AllLocal,
    /// Only these addresses (may be empty: NodePorts disabled for this family).
    Addrs(Vec<IpAddr>),
}

/// `namespace/name:port` — kube-proxy's ServicePortName.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name ("" for a single unnamed port).
    pub port: String,
    #[serde(serialize_with = "ser_proto")]
    pub protocol: L4Proto,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Which object and field produced an item.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Provenance {
    pub file: String,
    /// Path of the object inside the file (document index, then list items).
    pub object_path: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

/// One address (or, for NodePorts, any node address) + port where a service port is reached.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Frontend {
    pub kind: FrontendKind,
    /// None for NodePorts (matched against the node's NodePort addresses).
    pub addr: Option<IpAddr>,
    pub port: u16,
}

/// An endpoint as the data plane sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// On this node (endpoint.nodeName == node name).
    pub local: bool,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// kube-proxy's `CategorizeEndpoints` result.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Backends {
    /// Used for traffic with the Cluster policy (ready, else serving+terminating; topology applied).
    pub cluster: Vec<Backend>,
    /// Used for traffic with the Local policy (local ready, else local serving+terminating).
    pub local: Vec<Backend>,
    /// `local` holds the serving+terminating fallback (no local endpoint is ready): health
    /// checks then report no local endpoints, so load balancers drain the node.
    pub local_fallback: bool,
    /// Any usable endpoint anywhere (decides REJECT vs DROP).
    pub has_any: bool,
    /// Every serving endpoint, for stale-conntrack cleanup.
    pub serving: Vec<Backend>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Policy {
    /// externalTrafficPolicy: Local
    pub external_local: bool,
    /// internalTrafficPolicy: Local
    pub internal_local: bool,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// loadBalancerSourceRanges (this family); empty = no firewall.
    pub source_ranges: Vec<IpNet>,
    /// A source range contains a node IP: LB IPs themselves are allowed as sources.
    pub allow_lb_ips_as_source: bool,
    /// `spec.healthCheckNodePort` (eTP Local NodePort/LoadBalancer services): the port on
    /// which `svcc run` answers load-balancer health checks for this service.
    pub health_check_node_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub provenance: Provenance,
    #[serde(serialize_with = "ser_proto")]
    pub protocol: L4Proto,
    pub frontends: Vec<Frontend>,
    pub backends: Backends,
    pub policy: Policy,
}

impl ServicePort {
    pub fn cluster_ip(&self) -> Option<IpAddr> {
        self.frontends
            .iter()
            .find(|f| f.kind == FrontendKind::ClusterIp)
            .and_then(|f| f.addr)
    }
    /// kube-proxy's `ExternallyAccessible`: a NodePort, external IPs or LB IPs.
    pub fn externally_accessible(&self) -> bool {
        self.frontends
            .iter()
            .any(|f| f.kind != FrontendKind::ClusterIp)
    }

    /// Where this port's traffic goes — kube-proxy's per-service decisions in
    /// `syncProxyRules`, made once here for every backend.
    pub fn dispatch(&self) -> Dispatch {
        let b = &self.backends;
        let p = &self.policy;
        let has_endpoints = b.has_any;
        let uses_local = !b.local.is_empty() && (p.internal_local || p.external_local);
        let has_internal = if p.internal_local {
            !b.local.is_empty()
        } else {
            has_endpoints
        };
        let has_external = if p.external_local {
            !b.local.is_empty()
        } else {
            has_endpoints
        };
        let filter = |has: bool| match (has_endpoints, has) {
            (false, _) => Some(FilterVerdict::Reject),
            (true, false) => Some(FilterVerdict::Drop),
            (true, true) => None,
        };
        let chain = |local: bool| {
            if local {
                PolicyChain::Local
            } else {
                PolicyChain::Cluster
            }
        };
        Dispatch {
            has_endpoints,
            uses_cluster: !b.cluster.is_empty(),
            uses_local,
            internal: has_internal.then_some(chain(p.internal_local)),
            external: has_external.then_some(chain(p.external_local)),
            uses_external_chain: has_endpoints && self.externally_accessible(),
            internal_filter: filter(has_internal),
            external_filter: filter(has_external),
        }
    }
}

/// Which endpoint set a policy sends traffic to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChain {
    Cluster,
    Local,
}

/// What the filter hooks do with traffic that has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterVerdict {
    /// No endpoints at all.
    Reject,
    /// A Local policy without local endpoints.
    Drop,
}

/// A service port's traffic plan (see [`ServicePort::dispatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    /// Any usable endpoint anywhere.
    pub has_endpoints: bool,
    /// A chain picking among `backends.cluster` exists.
    pub uses_cluster: bool,
    /// A chain picking among `backends.local` exists.
    pub uses_local: bool,
    /// Where ClusterIP traffic goes (None: nowhere, see `internal_filter`).
    pub internal: Option<PolicyChain>,
    /// Where external traffic goes after the external chain (None: it falls through).
    pub external: Option<PolicyChain>,
    /// NodePort / external IP / LB traffic goes through an external chain.
    pub uses_external_chain: bool,
    /// REJECT or DROP for ClusterIP traffic with nowhere to go.
    pub internal_filter: Option<FilterVerdict>,
    /// REJECT or DROP for external traffic with nowhere to go.
    pub external_filter: Option<FilterVerdict>,
}

fn ser_family<S: serde::Serializer>(f: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.keyword())
}
fn ser_proto<S: serde::Serializer>(p: &L4Proto, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.keyword())
}
