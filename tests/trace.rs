//! `svcc trace` against the kernel: for every flow of every packet-flow case, in every mode,
//! the trace's verdict, backend set, masquerade and affinity must be what the flow expects —
//! and the flow tests (tests/flow.rs) prove in the real kernel that the flow gets exactly that.
//! A disagreement fails here whichever side is wrong: the interpreter of the IR
//! (`compiler/src/trace.rs`), a writer, or a case.

#[path = "common/case.rs"]
mod case;
#[path = "flow/schema.rs"]
#[allow(dead_code)]
mod schema;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use case::Case;
use schema::{Expect, Flow, Source, Topology};

/// The last-but-one address of a CIDR (the flow framework's default pod client; as
/// `Cidr::last_but_one` in tests/flow/topo.rs, which needs the whole flow framework).
fn last_but_one(cidr: &str) -> IpAddr {
    let (a, len) = cidr.split_once('/').unwrap();
    let a: IpAddr = a.parse().unwrap();
    let (bits, width) = match a {
        IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    };
    let host = u128::MAX
        .checked_shr(128 - width + len.parse::<u32>().unwrap())
        .unwrap_or(0);
    let v = (bits | host) - 1;
    match a {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The `--from` of a flow's client, as the flow framework places it.
fn client(c: &Case, topo: &Topology, f: &Flow) -> Option<String> {
    let fam = |a: &IpAddr| a.is_ipv4() == f.to.is_ipv4();
    match &f.from {
        Source::Node => Some("node".into()),
        Source::Pod => {
            let pods: Vec<IpAddr> = if topo.pod_clients.is_empty() {
                c.node
                    .cluster_cidr
                    .iter()
                    .map(|x| last_but_one(x))
                    .collect()
            } else {
                topo.pod_clients.clone()
            };
            pods.into_iter().find(fam).map(|a| a.to_string())
        }
        Source::External => {
            let ext: Vec<IpAddr> = if topo.external_clients.is_empty() {
                vec![
                    "203.0.113.7".parse().unwrap(),
                    "2001:db8:ff::7".parse().unwrap(),
                ]
            } else {
                topo.external_clients.clone()
            };
            ext.into_iter().find(fam).map(|a| a.to_string())
        }
        Source::Addr(a) => Some(a.to_string()),
    }
}

/// Loader names (docs/FLOW-TESTS.md) that run a mode's rules in the flow tests.
fn loaders(mode: &str) -> &'static [&'static str] {
    match mode {
        "nftables" => &["nft", "apply"],
        "userspace" => &["userspace"],
        "ipvs" => &["ipvs"],
        _ => &["iptables-nft", "iptables-legacy"],
    }
}

/// The flow as a mode's loaders run it: None if one of them skips it.
fn for_mode(f: &Flow, mode: &str) -> Option<Flow> {
    let mut runs = loaders(mode).iter().map(|l| f.for_loader(l));
    let mut first = runs.next()??;
    // The userspace loader's rule (docs/FLOW-TESTS.md): the proxy dials from the node, so
    // every backend sees a node address.
    if mode == "userspace" {
        if let Expect::Backends { masquerade, .. } = &mut first.expect {
            *masquerade = schema::Masquerade::All(true);
        }
    }
    for r in runs {
        assert_eq!(
            r?.expect,
            first.expect,
            "{}: loaders of one mode expect different outcomes",
            f.label()
        );
    }
    Some(first)
}

/// IPVS schedulers under which the flows' repeated connections from one client reach one
/// backend (a flow's `affinity`): the hashing ones by construction (dh, sh) or by locality
/// (lblc, lblcr), and the ones that pick the first idle real server of equal weight (nq, sed)
/// for sequential connections.
fn keeps_one(scheduler: &serde_json::Value) -> bool {
    matches!(
        scheduler.as_str(),
        Some("dh" | "sh" | "lblc" | "lblcr" | "nq" | "sed")
    )
}

/// What a flow expects, in the trace's terms.
fn expected(f: &Flow) -> (String, BTreeSet<(SocketAddr, bool)>, bool) {
    match &f.expect {
        Expect::Backends {
            backends,
            masquerade,
        } => (
            "dnat".into(),
            backends
                .iter()
                .map(|b| (*b, masquerade.expected_for(b)))
                .collect(),
            f.affinity,
        ),
        Expect::Drop => ("drop".into(), BTreeSet::new(), false),
        Expect::Reject => ("reject".into(), BTreeSet::new(), false),
        Expect::Untouched => ("accept".into(), BTreeSet::new(), false),
    }
}

fn check_case(dir: &Path) -> (usize, Vec<String>) {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let c = Case::load(dir).unwrap();
    if c.skip_flows.is_some() {
        return (0, Vec::new());
    }
    let flows = schema::parse_flows(&c.flows).unwrap();
    let topo = schema::parse_topology(c.topology.as_ref()).unwrap();
    let mut checked = 0;
    let mut bad = Vec::new();
    for mode in ["nftables", "iptables", "ipvs", "userspace"] {
        for f in &flows {
            let Some(f) = for_mode(f, mode) else {
                continue;
            };
            let f = &f;
            let Some(from) = client(&c, &topo, f) else {
                continue;
            };
            let mut args = vec!["trace".to_string()];
            args.extend(c.compile_args(dir));
            args.extend([
                "--backend".into(),
                mode.into(),
                "--from".into(),
                from.clone(),
                "--to".into(),
                f.to.to_string(),
                "--port".into(),
                f.port.to_string(),
                "--proto".into(),
                f.proto.to_string(),
                "--output".into(),
                "json".into(),
            ]);
            if !topo.node_addresses.is_empty() {
                let l: Vec<String> = topo.node_addresses.iter().map(|a| a.to_string()).collect();
                args.extend(["--local-address".into(), l.join(",")]);
            }
            let out = Command::new(env!("CARGO_BIN_EXE_svcc"))
                .args(&args)
                .output()
                .unwrap();
            if !out.status.success() {
                bad.push(format!(
                    "{name} {mode} {}: svcc trace failed: {}",
                    f.label(),
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
            let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let got_backends: BTreeSet<(SocketAddr, bool)> = t["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let a: IpAddr = b["address"].as_str().unwrap().parse().unwrap();
                    let p = b["port"].as_u64().unwrap() as u16;
                    (SocketAddr::new(a, p), b["masquerade"].as_bool().unwrap())
                })
                .collect();
            let got = (
                t["verdict"].as_str().unwrap().to_string(),
                got_backends,
                (t["affinity"].as_bool().unwrap() || keeps_one(&t["scheduler"]))
                    && t["verdict"] == "dnat",
            );
            let want = expected(f);
            checked += 1;
            if got != want {
                let steps: Vec<String> = t["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        format!(
                            "      {}: {}",
                            s["what"].as_str().unwrap(),
                            s["why"].as_str().unwrap()
                        )
                    })
                    .collect();
                bad.push(format!(
                    "{name} {mode} {} (from {from}):\n    expected {want:?}\n    traced   {got:?}\n{}",
                    f.label(),
                    steps.join("\n")
                ));
            }
        }
    }
    (checked, bad)
}

#[test]
fn trace_agrees_with_every_flow() {
    let cases = case::all_cases();
    assert!(!cases.is_empty());
    // Two workers: each trace is a process (the CLI is what users run).
    let (a, b): (Vec<_>, Vec<_>) = cases.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let run = |list: Vec<(usize, &std::path::PathBuf)>| {
        let mut n = 0;
        let mut bad = Vec::new();
        for (_, d) in list {
            let (c, b) = check_case(d);
            n += c;
            bad.extend(b);
        }
        (n, bad)
    };
    let (r1, r2) = std::thread::scope(|s| {
        let h = s.spawn(|| run(a));
        let r2 = run(b);
        (h.join().unwrap(), r2)
    });
    let checked = r1.0 + r2.0;
    let bad: Vec<String> = r1.1.into_iter().chain(r2.1).collect();
    assert!(checked > 300, "only {checked} flows checked");
    assert!(
        bad.is_empty(),
        "{} of {checked} flows disagree with svcc trace:\n{}",
        bad.len(),
        bad.join("\n")
    );
    eprintln!("{checked} flows agree with svcc trace");
}

/// Services named in a case's manifests (`ns/name`), for `svcc explain`.
fn services(dir: &Path) -> Vec<String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    fn walk(v: &serde_yaml_ng::Value, out: &mut Vec<String>) {
        if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
            for i in items {
                walk(i, out);
            }
        }
        if v.get("kind").and_then(|k| k.as_str()) == Some("Service") {
            let m = &v["metadata"];
            let ns = m
                .get("namespace")
                .and_then(|x| x.as_str())
                .unwrap_or("default");
            if let Some(n) = m.get("name").and_then(|x| x.as_str()) {
                out.push(format!("{ns}/{n}"));
            }
        }
    }
    for f in case::manifest_files(dir) {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            if let Ok(v) = serde_yaml_ng::Value::deserialize(doc) {
                walk(&v, &mut out);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The text of `svcc explain` for every Service of every case, and of `svcc trace` for every
/// flow (nftables mode), pinned: review changes like code.
#[test]
fn trace_and_explain_text() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for abs in case::all_cases() {
        // Relative paths, so the text does not depend on where the clone lives.
        let dir = abs.strip_prefix(root).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let c = Case::load(&abs).unwrap();
        let run = |args: Vec<String>| {
            let out = Command::new(env!("CARGO_BIN_EXE_svcc"))
                .current_dir(root)
                .args(&args)
                .output()
                .unwrap();
            format!(
                "$ svcc {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let mut report = String::new();
        for s in services(&abs) {
            let mut args = vec!["explain".to_string(), s];
            args.extend(c.compile_args(dir));
            report.push_str(&run(args));
            report.push('\n');
        }
        let flows = schema::parse_flows(&c.flows).unwrap();
        let topo = schema::parse_topology(c.topology.as_ref()).unwrap();
        for f in flows.iter().filter_map(|f| for_mode(f, "nftables")) {
            let Some(from) = client(&c, &topo, &f) else {
                continue;
            };
            let mut args = vec!["trace".to_string()];
            args.extend(c.compile_args(dir));
            args.extend([
                "--from".into(),
                from,
                "--to".into(),
                f.to.to_string(),
                "--port".into(),
                f.port.to_string(),
                "--proto".into(),
                f.proto.to_string(),
            ]);
            if !topo.node_addresses.is_empty() {
                let l: Vec<String> = topo.node_addresses.iter().map(|a| a.to_string()).collect();
                args.extend(["--local-address".into(), l.join(",")]);
            }
            report.push_str(&run(args));
            report.push('\n');
        }
        insta::assert_snapshot!(name, report);
    }
}

/// Bad input: clear messages and exit statuses; objects with errors are left out and named.
#[test]
fn bad_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let case = "fixtures/cases/clusterip-basic/manifests.yaml";
    let run = |args: &[&str], extra: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend([
            "--hostname-override",
            "node-a",
            "--node-ip",
            "192.168.0.2",
            case,
        ]);
        a.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_svcc"))
            .current_dir(root)
            .args(&a)
            .output()
            .unwrap()
    };
    let trace = |from: &str, port: &str, extra: &[&str]| {
        run(
            &[
                "trace",
                "--from",
                from,
                "--to",
                "172.30.0.10",
                "--port",
                port,
            ],
            extra,
        )
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    // A Service that does not exist: exit 1 and the nearest name.
    let out = run(&["explain", "default/wbe"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no Service default/wbe in the input; did you mean default/web?"),
        "{}",
        stderr(&out)
    );
    // A source that is not an address: exit 2.
    let out = trace("pod-a", "80", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--from \"pod-a\": not an IP address or `node`"));
    // A port out of range: clap refuses it (exit 2).
    assert_eq!(trace("10.0.0.5", "70000", &[]).status.code(), Some(2));
    // Mixed families.
    let out = trace("fd00::5", "80", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("different IP families"));
    // Inputs with errors: the valid objects are traced, the others listed as left out.
    let out = trace(
        "10.0.0.5",
        "80",
        &["--output", "json", "fixtures/bad/svc-name-uppercase.yaml"],
    );
    assert_eq!(out.status.code(), Some(0));
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["verdict"], "dnat");
    let left = t["left_out"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].as_str().unwrap().starts_with(
        "fixtures/bad/svc-name-uppercase.yaml:5:3: Service default/Web: metadata.name"
    ));
}
