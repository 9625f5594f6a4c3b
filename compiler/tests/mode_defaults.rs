//! kube-proxy's defaults and behaviours that differ between its nftables and iptables modes,
//! pinned per mode (docs/ARCHITECTURE.md, "Defaults that differ by mode", names these tests).

use std::net::IpAddr;

use ipnet::IpNet;
use svcc_compiler::ir::{Ir, NodePortAddrs};
use svcc_compiler::{compile, Backend, CompileOptions, NodePortAddresses, NodeSettings, Output};

/// A dual-stack NodePort Service (no endpoints for the IPv4 one: the no-endpoint rules) and an
/// eTP=Local LoadBalancer with a healthCheckNodePort.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  clusterIP: 172.30.0.11
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30081}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 172.30.0.10
  clusterIPs: [172.30.0.10, "fd00:30::10"]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: ["fd00:10::1:10"]
  conditions: {ready: true}
  nodeName: node-a
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn settings(backend: Backend, npa: NodePortAddresses) -> NodeSettings {
    NodeSettings {
        hostname: "node-a".into(),
        node_ips: ["192.168.0.2", "192.168.1.2", "fd00::2", "fd00:1::2"]
            .map(ip)
            .to_vec(),
        cluster_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        service_cidrs: vec!["172.30.0.0/16".parse().unwrap()],
        nodeport_addresses: npa,
        backend,
        ..NodeSettings::default()
    }
}

fn run(s: &NodeSettings) -> Output {
    let src = svcc_compiler::Source {
        name: "m.yaml".into(),
        text: MANIFESTS.into(),
    };
    compile(&[src], s, CompileOptions::default()).expect("compiles")
}

fn on(ir: &Ir) -> Vec<NodePortAddrs> {
    ir.families
        .iter()
        .map(|f| f.node_ports_on.clone())
        .collect()
}

fn addrs(v: &[&str]) -> NodePortAddrs {
    NodePortAddrs::Addrs(v.iter().map(|a| ip(a)).collect())
}

fn iptables_text(o: &Output) -> String {
    o.iptables().iter().map(|r| r.restore_text()).collect()
}

/// nodePortAddresses unset: nftables mode = `primary` (cmd/kube-proxy platformApplyDefaults),
/// iptables mode = every local address (`NewNodePortAddresses` match-all: `--dst-type LOCAL`),
/// never loopback in svcc.
#[test]
fn unset_nodeport_addresses_by_mode() {
    let nft = run(&settings(Backend::Nftables, NodePortAddresses::Unset));
    assert_eq!(
        on(&nft.ir),
        vec![addrs(&["192.168.0.2"]), addrs(&["fd00::2"])]
    );
    assert!(nft.notes.iter().all(|n| !n.contains("every local")));

    let ipt = run(&settings(Backend::Iptables, NodePortAddresses::Unset));
    assert_eq!(
        on(&ipt.ir),
        vec![NodePortAddrs::AllLocal, NodePortAddrs::AllLocal]
    );
    let text = iptables_text(&ipt);
    assert!(text.contains("! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j SVCC-NODEPORTS"));
    assert!(text.contains("! -d ::1/128 -m addrtype --dst-type LOCAL -j SVCC-NODEPORTS"));
    assert!(!text.contains("-d 192.168.0.2/32 -j SVCC-NODEPORTS"));
    let notes: Vec<&String> = ipt
        .notes
        .iter()
        .filter(|n| n.contains("iptables mode without nodePortAddresses"))
        .collect();
    assert_eq!(notes.len(), 2, "{:?}", ipt.notes);
}

/// Explicit `primary` and CIDRs mean the same in both modes.
#[test]
fn explicit_nodeport_addresses_same_in_both_modes() {
    for b in [Backend::Nftables, Backend::Iptables] {
        let p = run(&settings(b, NodePortAddresses::Primary));
        assert_eq!(
            on(&p.ir),
            vec![addrs(&["192.168.0.2"]), addrs(&["fd00::2"])],
            "{b:?}"
        );
        let cidrs: Vec<IpNet> = vec![
            "192.168.0.0/16".parse().unwrap(),
            "fd00::/16".parse().unwrap(),
        ];
        let c = run(&settings(b, NodePortAddresses::Cidrs(cidrs)));
        assert_eq!(
            on(&c.ir),
            vec![
                addrs(&["192.168.0.2", "192.168.1.2"]),
                addrs(&["fd00::2", "fd00:1::2"])
            ],
            "{b:?}"
        );
        // No CIDR of a family: kube-proxy adds 0.0.0.0/0 or ::/0 for it (`NewNodePortAddresses`).
        let v4 = run(&settings(
            b,
            NodePortAddresses::Cidrs(vec!["192.168.1.0/24".parse().unwrap()]),
        ));
        assert_eq!(
            on(&v4.ir),
            vec![addrs(&["192.168.1.2"]), NodePortAddrs::AllLocal],
            "{b:?}"
        );
    }
}

