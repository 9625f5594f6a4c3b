//! Structured inputs for the compile fuzz target (`fuzz/fuzz_targets/compile.rs`) and the
//! property test (`tests/property.rs`): a node's settings plus Services, EndpointSlices and
//! Nodes of realistic shape, drawn from `arbitrary` bytes and written as manifest text the
//! way kubectl prints it (k8s-openapi objects → YAML documents, a JSON `List`, a YAML `List`
//! or one file per object). Both users include this file with `#[path]`; it has no state.
//!
//! Shapes: IPv4/IPv6/dual-stack nodes and Services, ClusterIP/NodePort/LoadBalancer (and the
//! odd headless/ExternalName), TCP/UDP/SCTP ports, named and numeric target ports, external
//! and LB ingress IPs (ipMode VIP/Proxy), source ranges, traffic policies, ClientIP affinity,
//! endpoint conditions, node names, zones and hints. Addresses come from small pools per
//! family, indexed by the Service, so most inputs are valid; the pools overlap just enough
//! (shared external IPs, a wrong-family address, a port 0) to reach the error paths too.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use arbitrary::{Arbitrary, Result, Unstructured};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeSpec, Service, ServicePort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svcc_compiler::config::parse_cidr;
use svcc_compiler::{Backend, NodePortAddresses, NodeSettings, Source};

pub const MAX_SERVICES: usize = 6;
const MAX_PORTS: usize = 3;
const MAX_SLICES: usize = 2;
const MAX_ENDPOINTS: usize = 4;

/// How many of an array's items are used: `arbitrary`'s own Vec lengths are short (each item
/// costs a continue byte), so the counts are explicit, 0 rarely.
fn count(n: u8, max: usize) -> usize {
    match n {
        0..16 => 0,
        k => 1 + k as usize % max,
    }
}

