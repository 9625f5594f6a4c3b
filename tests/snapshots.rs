//! Snapshots for shape: the ruleset of every fixture case, and the diagnostics of every bad
//! input. Review changes to `tests/snapshots/*.snap` like code (`cargo insta review`).
//!
//! Also checks that every compiled ruleset is accepted by the kernel (`nft -c -f`), when nft
//! and root are available (CI always has both).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::case::{all_cases, Case};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn svcc(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_svcc"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("running svcc")
}

/// Paths relative to the repo root, so snapshots do not depend on where the clone lives.
fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

fn compile_case(dir: &Path) -> String {
    let case = Case::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let args: Vec<String> = std::iter::once("compile".to_string())
        .chain(case.compile_args(dir).into_iter().map(|a| {
            let p = Path::new(&a);
            if p.is_absolute() {
                rel(p)
            } else {
                a
            }
        }))
        .collect();
    let out = svcc(&args);
    assert!(
        out.status.success(),
        "svcc {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 ruleset")
}

fn nft_available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `nft -c -f` checks a ruleset against the kernel without committing it.
fn nft_check(name: &str, text: &str) {
    let dir = std::env::temp_dir().join(format!("svcc-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(format!("{name}.nft"));
    std::fs::write(&f, text).unwrap();
    let out = Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&f)
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft -c rejected the ruleset of {name} ({}):\n{}",
        f.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&f);
}

#[test]
fn fixture_rulesets() {
    let mut dirs = all_cases();
    dirs.push(root().join("fixtures/example"));
    assert!(!dirs.is_empty());
    let check = nft_available();
    if !check {
        eprintln!("note: not root or no nft: skipping the nft -c check of the snapshots");
    }
    for dir in dirs {
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let text = compile_case(&dir);
        insta::assert_snapshot!(format!("nft__{name}"), text);
        if check {
            nft_check(&name, &text);
        }
    }
}

#[test]
fn the_example_compiles_as_documented() {
    // The README's exact command.
    let args: Vec<String> = [
        "compile",
        "--config",
        "fixtures/example/kube-proxy.yaml",
        "--node-ip",
        "192.168.0.2,2001:db8::1",
        "fixtures/example/cluster.yaml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = svcc(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("table ip svcc {") && text.contains("table ip6 svcc {"));
}

/// Every file in fixtures/bad: its diagnostics and exit status.
#[test]
fn bad_inputs() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_stem().unwrap().to_str().unwrap().to_string();
        let relf = rel(&f);
        let mut args = vec![
            "compile".to_string(),
            "--hostname-override".into(),
            "node-a".into(),
        ];
        if name.contains("kube-proxy-config") {
            args.extend([
                "--config".into(),
                relf.clone(),
                "fixtures/example/cluster.yaml".into(),
            ]);
        } else {
            args.extend(["--node-ip".into(), "192.168.0.2".into(), relf.clone()]);
        }
        let out = svcc(&args);
        let report = format!(
            "$ svcc {}\nexit status: {}\nstdout bytes: {}\n--- stderr\n{}",
            args.join(" "),
            out.status.code().unwrap_or(-1),
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        insta::assert_snapshot!(format!("bad__{name}"), report);
    }
}

/// `--keep-going`: the valid objects compile, the invalid ones are reported.
#[test]
fn keep_going_compiles_the_rest() {
    let args: Vec<String> = [
        "compile",
        "--keep-going",
        "--hostname-override",
        "node-a",
        "--node-ip",
        "192.168.0.2",
        "fixtures/bad/invalid-ip.yaml",
        "fixtures/example/cluster.yaml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = svcc(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("kube-system/kube-dns:dns"),
        "valid services are compiled"
    );
    assert!(
        !text.contains("10.96.0.300") && !text.contains("default/ext:"),
        "invalid ones are not"
    );
    assert!(
        stderr.contains("invalid-ip.yaml:7:3: Service default/web: spec.clusterIP"),
        "{stderr}"
    );
}

/// Nothing is written to -o when the input has errors.
#[test]
fn errors_write_nothing() {
    let dir = std::env::temp_dir().join(format!("svcc-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("out.nft");
    std::fs::write(&out_file, "previous\n").unwrap();
    let args: Vec<String> = vec![
        "compile".into(),
        "--node-ip".into(),
        "192.168.0.2".into(),
        "-o".into(),
        out_file.display().to_string(),
        "fixtures/bad/port-range.yaml".into(),
    ];
    let out = svcc(&args);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "previous\n");
    let _ = std::fs::remove_dir_all(&dir);
}
