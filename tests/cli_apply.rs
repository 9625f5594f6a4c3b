//! `svcc apply`, `svcc diff` and `svcc cleanup` end to end, in a throwaway network namespace:
//! diff shows nothing after apply, and exactly the change after one endpoint moved; cleanup
//! removes svcc's tables and leaves a foreign one byte-identical.

use std::path::PathBuf;
use std::process::{Command, Output};

struct Netns(String);
impl Netns {
    fn new() -> Netns {
        Netns::new_named("x")
    }
    fn new_named(tag: &str) -> Netns {
        let n = format!("svcc-cli-{}-{tag}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &n])
            .status()
            .unwrap()
            .success());
        Netns(n)
    }
    fn run(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, prog])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    }
    fn ok(&self, prog: &str, args: &[&str]) -> (String, String) {
        let o = self.run(prog, args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(o.status.success(), "{prog} {args:?}: {err}");
        (out, err)
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn apply_diff_cleanup() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root: skipped");
        return;
    }
    let svcc = env!("CARGO_BIN_EXE_svcc");
    let ns = Netns::new();
    ns.ok("nft", &["add table inet firewall"]);
    ns.ok(
        "nft",
        &["add chain inet firewall input { type filter hook input priority 0; policy accept; }"],
    );
    ns.ok("nft", &["add rule inet firewall input tcp dport 22 accept"]);
    let foreign = ns.ok("nft", &["list", "table", "inet", "firewall"]).0;
    let flags = [
        "--config",
        "fixtures/example/kube-proxy.yaml",
        "--node-ip",
        "192.168.0.2",
    ];
    let with = |cmd: &str, file: &str| -> Vec<String> {
        let mut v = vec![cmd.to_string()];
        v.extend(flags.iter().map(|s| s.to_string()));
        v.push(file.to_string());
        v
    };

    ns.ok(svcc, &strs(&with("apply", "fixtures/example/cluster.yaml")));
    let (script, err) = ns.ok(svcc, &strs(&with("diff", "fixtures/example/cluster.yaml")));
    assert!(
        err.contains("0 statement(s)"),
        "no difference right after apply: {script}{err}"
    );

    let moved = std::env::temp_dir().join(format!("svcc-cli-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/example/cluster.yaml"),
    )
    .unwrap();
    std::fs::write(&moved, text.replace("10.244.2.11", "10.244.2.99")).unwrap();
    let o = ns.run(svcc, &strs(&with("diff", moved.to_str().unwrap())));
    let _ = std::fs::remove_file(&moved);
    // Exit status 1: differences (tests/cli_diff.rs checks every status).
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let script = String::from_utf8_lossy(&o.stdout).into_owned();
    // An endpoint replaced by another: map elements only, no rule, no chain.
    assert!(
        script.contains("add element ip svcc endpoints {")
            && script.contains(": 10.244.2.99 . 8080")
            && script.contains("delete element ip svcc endpoints {"),
        "{script}"
    );
    assert!(
        !script.contains("chain") && !script.contains("rule") && !script.contains("add table"),
        "{script}"
    );

    ns.ok(svcc, &["cleanup"]);
    let tables = ns.ok("nft", &["list", "tables"]).0;
    assert!(!tables.contains("svcc"), "{tables}");
    assert_eq!(
        ns.ok("nft", &["list", "table", "inet", "firewall"]).0,
        foreign
    );
}

/// Removing a Service whose chains refer to each other (eTP=Local: `external-…` goes to
/// `service-…`) is an incremental change the kernel accepts.
#[test]
fn removing_a_service_incrementally() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root: skipped");
        return;
    }
    use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};
    use svcc_runtime::{Applier, ApplyOptions};
    let ns = Netns::new_named("rm");
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/example/cluster.yaml"),
    )
    .unwrap();
    let settings = NodeSettings {
        hostname: "node-a".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let all = compile(
        &[Source {
            name: "c.yaml".into(),
            text: text.clone(),
        }],
        &settings,
        CompileOptions::default(),
    )
    .unwrap();
    // Without shop/web (the eTP=Local NodePort service) and its slices.
    let without: String = text
        .split("\n- ")
        .filter(|item| !item.contains("name: web"))
        .collect::<Vec<_>>()
        .join("\n- ");
    let fewer = compile(
        &[Source {
            name: "c.yaml".into(),
            text: without,
        }],
        &settings,
        CompileOptions::default(),
    )
    .unwrap();
    assert!(fewer.ruleset.stats().chains < all.ruleset.stats().chains);
    let path = format!("/run/netns/{}", ns.0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid netns fd changes only this thread.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let mut a = Applier::new().unwrap();
            a.apply_owned(all.ruleset, &ApplyOptions::default())
                .unwrap();
            let r = a
                .apply_owned(fewer.ruleset, &ApplyOptions::default())
                .expect("incremental removal");
            assert!(
                !r.full && r.committed && r.changes.chains_deleted >= 3,
                "{r:?}"
            );
        })
        .join()
        .unwrap();
    });
    let listing = ns.ok("nft", &["list", "table", "ip", "svcc"]).0;
    assert!(!listing.contains("shop/web"), "{listing}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