/// A generated input: the node's settings and the manifest files.
#[derive(Debug, Clone)]
pub struct Case {
    pub settings: NodeSettings,
    pub sources: Vec<Source>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum NodeFams {
    V4,
    V6,
    Dual,
    DualV6First,
    /// No --node-ip: the families follow the Services.
    None,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Npa {
    Unset,
    Primary,
    NodeNet,
    Loopback,
    Mixed,
}

#[derive(Arbitrary, Debug)]
struct NodeGen {
    fams: NodeFams,
    hostname: u8,
    cluster_cidr: bool,
    masquerade_all: bool,
    masquerade_bit: u8,
    npa: Npa,
    service_cidr: bool,
    /// Emit Node objects (with zones, for topology hints).
    nodes: bool,
    iptables: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SvcType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    Headless,
    ExternalName,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SvcFams {
    V4,
    V6,
    V4V6,
    V6V4,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    Unset,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PortNum {
    P80,
    P443,
    P53,
    P8080,
    Any(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Same,
    Num(u16),
    Named,
    Unset,
}

#[derive(Arbitrary, Debug)]
struct PortGen {
    proto: Proto,
    port: PortNum,
    target: Target,
    /// A node port other than the one the Service's index gives (clashes, 0, out of range).
    node_port: Option<u16>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Policy {
    Unset,
    Cluster,
    Local,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IpMode {
    Unset,
    Vip,
    Proxy,
}

#[derive(Arbitrary, Debug)]
struct SvcGen {
    ns: u8,
    ty: u8,
    fams: SvcFams,
    /// Last octet / group of the ClusterIP(s).
    host: u8,
    n_ports: u8,
    ports: [PortGen; MAX_PORTS],
    /// Indexes into a small pool (collisions between Services are possible).
    external_ips: Vec<u8>,
    ingress: Vec<(u8, IpMode)>,
    source_ranges: Vec<u8>,
    etp: Policy,
    itp: Policy,
    affinity: Option<Option<u16>>,
    selector: bool,
    n_slices: u8,
    slices: [SliceGen; MAX_SLICES],
}

#[derive(Arbitrary, Debug)]
struct SliceGen {
    /// The family of the Service's `k`-th slice is its `k % n`-th; under 32, the other one.
    fam: u8,
    /// The slice's ports: the Service's (half the time), or not quite (`SlicePorts::of`).
    ports: u8,
    n_endpoints: u8,
    endpoints: [EpGen; MAX_ENDPOINTS],
    /// Under 32: label it for another Service (maybe one that does not exist).
    label: u8,
}

#[derive(Debug, Clone, Copy)]
enum SlicePorts {
    Match,
    Reversed,
    FirstOnly,
    Unnamed,
    None,
}

impl SlicePorts {
    fn of(n: u8) -> SlicePorts {
        match n % 8 {
            0 => SlicePorts::Reversed,
            1 => SlicePorts::FirstOnly,
            2 => SlicePorts::Unnamed,
            3 => SlicePorts::None,
            _ => SlicePorts::Match,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct EpGen {
    host: u8,
    /// 255: an address of the other family (invalid in this slice).
    wrong_family: u8,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node: u8,
    zone: Option<u8>,
    hint: Option<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Layout {
    YamlDocs,
    JsonList,
    YamlList,
    FilePerObject,
}

#[derive(Arbitrary, Debug)]
struct CaseGen {
    node: NodeGen,
    n_services: u8,
    services: [SvcGen; MAX_SERVICES],
    layout: Layout,
}

const NAMESPACES: [&str; 4] = [
    "default",
    "kube-system",
    "team-a",
    "a-rather-long-namespace-name-of-exactly-sixty-three-characters-x",
];
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const ZONES: [&str; 2] = ["zone-1", "zone-2"];

fn node_ip(f: Fam) -> IpAddr {
    match f {
        Fam::V4 => "192.168.0.2".parse().unwrap(),
        Fam::V6 => "fd00::2".parse().unwrap(),
    }
}

fn cluster_ip(f: Fam, i: usize, host: u8) -> String {
    match f {
        Fam::V4 => format!("172.30.{i}.{host}"),
        Fam::V6 => format!("fd00:30::{i}:{host:x}"),
    }
}

/// Pools of four addresses (external IPs: 0, LB ingress: 1): collisions between Services
/// happen, but not all the time.
fn pool_ip(f: Fam, pool: u8, k: u8) -> String {
    match f {
        Fam::V4 => format!(
            "{}.{}",
            ["192.0.2", "198.51.100"][pool as usize],
            10 + k % 4
        ),
        Fam::V6 => format!("2001:db8:{pool:x}::{:x}", 10 + k % 4),
    }
}

fn pod_ip(f: Fam, node: usize, host: u8) -> String {
    match f {
        Fam::V4 => format!("10.0.{node}.{host}"),
        Fam::V6 => format!("fd00:10::{node}:{host:x}"),
    }
}

fn source_range(k: u8) -> &'static str {
    [
        "203.0.113.0/24",
        "0.0.0.0/0",
        "192.168.0.0/24",
        "2001:db8:5::/48",
        "::/0",
        "10.0.0.0/8",
    ][k as usize % 6]
}

fn svc_fams(f: SvcFams) -> Vec<Fam> {
    match f {
        SvcFams::V4 => vec![Fam::V4],
        SvcFams::V6 => vec![Fam::V6],
        SvcFams::V4V6 => vec![Fam::V4, Fam::V6],
        SvcFams::V6V4 => vec![Fam::V6, Fam::V4],
    }
}

fn fam_name(f: Fam) -> &'static str {
    match f {
        Fam::V4 => "IPv4",
        Fam::V6 => "IPv6",
    }
}

fn proto_name(p: Proto) -> Option<String> {
    match p {
        Proto::Tcp => Some("TCP".into()),
        Proto::Udp => Some("UDP".into()),
        Proto::Sctp => Some("SCTP".into()),
        Proto::Unset => None,
    }
}

fn policy(p: Policy) -> Option<String> {
    match p {
        Policy::Unset => None,
        Policy::Cluster => Some("Cluster".into()),
        Policy::Local => Some("Local".into()),
    }
}

fn port_num(p: PortNum) -> i32 {
    match p {
        PortNum::P80 => 80,
        PortNum::P443 => 443,
        PortNum::P53 => 53,
        PortNum::P8080 => 8080,
        PortNum::Any(n) => i32::from(n),
    }
}

/// The port an endpoint listens on for service port `j` (what targetPort resolves to).
fn endpoint_port(p: &PortGen, j: usize) -> i32 {
    match p.target {
        Target::Num(n) => i32::from(n),
        Target::Same | Target::Unset => port_num(p.port),
        Target::Named => 9000 + j as i32,
    }
}

fn meta(ns: &str, name: String, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_string()),
        labels,
        ..Default::default()
    }
}

impl SvcType {
    /// Mostly the three proxied types; headless and ExternalName (not proxied) 1 in 16 each.
    fn of(n: u8) -> SvcType {
        match n % 16 {
            0 => SvcType::Headless,
            1 => SvcType::ExternalName,
            2..=6 => SvcType::ClusterIp,
            7..=11 => SvcType::NodePort,
            _ => SvcType::LoadBalancer,
        }
    }
}

fn service(i: usize, g: &SvcGen) -> (String, Service) {
    let ty = SvcType::of(g.ty);
    let ns = NAMESPACES[g.ns as usize % NAMESPACES.len()];
    let name = format!("svc-{i}");
    let fams = svc_fams(g.fams);
    let mut spec = ServiceSpec {
        ip_families: Some(fams.iter().map(|f| fam_name(*f).to_string()).collect()),
        ip_family_policy: Some(
            if fams.len() == 2 {
                "RequireDualStack"
            } else {
                "SingleStack"
            }
            .into(),
        ),
        ..Default::default()
    };
    let ips: Vec<String> = fams.iter().map(|f| cluster_ip(*f, i, g.host)).collect();
    match ty {
        SvcType::Headless => {
            spec.cluster_ip = Some("None".into());
            spec.cluster_ips = Some(vec!["None".into()]);
        }
        SvcType::ExternalName => {
            spec.type_ = Some("ExternalName".into());
            spec.external_name = Some("example.com".into());
        }
        _ => {
            spec.cluster_ip = Some(ips[0].clone());
            spec.cluster_ips = Some(ips);
        }
    }
    spec.type_ = Some(
        match ty {
            SvcType::ClusterIp | SvcType::Headless => "ClusterIP",
            SvcType::NodePort => "NodePort",
            SvcType::LoadBalancer => "LoadBalancer",
            SvcType::ExternalName => "ExternalName",
        }
        .into(),
    );
    let ports: Vec<ServicePort> = g
        .ports
        .iter()
        .take(count(g.n_ports, MAX_PORTS))
        .enumerate()
        .map(|(j, p)| ServicePort {
            name: (count(g.n_ports, MAX_PORTS) > 1 || j % 2 == 1).then(|| format!("p{j}")),
            protocol: proto_name(p.proto),
            port: port_num(p.port),
            target_port: match p.target {
                Target::Unset => None,
                Target::Same => Some(IntOrString::Int(port_num(p.port))),
                Target::Num(n) => Some(IntOrString::Int(i32::from(n))),
                Target::Named => Some(IntOrString::String(format!("tp{j}"))),
            },
            node_port: matches!(ty, SvcType::NodePort | SvcType::LoadBalancer).then(|| {
                p.node_port
                    .map(i32::from)
                    .unwrap_or(30000 + (i * MAX_PORTS + j) as i32)
            }),
            ..Default::default()
        })
        .collect();
    spec.ports = Some(ports);
    if !g.external_ips.is_empty() {
        spec.external_ips = Some(
            g.external_ips
                .iter()
                .take(2)
                .enumerate()
                .map(|(k, x)| pool_ip(fams[k % fams.len()], 0, *x))
                .collect(),
        );
    }
    if !g.source_ranges.is_empty() {
        spec.load_balancer_source_ranges = Some(
            g.source_ranges
                .iter()
                .take(2)
                .map(|k| source_range(*k).to_string())
                .collect(),
        );
    }
    spec.external_traffic_policy = policy(g.etp);
    spec.internal_traffic_policy = policy(g.itp);
    if let Some(t) = g.affinity {
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = t.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(i32::from(t)),
            }),
        });
    }
    if g.selector {
        spec.selector = Some(BTreeMap::from([("app".to_string(), name.clone())]));
    }
    let status = (ty == SvcType::LoadBalancer && !g.ingress.is_empty()).then(|| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                g.ingress
                    .iter()
                    .take(2)
                    .enumerate()
                    .map(|(k, (x, mode))| LoadBalancerIngress {
                        ip: Some(pool_ip(fams[k % fams.len()], 1, *x)),
                        ip_mode: match mode {
                            IpMode::Unset => None,
                            IpMode::Vip => Some("VIP".into()),
                            IpMode::Proxy => Some("Proxy".into()),
                        },
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    });
    let svc = Service {
        metadata: meta(ns, name.clone(), None),
        spec: Some(spec),
        status,
    };
    (ns.to_string(), svc)
}

fn other(f: Fam) -> Fam {
    match f {
        Fam::V4 => Fam::V6,
        Fam::V6 => Fam::V4,
    }
}

fn slices(i: usize, ns: &str, g: &SvcGen, n_services: usize) -> Vec<EndpointSlice> {
    let fams = svc_fams(g.fams);
    let ports: Vec<&PortGen> = g.ports.iter().take(count(g.n_ports, MAX_PORTS)).collect();
    let multi = ports.len() > 1;
    g.slices
        .iter()
        .take(count(g.n_slices, MAX_SLICES))
        .enumerate()
        .map(|(k, s)| {
            let mut slice_fam = fams[k % fams.len()];
            if s.fam < 32 {
                slice_fam = other(slice_fam);
            }
            let owner = match s.label {
                32.. => format!("svc-{i}"),
                x => format!("svc-{}", x as usize % (n_services + 1)),
            };
            let port = |j: usize, p: &PortGen| EndpointPort {
                name: (multi || j % 2 == 1).then(|| format!("p{j}")),
                port: Some(endpoint_port(p, j)),
                protocol: proto_name(p.proto),
                ..Default::default()
            };
            let eports: Option<Vec<EndpointPort>> = match SlicePorts::of(s.ports) {
                SlicePorts::Match => {
                    Some(ports.iter().enumerate().map(|(j, p)| port(j, p)).collect())
                }
                SlicePorts::Reversed => Some(
                    ports
                        .iter()
                        .enumerate()
                        .rev()
                        .map(|(j, p)| port(j, p))
                        .collect(),
                ),
                SlicePorts::FirstOnly => Some(
                    ports
                        .iter()
                        .take(1)
                        .enumerate()
                        .map(|(j, p)| port(j, p))
                        .collect(),
                ),
                SlicePorts::Unnamed => Some(
                    ports
                        .iter()
                        .enumerate()
                        .map(|(j, p)| EndpointPort {
                            name: None,
                            ..port(j, p)
                        })
                        .collect(),
                ),
                SlicePorts::None => None,
            };
            let endpoints = s
                .endpoints
                .iter()
                .take(count(s.n_endpoints, MAX_ENDPOINTS))
                .map(|e| {
                    let node = e.node as usize % NODES.len();
                    let fam = match (slice_fam, e.wrong_family == 255) {
                        (f, false) => f,
                        (f, true) => other(f),
                    };
                    Endpoint {
                        addresses: vec![pod_ip(fam, node, e.host)],
                        conditions: Some(EndpointConditions {
                            ready: e.ready,
                            serving: e.serving,
                            terminating: e.terminating,
                        }),
                        node_name: Some(NODES[node].to_string()),
                        zone: e.zone.map(|z| ZONES[z as usize % ZONES.len()].to_string()),
                        hints: e.hint.map(|z| EndpointHints {
                            for_zones: Some(vec![ForZone {
                                name: ZONES[z as usize % ZONES.len()].to_string(),
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                })
                .collect();
            EndpointSlice {
                metadata: meta(
                    ns,
                    format!("svc-{i}-{k}"),
                    Some(BTreeMap::from([(
                        "kubernetes.io/service-name".to_string(),
                        owner,
                    )])),
                ),
                address_type: fam_name(slice_fam).into(),
                endpoints,
                ports: eports,
            }
        })
        .collect()
}

fn node_object(k: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(NODES[k].to_string()),
            labels: Some(BTreeMap::from([(
                "topology.kubernetes.io/zone".to_string(),
                ZONES[k % ZONES.len()].to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: None,
    }
}

fn settings(g: &NodeGen) -> NodeSettings {
    let fams: Vec<Fam> = match g.fams {
        NodeFams::V4 => vec![Fam::V4],
        NodeFams::V6 => vec![Fam::V6],
        NodeFams::Dual => vec![Fam::V4, Fam::V6],
        NodeFams::DualV6First => vec![Fam::V6, Fam::V4],
        NodeFams::None => vec![],
    };
    let both = [Fam::V4, Fam::V6];
    let cidr_fams: &[Fam] = if fams.is_empty() { &both } else { &fams };
    let net = |f: &Fam, v4: &str, v6: &str| {
        parse_cidr(match f {
            Fam::V4 => v4,
            Fam::V6 => v6,
        })
        .unwrap()
    };
    NodeSettings {
        hostname: NODES[g.hostname as usize % NODES.len()].to_string(),
        node_ips: fams.iter().map(|f| node_ip(*f)).collect(),
        cluster_cidrs: if g.cluster_cidr {
            cidr_fams
                .iter()
                .map(|f| net(f, "10.0.0.0/16", "fd00:10::/64"))
                .collect()
        } else {
            Vec::new()
        },
        masquerade_all: g.masquerade_all,
        masquerade_bit: g.masquerade_bit % 32,
        nodeport_addresses: match g.npa {
            Npa::Unset => NodePortAddresses::Unset,
            Npa::Primary => NodePortAddresses::Primary,
            Npa::NodeNet => NodePortAddresses::Cidrs(
                cidr_fams
                    .iter()
                    .map(|f| net(f, "192.168.0.0/24", "fd00::/64"))
                    .collect(),
            ),
            Npa::Loopback => NodePortAddresses::Cidrs(vec![parse_cidr("127.0.0.0/8").unwrap()]),
            Npa::Mixed => NodePortAddresses::Cidrs(vec![
                parse_cidr("192.168.0.2/32").unwrap(),
                parse_cidr("2001:db8:ff::/64").unwrap(),
            ]),
        },
        service_cidrs: if g.service_cidr {
            cidr_fams
                .iter()
                .map(|f| net(f, "172.30.0.0/16", "fd00:30::/64"))
                .collect()
        } else {
            Vec::new()
        },
        backend: if g.iptables {
            Backend::Iptables
        } else {
            Backend::Nftables
        },
        ..NodeSettings::default()
    }
}

/// Draws a case from the bytes; `Err` only when they run out in a way `arbitrary` refuses.
pub fn case(u: &mut Unstructured) -> Result<Case> {
    let g = CaseGen::arbitrary(u)?;
    Ok(build(&g))
}

fn build(g: &CaseGen) -> Case {
    let n = count(g.n_services, MAX_SERVICES);
    let mut objects: Vec<(String, serde_json::Value)> = Vec::new();
    if g.node.nodes {
        for k in 0..NODES.len() {
            objects.push((
                format!("node-{k}"),
                serde_json::to_value(node_object(k)).unwrap(),
            ));
        }
    }
    for (i, s) in g.services.iter().take(n).enumerate() {
        let (ns, svc) = service(i, s);
        objects.push((format!("svc-{i}"), serde_json::to_value(svc).unwrap()));
        for (k, sl) in slices(i, &ns, s, n).into_iter().enumerate() {
            objects.push((format!("svc-{i}-{k}"), serde_json::to_value(sl).unwrap()));
        }
    }
    let sources = match g.layout {
        Layout::YamlDocs => {
            let mut text = String::new();
            for (_, o) in &objects {
                text.push_str("---\n");
                text.push_str(&serde_yaml_ng::to_string(o).unwrap());
            }
            vec![Source {
                name: "cluster.yaml".into(),
                text,
            }]
        }
        Layout::JsonList | Layout::YamlList => {
            let list = serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": ""},
                "items": objects.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
            });
            let (name, text) = if matches!(g.layout, Layout::JsonList) {
                ("cluster.json", serde_json::to_string_pretty(&list).unwrap())
            } else {
                ("cluster.yaml", serde_yaml_ng::to_string(&list).unwrap())
            };
            vec![Source {
                name: name.into(),
                text,
            }]
        }
        Layout::FilePerObject => objects
            .iter()
            .map(|(name, o)| Source {
                name: format!("{name}.json"),
                text: serde_json::to_string(o).unwrap(),
            })
            .collect(),
    };
    Case {
        settings: settings(&g.node),
        sources,
    }
}

/// What [`check`] compiled: the nft script and the iptables-restore input of each family.
#[derive(Debug)]
pub struct Compiled {
    pub nft: String,
    pub iptables: Vec<(svcc_compiler::nft::model::Family, String)>,
    /// Error diagnostics of the objects left out (`--keep-going`).
    pub errors: Vec<String>,
}

/// Compiles `case` (keep-going) and checks what holds for every input: no panic; the same
/// bytes twice, from both writers (nft, iptables); without keep-going an error exactly when
/// keep-going reported one; the nft text parses back with the grammar to the compiled model
/// (up to what the text cannot say: `svcc_grammar`'s documented exceptions).
pub fn check(case: &Case) -> Compiled {
    use svcc_compiler::{compile, CompileOptions};
    let keep_going = CompileOptions { keep_going: true };
    let ipt = |out: &svcc_compiler::Output| -> Vec<_> {
        out.iptables()
            .iter()
            .map(|r| (r.family, r.restore_text()))
            .collect()
    };
    let out = compile(&case.sources, &case.settings, keep_going).expect("keep-going compiles");
    let errors: Vec<String> = out
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    let nft = out.nft_text();
    let iptables = ipt(&out);
    let again = compile(&case.sources, &case.settings, keep_going).expect("keep-going compiles");
    assert_eq!(
        nft,
        again.nft_text(),
        "nft text differs between two compiles"
    );
    assert_eq!(
        iptables,
        ipt(&again),
        "iptables text differs between two compiles"
    );
    let strict = compile(&case.sources, &case.settings, CompileOptions::default());
    assert_eq!(
        strict.is_err(),
        !errors.is_empty(),
        "without keep-going: {:?}; with it, errors {errors:?}",
        strict.as_ref().map(|_| ()).map_err(|e| &e.0)
    );
    let back = svcc_grammar::parse_ruleset(&nft)
        .unwrap_or_else(|e| panic!("the grammar refuses svcc's text: {e}\n{nft}"));
    assert!(
        back == textual(&out.ruleset),
        "parsed back, the nft text is another model:\n{nft}\nparsed: {back:#?}"
    );
    Compiled {
        nft,
        iptables,
        errors,
    }
}

/// The model as its text can say it: comments as `render::quote` writes them, and a one-field
/// address lookup as the address match that prints the same (see `svcc_grammar`'s docs).
fn textual(m: &svcc_compiler::nft::model::Ruleset) -> svcc_compiler::nft::model::Ruleset {
    use svcc_compiler::nft::model::{AddrMatch, Field, Match};
    let mut m = m.clone();
    fn q<S: AsRef<str> + for<'a> From<&'a str>>(c: &mut Option<S>) {
        if let Some(s) = c {
            let t = svcc_compiler::nft::render::quote(s.as_ref());
            *s = S::from(&t[1..t.len() - 1]);
        }
    }
    for t in &mut m.tables {
        q(&mut t.comment);
        for s in &mut t.sets {
            q(&mut s.comment);
            for e in &mut s.elements {
                q(&mut e.comment);
            }
        }
        for c in &mut t.chains {
            q(&mut c.comment);
            for r in &mut c.rules {
                q(&mut r.comment);
                for x in &mut r.matches {
                    if let Match::Lookup { key, set, negate } = x {
                        if key.len() == 1 && matches!(key[0], Field::Saddr | Field::Daddr) {
                            let (negate, addr) = (*negate, AddrMatch::Set(set.clone()));
                            *x = if key[0] == Field::Saddr {
                                Match::Saddr { negate, addr }
                            } else {
                                Match::Daddr { negate, addr }
                            };
                        }
                    }
                }
            }
        }
    }
    m
}
