//! No set or map per service or endpoint: a cluster loaded into the kernel holds the 11 fixed
//! sets/maps plus its endpoint maps, one per 128 service ports at most (a power of two: see
//! `nft::build::endpoint_shards`), and one affinity map per 4 endpoint maps, whatever its number
//! of endpoints (the layout's promise, and the reason loads stay linear). Real kernel,
//! throwaway network namespace.

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use std::process::Command;

use svcc_compiler::nft::build::{
    endpoint_shards, AFFINITY_SHARD_GROUP, SERVICE_PORTS_PER_ENDPOINT_MAP as PER_MAP,
};
use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};

/// The fixed sets and maps of a table, endpoint and affinity maps aside.
const FIXED_SETS: usize = 11;

/// A network namespace removed on drop (also when the test panics).
struct Netns(String);
impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("svcc-scale-{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        Netns(name)
    }
    fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .expect("nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A generated cluster compiled for node 192.168.0.2 (cluster CIDR 10.128.0.0/9).
fn generated(services: usize, endpoints: usize) -> svcc_compiler::Output {
    let text = cluster::generate(&cluster::GenOptions {
        services,
        endpoints,
        ..Default::default()
    });
    let settings = NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    };
    compile(
        &[Source {
            name: "gen.yaml".into(),
            text,
        }],
        &settings,
        CompileOptions::default(),
    )
    .expect("generated cluster compiles")
}

/// (sets + maps, chains, service ports) of a generated cluster loaded with `nft -f`.
fn kernel_set_count(services: usize, endpoints_per_service: usize) -> (usize, usize, usize) {
    let out = generated(services, services * endpoints_per_service);
    let service_ports = out.ir.families[0].service_ports.len();
    let dir =
        std::env::temp_dir().join(format!("svcc-scale-{}-{services}.nft", std::process::id()));
    std::fs::write(&dir, out.nft_text()).unwrap();
    let ns = Netns::new(&services.to_string());
    ns.nft(&["-f", dir.to_str().unwrap()]);
    let _ = std::fs::remove_file(&dir);
    let listing = ns.nft(&["list", "table", "ip", "svcc"]);
    let sets = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("set ") || l.trim_start().starts_with("map "))
        .count();
    let chains = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("chain "))
        .count();
    (sets, chains, service_ports)
}

#[test]
fn set_and_map_count_is_independent_of_endpoints_and_bounded() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root: skipping the kernel scale check");
        return;
    }
    let (small_sets, small_chains, small_ports) = kernel_set_count(100, 5);
    let (dense_sets, _, dense_ports) = kernel_set_count(100, 40);
    let (big_sets, big_chains, big_ports) = kernel_set_count(3000, 5);
    assert!(
        big_chains > small_chains * 10,
        "the big cluster really is bigger ({small_chains} vs {big_chains} chains)"
    );
    // 8x the endpoints, (about) the same service ports: the same count.
    for (sets, ports) in [
        (small_sets, small_ports),
        (dense_sets, dense_ports),
        (big_sets, big_ports),
    ] {
        let shards = endpoint_shards(ports);
        assert_eq!(
            sets,
            FIXED_SETS + shards + (shards / AFFINITY_SHARD_GROUP).max(1),
            "{ports} service ports: 11 fixed sets/maps + endpoint maps + affinity maps"
        );
        assert!(ports.div_ceil(PER_MAP) <= shards);
        assert!(shards < ports.div_ceil(PER_MAP) * 2);
    }
    // The big cluster has several affinity maps (and loaded: every rule's map exists).
    assert!(
        endpoint_shards(big_ports) / AFFINITY_SHARD_GROUP > 1,
        "{big_ports} ports"
    );
}

