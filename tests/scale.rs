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

/// (sets + maps, chains, service ports) of a generated cluster loaded with `nft -f`.
fn kernel_set_count(services: usize, endpoints_per_service: usize) -> (usize, usize, usize) {
    let text = cluster::generate(&cluster::GenOptions {
        services,
        endpoints: services * endpoints_per_service,
        ..Default::default()
    });
    let settings = NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    };
    let out = compile(
        &[Source {
            name: "gen.yaml".into(),
            text,
        }],
        &settings,
        CompileOptions::default(),
    )
    .expect("generated cluster compiles");
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
