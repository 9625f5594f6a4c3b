//! `svcc diff`'s exit status, as diff(1) and `kubectl diff`: 0 no difference, 1 differences
//! shown, 2 input errors (and bad flags: clap's own status), never 1 for a failure. Runs svcc
//! in a throwaway network namespace (needs root and nft; skipped otherwise).

use std::process::{Command, Output};

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let n = format!("svcc-diff-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
        assert!(Command::new("ip")
            .args(["netns", "add", &n])
            .status()
            .unwrap()
            .success());
        Netns(n)
    }

    fn svcc(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, env!("CARGO_BIN_EXE_svcc")])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && nft) {
        eprintln!("note: not root or no nft: skipped");
    }
    root && nft
}

fn status(o: &Output) -> (Option<i32>, String) {
    (
        o.status.code(),
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn diff_exit_status() {
    if !usable() {
        return;
    }
    let ns = Netns::new();
    let flags = [
        "--config",
        "fixtures/example/kube-proxy.yaml",
        "--node-ip",
        "192.168.0.2",
    ];
    let cmd = |sub: &str, extra: &[&str]| -> Vec<String> {
        let mut v = vec![sub.to_string()];
        v.extend(flags.iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |sub: &str, extra: &[&str]| {
        let args = cmd(sub, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        status(&ns.svcc(&args))
    };

    // Nothing in the kernel yet: everything is a difference.
    let (code, out) = run("diff", &["fixtures/example/cluster.yaml"]);
    assert_eq!(code, Some(1), "no tables yet: {out}");
    assert!(out.contains("table ip svcc {"), "{out}");

    let (code, out) = run("apply", &["fixtures/example/cluster.yaml"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run("diff", &["fixtures/example/cluster.yaml"]);
    assert_eq!(code, Some(0), "no difference right after apply: {out}");

    // One endpoint moved: differences shown, status 1.
    let moved = std::env::temp_dir().join(format!("svcc-diff-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example/cluster.yaml"),
    )
    .unwrap();
    std::fs::write(&moved, text.replace("10.244.2.11", "10.244.2.99")).unwrap();
    let (code, out) = run("diff", &[moved.to_str().unwrap()]);
    let _ = std::fs::remove_file(&moved);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("10.244.2.99"), "{out}");

    // Input errors: 2, never 1 (which would read as "differences").
    let (code, out) = run("diff", &["fixtures/bad/invalid-ip.yaml"]);
    assert_eq!(code, Some(2), "invalid object: {out}");
    let (code, out) = run("diff", &["fixtures/does-not-exist.yaml"]);
    assert_eq!(code, Some(2), "missing file: {out}");
    let (code, out) = run(
        "diff",
        &["--backend", "iptables", "fixtures/example/cluster.yaml"],
    );
    assert_eq!(code, Some(2), "iptables backend: {out}");
    let (code, out) = run(
        "diff",
        &["--node-ip", "banana", "fixtures/example/cluster.yaml"],
    );
    assert_eq!(code, Some(2), "bad flag value: {out}");
    let (code, out) = status(&ns.svcc(&["diff", "--no-such-flag", "x.yaml"]));
    assert_eq!(code, Some(2), "unknown flag (clap): {out}");

    // The kernel still holds what was applied: unchanged by any diff.
    let (code, out) = run("diff", &["fixtures/example/cluster.yaml"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = status(&ns.svcc(&["cleanup"]));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn diff_help_documents_the_exit_status() {
    let o = Command::new(env!("CARGO_BIN_EXE_svcc"))
        .args(["diff", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("Exit status")
            && help.contains("1 there are")
            && help.contains("kubectl diff"),
        "{help}"
    );
}
