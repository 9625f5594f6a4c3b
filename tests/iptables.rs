//! The iptables backend's applier in the real kernel (throwaway network namespaces), for both
//! flavours: foreign rules are left byte-identical by apply and cleanup, and a long-lived
//! applier rewrites only the chains that changed (KEP-3453's partial restore).

use std::path::PathBuf;
use std::process::{Command, Output};

use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};
use svcc_runtime::iptables::{Flavor, IptApplier};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("svcc-ipt-{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success());
        Netns(name)
    }
    fn exec(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, prog])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
    fn ok(&self, prog: &str, args: &[&str]) -> String {
        let o = self.exec(prog, args);
        assert!(
            o.status.success(),
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    /// Runs `f` on a thread inside the namespace (children it spawns live there too).
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).expect("open netns");
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace fd affects only this thread.
                let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns");
                f()
            })
            .join()
            .expect("thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn save(ns: &Netns, flavor: &str) -> String {
    // Counters and the generated-by header lines change between dumps: drop them.
    ns.ok(&format!("iptables-{flavor}-save"), &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string() + "\n")
        .collect()
}

const FOREIGN: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -s 172.17.0.0/16 -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
";

fn svcc(ns: &Netns, args: &[&str]) -> String {
    let bin = env!("CARGO_BIN_EXE_svcc");
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.0, bin])
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "svcc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn foreign_rules_are_untouched_by_apply_and_cleanup() {
    if !root() {
        eprintln!("note: not root: skipped");
        return;
    }
    for flavor in ["nft", "legacy"] {
        let ns = Netns::new(flavor);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                &format!("iptables-{flavor}-restore"),
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(FOREIGN.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let before = save(&ns, flavor);
        let args = [
            "apply",
            "--backend",
            "iptables",
            "--iptables-flavor",
            flavor,
            "--config",
            "fixtures/example/kube-proxy.yaml",
            "--node-ip",
            "192.168.0.2",
            "fixtures/example/cluster.yaml",
        ];
        svcc(&ns, &args);
        let during = save(&ns, flavor);
        assert!(during.contains(":SVCC-SERVICES"), "svcc's chains are there");
        // Every foreign line is still there, in the same order.
        let foreign: Vec<&str> = during
            .lines()
            .filter(|l| !l.contains("SVCC-") && !l.contains("svcc "))
            .collect();
        assert_eq!(
            foreign,
            before.lines().collect::<Vec<_>>(),
            "{flavor}: foreign rules changed by apply"
        );
        // Applying again changes nothing.
        svcc(&ns, &args);
        assert_eq!(
            save(&ns, flavor),
            during,
            "{flavor}: a second apply changed the rules"
        );
        svcc(
            &ns,
            &[
                "cleanup",
                "--backend",
                "iptables",
                "--iptables-flavor",
                flavor,
            ],
        );
        assert_eq!(
            save(&ns, flavor),
            before,
            "{flavor}: cleanup did not restore the foreign rules exactly"
        );
    }
}

fn settings() -> NodeSettings {
    NodeSettings {
        hostname: "node-a".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    }
}

fn cluster(second_endpoint: &str) -> Vec<Source> {
    let base = std::fs::read_to_string(repo().join("fixtures/example/cluster.yaml")).unwrap();
    vec![Source {
        name: "cluster.yaml".into(),
        text: base.replace("10.244.2.11", second_endpoint),
    }]
}

#[test]
fn a_long_lived_applier_rewrites_only_changed_chains() {
    if !root() {
        eprintln!("note: not root: skipped");
        return;
    }
    let ns = Netns::new("partial");
    ns.within(|| {
        let mut a = IptApplier::new(Flavor::Nft);
        let first = compile(
            &cluster("10.244.2.11"),
            &settings(),
            CompileOptions::default(),
        )
        .unwrap();
        let r1 = a.apply(&first.iptables()).expect("first apply");
        assert!(r1.chains_written > 10 && r1.jumps_inserted == 12, "{r1:?}");

        let r2 = a.apply(&first.iptables()).expect("same again");
        assert_eq!(
            (r2.restores, r2.chains_written, r2.jumps_inserted),
            (0, 0, 0),
            "{r2:?}"
        );

        // One endpoint of shop/web replaced: its service chain, the old endpoint chain goes,
        // the new one comes; nothing else.
        let second = compile(
            &cluster("10.244.2.99"),
            &settings(),
            CompileOptions::default(),
        )
        .unwrap();
        let r3 = a.apply(&second.iptables()).expect("one endpoint changed");
        assert_eq!(r3.restores, 1, "only the nat table changed: {r3:?}");
        assert_eq!((r3.chains_written, r3.chains_deleted), (2, 1), "{r3:?}");
    });
    let nat = ns.ok("iptables-nft-save", &["-t", "nat"]);
    assert!(
        nat.contains("10.244.2.99:8080") && !nat.contains("10.244.2.11:8080"),
        "{nat}"
    );
}

/// Runs the svcc binary (no namespace, no root needed): (exit code, stderr).
fn svcc_plain(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_svcc"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The mode chooses the config file's section: `--backend iptables` with a file that only has
/// `nftables:` settings compiles iptables mode's defaults and says which fields it ignored.
/// `svcc run` programs nftables only, whether iptables comes from the flag or the file.
#[test]
fn the_mode_chooses_the_config_section_and_svcc_run_refuses_iptables() {
    let cfg = "fixtures/cases/kube-proxy-config/kube-proxy.yaml";
    let m = "fixtures/cases/kube-proxy-config/manifests.yaml";
    let args = [
        "compile",
        "--backend",
        "iptables",
        "--config",
        cfg,
        "--node-ip",
        "192.168.0.2",
        m,
        "-o",
        "/dev/null",
    ];
    let (code, err) = svcc_plain(&args);
    assert_eq!(code, Some(0), "{err}");
    for f in [
        "masqueradeAll",
        "masqueradeBit",
        "syncPeriod",
        "minSyncPeriod",
    ] {
        assert!(
            err.contains(&format!(
                "nftables.{f}: ignored: svcc compiles iptables mode"
            )),
            "{f}: {err}"
        );
    }
    let (code, err) = svcc_plain(&["compile", "--config", cfg, m, "-o", "/dev/null"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("ignored"), "{err}");

    let dir = std::env::temp_dir().join(format!("svcc-run-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kp = dir.join("kp.yaml");
    std::fs::write(
        &kp,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n",
    )
    .unwrap();
    let d = dir.display().to_string();
    for extra in [
        vec!["--backend", "iptables"],
        vec!["--config", kp.to_str().unwrap()],
    ] {
        let mut a = vec!["run", "--node-ip", "192.168.0.2", "--watch", &d];
        a.extend(extra.iter().copied());
        let (code, err) = svcc_plain(&a);
        assert_eq!(code, Some(2), "{a:?}: {err}");
        assert!(err.contains("svcc run programs nftables only"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
