//! `svcc compile --backend ipvs` of every fixture case, pinned: the ipvsadm-restore input,
//! the addresses of svcc-ipvs0 and the nftables glue. The glue of every case is loaded with
//! `nft -f` into a throwaway network namespace (needs root and nft; skipped otherwise). The
//! ipvsadm part is checked by `ipvsadm` only inside the IP_VS VM (tests/flow, ipvs loader).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::case::{all_cases, Case};
use svcc_compiler::ipvs::render::{ipvsadm_part, section, Section};

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

fn compile_case(dir: &Path, extra: &[&str]) -> String {
    let case = Case::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let args: Vec<String> = ["compile", "--backend", "ipvs"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain(case.compile_args(dir).into_iter().map(|a| {
            let p = Path::new(&a);
            p.strip_prefix(root()).unwrap_or(p).display().to_string()
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
    String::from_utf8(out.stdout).expect("utf-8 text")
}

/// A throwaway network namespace, removed even when the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let n = format!("svcc-ipvsc-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
        assert!(Command::new("ip")
            .args(["netns", "add", &n])
            .status()
            .unwrap()
            .success());
        Netns(n)
    }

    fn nft(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
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
        eprintln!("note: not root or no nft: the glue is not loaded");
    }
    root && nft
}

/// Every line of the ipvsadm part is an ipvsadm command (or a comment ipvsadm-restore skips).
fn check_ipvsadm_lines(name: &str, text: &str) {
    let part = ipvsadm_part(text).unwrap_or_else(|| panic!("{name}: no ipvsadm section"));
    for l in part.lines() {
        assert!(
            l.starts_with("-A ")
                || l.starts_with("-a ")
                || l.starts_with("--set ")
                || l.starts_with("# "),
            "{name}: not an ipvsadm-restore line: {l:?}"
        );
    }
}

/// Loads the glue into the namespace (replacing the previous case's) and checks that each
/// family's table the text declares is there afterwards.
fn load_glue(ns: &Netns, name: &str, text: &str) {
    let glue = section(text, Section::Nft).unwrap_or_else(|| panic!("{name}: no nft section"));
    let out = ns.nft(&["-f", "-"], glue);
    assert!(
        out.status.success(),
        "nft -f rejected the glue of {name}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for fam in ["ip", "ip6"] {
        if glue.contains(&format!("\ntable {fam} svcc {{")) {
            let l = ns.nft(&["list", "table", fam, "svcc"], "");
            assert!(l.status.success(), "{name}: table {fam} svcc not loaded");
            let listing = String::from_utf8_lossy(&l.stdout);
            assert!(listing.contains("chain vip-filter"), "{name}: {listing}");
        }
    }
}

#[test]
fn fixture_ipvs() {
    let ns = usable().then(Netns::new);
    let mut cases = all_cases();
    cases.push(root().join("fixtures/example"));
    for dir in cases {
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let text = compile_case(&dir, &[]);
        insta::assert_snapshot!(format!("ipvs__{name}"), text);
        check_ipvsadm_lines(&name, &text);
        if let Some(ns) = &ns {
            load_glue(ns, &name, &text);
        }
    }
}

/// The scheduler flags and timeouts reach the text: mh with its flags, sh, and `--set`.
#[test]
fn schedulers_and_timeouts() {
    let dir = root().join("fixtures/cases/session-affinity");
    let mh = compile_case(
        &dir,
        &[
            "--ipvs-scheduler",
            "mh",
            "--ipvs-tcp-timeout",
            "900s",
            "--ipvs-udp-timeout",
            "1m",
        ],
    );
    insta::assert_snapshot!("ipvs_mh__session-affinity", mh);
    let part = ipvsadm_part(&mh).unwrap();
    assert!(part.starts_with("--set 900 0 60\n"), "{part}");
    assert!(part.contains(" -s mh -b mh-fallback,mh-port -p "), "{part}");
    let sh = compile_case(&dir, &["--ipvs-scheduler", "sh"]);
    let part = ipvsadm_part(&sh).unwrap();
    assert!(!part.contains("--set"), "{part}");
    assert!(part.contains(" -s sh -b sh-fallback -p "), "{part}");
    for s in ["wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sed", "nq"] {
        let t = compile_case(&dir, &["--ipvs-scheduler", s]);
        assert!(
            ipvsadm_part(&t).unwrap().contains(&format!(" -s {s} -p ")),
            "{s}"
        );
    }
}

/// Bad IPVS flags: exit status 2, the flag named, nothing written.
#[test]
fn bad_ipvs_flags() {
    let dir = root().join("fixtures/cases/clusterip-basic");
    for (flag, value, says) in [
        ("--ipvs-scheduler", "fastest", "unknown IPVS scheduler"),
        ("--ipvs-tcp-timeout", "-1s", "negative"),
        ("--ipvs-udp-timeout", "10ms", "under 1s"),
        ("--ipvs-tcpfin-timeout", "later", "invalid duration"),
        ("--ipvs-exclude-cidrs", "10.0.0.0/33", "invalid CIDR"),
    ] {
        let case = Case::load(&dir).unwrap();
        let mut args: Vec<String> = vec!["compile".into(), "--backend".into(), "ipvs".into()];
        args.push(format!("{flag}={value}"));
        args.extend(case.compile_args(&dir));
        let out = svcc(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(out.stdout.is_empty(), "{flag}");
        assert!(err.contains(flag) && err.contains(says), "{flag}: {err}");
    }
}
