//! `svcc apply`, `svcc diff` and `svcc cleanup` end to end, in a throwaway network namespace:
//! diff shows nothing after apply, and exactly the change after one endpoint moved; cleanup
//! removes svcc's tables and leaves a foreign one byte-identical.

use std::path::PathBuf;
use std::process::{Command, Output};

struct Netns(String);
impl Netns {
    fn new() -> Netns {
        let n = format!("svcc-cli-{}", std::process::id());
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
    let (script, _) = ns.ok(svcc, &strs(&with("diff", moved.to_str().unwrap())));
    let _ = std::fs::remove_file(&moved);
    assert!(
        script.contains("flush chain ip svcc service-KHN6ECMT-shop/web/tcp/http"),
        "{script}"
    );
    assert!(
        script.contains("dnat to 10.244.2.99:8080") && !script.contains("add table"),
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

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
