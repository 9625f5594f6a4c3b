//! The set/map count does not grow with the cluster: a 3,000-service cluster loaded into the
//! kernel holds exactly as many sets and maps as a 100-service one (the layout's promise, and
//! the reason loads stay linear). Real kernel, throwaway network namespace.

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use std::process::Command;

use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};

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

fn kernel_set_count(services: usize) -> (usize, usize) {
    let text = cluster::generate(&cluster::GenOptions {
        services,
        endpoints: services * 5,
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
    (sets, chains)
}

#[test]
fn set_and_map_count_is_independent_of_cluster_size() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root: skipping the kernel scale check");
        return;
    }
    let (small_sets, small_chains) = kernel_set_count(100);
    let (big_sets, big_chains) = kernel_set_count(3000);
    assert!(
        big_chains > small_chains * 10,
        "the big cluster really is bigger ({small_chains} vs {big_chains} chains)"
    );
    assert_eq!(
        small_sets, big_sets,
        "sets+maps: {small_sets} at 100 services, {big_sets} at 3,000"
    );
    assert!(big_sets <= 16, "at most 16 sets/maps, found {big_sets}");
}