/// Without a node IP, `primary` (and so nftables mode's default) is every local address:
/// cmd/kube-proxy then leaves nodePortAddresses empty (match all); svcc says so in a note.
#[test]
fn primary_without_node_ip_is_all_local() {
    for (b, npa) in [
        (Backend::Nftables, NodePortAddresses::Unset),
        (Backend::Nftables, NodePortAddresses::Primary),
        (Backend::Iptables, NodePortAddresses::Primary),
    ] {
        let mut s = settings(b, npa);
        s.node_ips.clear();
        let o = run(&s);
        assert_eq!(
            on(&o.ir),
            vec![NodePortAddrs::AllLocal, NodePortAddrs::AllLocal],
            "{b:?}"
        );
        assert!(
            o.notes
                .iter()
                .any(|n| n.contains("no node IP of this family")),
            "{:?}",
            o.notes
        );
    }
}

/// iptables mode drops INVALID conntrack packets in the forward chain unless
/// `conntrack.tcpBeLiberal` (kube-proxy: `conntrackTCPLiberal`); nftables mode never.
#[test]
fn invalid_conntrack_drop_by_mode() {
    let mut s = settings(Backend::Iptables, NodePortAddresses::Unset);
    let drop = "-A SVCC-FORWARD -m conntrack --ctstate INVALID -j DROP";
    assert!(iptables_text(&run(&s)).contains(drop));
    s.conntrack_tcp_be_liberal = true;
    assert!(!iptables_text(&run(&s)).contains(drop));
    let nft = run(&settings(Backend::Nftables, NodePortAddresses::Unset)).nft_text();
    assert!(!nft.contains("ct state invalid"), "{nft}");
}

/// nftables mode REJECTs undefined ports of a ClusterIP and DROPs unallocated service-CIDR
/// addresses (`cluster-ips-check`); iptables mode leaves both alone.
#[test]
fn cluster_ip_checks_by_mode() {
    let nft = run(&settings(Backend::Nftables, NodePortAddresses::Unset)).nft_text();
    assert!(nft.contains("chain cluster-ips-check"), "{nft}");
    assert!(nft.contains("ip daddr @cluster-ips reject"), "{nft}");
    assert!(nft.contains("ip daddr @service-cidrs drop"), "{nft}");
    let ipt = iptables_text(&run(&settings(Backend::Iptables, NodePortAddresses::Unset)));
    assert!(!ipt.contains("172.30.0.0/16"), "{ipt}");
    // The only REJECT of the ClusterIP is its defined port's (no endpoints), never the address.
    for l in ipt.lines().filter(|l| l.contains("172.30.0.10/32")) {
        assert!(l.contains("--dport 80"), "{l}");
    }
}

/// A NodePort without endpoints: iptables mode REJECTs it on every local address
/// (`--dst-type LOCAL`, whatever nodePortAddresses says); nftables mode only on the NodePort
/// addresses (`nodeport-endpoints-check`).
#[test]
fn nodeport_without_endpoints_by_mode() {
    let cidrs = NodePortAddresses::Cidrs(vec!["192.168.0.0/24".parse().unwrap()]);
    let ipt = iptables_text(&run(&settings(Backend::Iptables, cidrs.clone())));
    assert!(
        ipt.contains("-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT"),
        "{ipt}"
    );
    let nft = run(&settings(Backend::Nftables, cidrs)).nft_text();
    assert!(
        nft.contains("ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        "{nft}"
    );
}

/// The healthCheckNodePort is let through the node's firewall in iptables mode (filter
/// KUBE-NODEPORTS ACCEPT); kube-proxy's nftables mode has no such rule.
#[test]
fn health_check_node_port_accept_by_mode() {
    let ipt = iptables_text(&run(&settings(Backend::Iptables, NodePortAddresses::Unset)));
    assert!(
        ipt.contains("-A SVCC-NODEPORTS -m comment --comment \"default/lb:http health check node port\" -m tcp -p tcp --dport 32000 -j ACCEPT"),
        "{ipt}"
    );
    let nft = run(&settings(Backend::Nftables, NodePortAddresses::Unset)).nft_text();
    assert!(!nft.contains("32000"), "{nft}");
}