/// ClientIP affinity with several affinity maps: connections from one client to a service port
/// stick to one backend, and the entry lands in that port's own affinity map (not another's).
/// Packets from the node itself (OUTPUT), to backends that do not answer: conntrack and the
/// maps show the choice.
#[test]
fn client_ip_affinity_across_affinity_maps() {
    use svcc_compiler::names::EndpointSet;
    use svcc_compiler::nft::build::endpoint_ids;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root: skipping the affinity check");
        return;
    }
    let out = generated(3000, 15000);
    let f = &out.ir.families[0];
    let ids = endpoint_ids(f);
    assert!(ids.affinity_shards() > 1, "several affinity maps");
    // Two ClientIP service ports (TCP, three or more backends, reachable from the node) whose
    // affinity maps differ.
    let mut picked: Vec<(&str, std::net::IpAddr, u16, Vec<String>)> = Vec::new();
    for sp in &f.service_ports {
        let usable = sp.policy.affinity_timeout.is_some()
            && !sp.policy.internal_local
            && sp.protocol == svcc_compiler::family::L4Proto::Tcp
            && sp.backends.cluster.len() >= 3;
        let (Some(vip), true) = (sp.cluster_ip(), usable) else {
            continue;
        };
        let id = ids.get(&sp.name, EndpointSet::Cluster).unwrap();
        let map = ids.affinity_map(id);
        if picked.iter().any(|p| p.0 == map) {
            continue;
        }
        let port = sp
            .frontends
            .iter()
            .find(|fe| fe.addr == Some(vip))
            .unwrap()
            .port;
        let backends = sp
            .backends
            .cluster
            .iter()
            .map(|b| format!("{}", b.addr))
            .collect();
        picked.push((map, vip, port, backends));
        if picked.len() == 2 {
            break;
        }
    }
    assert_eq!(
        picked.len(),
        2,
        "two ClientIP service ports in different maps"
    );

    let path = std::env::temp_dir().join(format!("svcc-scale-{}-aff.nft", std::process::id()));
    std::fs::write(&path, out.nft_text()).unwrap();
    let ns = Netns::new("aff");
    ns.nft(&["-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let sh = |cmd: &str| {
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec")
    };
    // (a veth pair: this kernel may lack the dummy driver)
    let setup = "ip link set lo up && ip link add d0 type veth peer name d1 \
                 && ip link set d0 up && ip link set d1 up \
                 && ip addr add 192.168.0.2/24 dev d0 && ip route add default dev d0";
    assert!(sh(setup).status.success(), "{setup}");
    for (map, vip, port, backends) in &picked {
        // Six connection attempts (new source ports): SYNs leave through d0, unanswered.
        // Without affinity all six would pick one of ≥ 3 backends with odds ≤ 1/243.
        for _ in 0..6 {
            let _ = Command::new("ip")
                .args(["netns", "exec", &ns.0, "timeout", "0.3", "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{vip}/{port}"))
                .output();
        }
        let ct = sh(&format!(
            "conntrack -L -p tcp --orig-dst {vip} --dport {port} 2>/dev/null"
        ));
        let ct = String::from_utf8_lossy(&ct.stdout).to_string();
        // The reply direction's source is the backend chosen.
        let chosen: Vec<&str> = ct
            .lines()
            .filter_map(|l| l.split("src=").nth(2))
            .filter_map(|s| s.split_whitespace().next())
            .collect();
        assert_eq!(chosen.len(), 6, "{vip}:{port}: six connections\n{ct}");
        assert!(
            chosen.iter().all(|c| *c == chosen[0]),
            "{vip}:{port}: one backend for one client: {chosen:?}"
        );
        assert!(backends.iter().any(|b| b == chosen[0]), "{chosen:?}");
        // The entry is in this port's affinity map, and in no other.
        // (an element: `client . tcp . vip . port timeout … expires … : backend . port`)
        let key = format!(" . {vip} . {port} ");
        let value = format!(": {} . ", chosen[0]);
        for (other, ..) in &picked {
            let listing = ns.nft(&["list", "map", "ip", "svcc", other]);
            let entry = listing.lines().find(|l| l.contains(&key));
            assert_eq!(
                entry.is_some_and(|l| l.contains(&value)),
                other == map,
                "{key}{value} in {other} (port's map: {map}):\n{listing}"
            );
        }
    }
}
