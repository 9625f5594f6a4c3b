//! Running one case through one loader: build the ruleset, build the topology, load, start the
//! servers, run the flows (in parallel), judge them, report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::case::{self, Case};
use crate::client::{try_once, Seen};
use crate::loader::{CaseInput, Loader};
use crate::manifest;
use crate::netns;
use crate::schema::{self, Expect, Flow, Masquerade, Source, Topology};
use crate::server::Server;
use crate::topo::{Plan, Role};

/// Timeout of a try whose expected outcome is "no answer".
pub const DROP_WAIT: Duration = Duration::from_millis(400);
/// Timeout of any other try (only reached when something is wrong).
pub const ANSWER_WAIT: Duration = Duration::from_millis(1500);
const MAX_PARALLEL_FLOWS: usize = 8;
/// Client source ports (each try of a case gets the next one).
const CLIENT_PORTS: (u16, u16) = (20000, 60000);

pub static FLOWS_RUN: AtomicUsize = AtomicUsize::new(0);
pub static TRIES_RUN: AtomicUsize = AtomicUsize::new(0);
static CASE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A case, loaded and checked (all of this happens before any test runs, so a mistake in a
/// case file shows as a failing test with the file and field).
pub struct Prepared {
    pub name: String,
    pub dir: PathBuf,
    pub case: Case,
    pub flows: Vec<Flow>,
    pub topology: Topology,
    pub plan: Plan,
}

pub fn prepare(dir: &Path) -> Result<Prepared, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string();
    let file = dir.join("case.yaml");
    let at = |e: String| format!("{}: {e}", file.display());
    let case = Case::load(dir)?;
    let flows = schema::parse_flows(&case.flows).map_err(at)?;
    let topology = schema::parse_topology(case.topology.as_ref()).map_err(at)?;
    let files = case::manifest_files(dir);
    if files.is_empty() {
        return Err(format!(
            "{}: no manifest files next to case.yaml",
            dir.display()
        ));
    }
    let scan = manifest::scan(&files)?;
    let plan = Plan::new(
        &case.node.ips,
        &case.node.cluster_cidr,
        &topology,
        &scan,
        &flows,
    )
    .map_err(at)?;
    // Every flow must be runnable and every expected backend must have a server.
    for f in &flows {
        client_of(&plan, f).map_err(|e| at(format!("{}: {e}", f.label())))?;
        let expects = std::iter::once(("expect".to_string(), &f.expect)).chain(
            f.expect_on
                .iter()
                .map(|(k, e)| (format!("expectOn.{k}"), e)),
        );
        for (field, e) in expects {
            if let Expect::Backends { backends, .. } = e {
                for (i, b) in backends.iter().enumerate() {
                    let ok = scan.endpoint_ips.contains(&b.ip()) || plan.is_node_ip(&b.ip());
                    if !ok {
                        return Err(at(format!(
                            "flows[{}].{field}.backends[{i}]: {b} is not an endpoint address of the manifests",
                            f.index
                        )));
                    }
                }
            }
        }
    }
    Ok(Prepared {
        name,
        dir: dir.to_path_buf(),
        case,
        flows,
        topology,
        plan,
    })
}

/// (host index, address to bind or None) of a flow's client.
fn client_of(plan: &Plan, f: &Flow) -> Result<(usize, Option<IpAddr>), String> {
    let fam = |a: &&IpAddr| a.is_ipv4() == f.to.is_ipv4();
    let fam_name = if f.to.is_ipv4() { "IPv4" } else { "IPv6" };
    match &f.from {
        Source::Node => Ok((0, None)),
        Source::Pod => {
            let a = plan.pod_clients.iter().find(fam).ok_or_else(|| {
                format!("from: pod needs an {fam_name} pod client (node.clusterCidr or topology.podClients)")
            })?;
            Ok((plan.owner[a], Some(*a)))
        }
        Source::External => {
            let a = plan.ext_clients.iter().find(fam).ok_or_else(|| {
                format!("from: external needs an {fam_name} address in topology.externalClients")
            })?;
            Ok((plan.owner[a], Some(*a)))
        }
        Source::Addr(a) => match plan.owner.get(a) {
            Some(h) if plan.hosts[*h].role == Role::Other => {
                Err(format!("from: {a} is a destination address, not a client"))
            }
            Some(h) => Ok((*h, Some(*a))),
            None => Err(format!("from: {a} has no namespace")),
        },
    }
}

/// The verdict on one flow.
struct FlowResult {
    flow_idx: usize,
    seen: Vec<Seen>,
    problems: Vec<String>,
    elapsed: Duration,
}

fn judge(plan: &Plan, f: &Flow, seen: &[Seen]) -> Vec<String> {
    let mut problems = Vec::new();
    let to = SocketAddr::new(f.to, f.port);
    match &f.expect {
        Expect::Drop => {
            for (i, s) in seen.iter().enumerate() {
                if !matches!(s, Seen::Timeout | Seen::LocalDrop) {
                    problems.push(format!("try {i}: {s}"));
                }
            }
        }
        Expect::Reject => {
            for (i, s) in seen.iter().enumerate() {
                if !matches!(s, Seen::Refused | Seen::Unreachable(_)) {
                    problems.push(format!("try {i}: {s}"));
                }
            }
        }
        Expect::Untouched => {
            for (i, s) in seen.iter().enumerate() {
                match s {
                    Seen::Answer {
                        backend,
                        src,
                        client,
                    } if *backend == to && src == client => {}
                    _ => problems.push(format!("try {i}: {s}")),
                }
            }
        }
        Expect::Backends {
            backends,
            masquerade,
        } => {
            let mut hit: BTreeMap<SocketAddr, usize> = BTreeMap::new();
            for (i, s) in seen.iter().enumerate() {
                match s {
                    Seen::Answer {
                        backend,
                        src,
                        client,
                    } => {
                        if !backends.contains(backend) {
                            problems.push(format!("try {i}: {s}: not an expected backend"));
                            continue;
                        }
                        *hit.entry(*backend).or_default() += 1;
                        let masq_seen = src != client;
                        let want = masquerade.expected_for(backend);
                        // From the node itself the masqueraded address is the client's own:
                        // only the port can change, and fully-random may (rarely) pick the same
                        // one. The address is what matters there.
                        let from_node = plan.is_node_ip(&client.ip()) && src.ip() == client.ip();
                        if want && !masq_seen && !from_node {
                            problems.push(format!(
                                "try {i}: {s}: expected the node's address (masquerade)"
                            ));
                        } else if want && !plan.is_node_ip(&src.ip()) {
                            problems.push(format!(
                                "try {i}: {s}: source rewritten, but not to a node IP"
                            ));
                        } else if !want && masq_seen {
                            problems.push(format!(
                                "try {i}: {s}: expected the client's own address (no masquerade)"
                            ));
                        }
                    }
                    _ => problems.push(format!("try {i}: {s}")),
                }
            }
            if problems.is_empty() {
                if f.affinity {
                    if hit.len() > 1 {
                        let d: Vec<String> = hit.iter().map(|(b, n)| format!("{b} x{n}")).collect();
                        problems.push(format!("affinity broken: tries went to {}", d.join(", ")));
                    }
                } else {
                    let missing: Vec<String> = backends
                        .iter()
                        .filter(|b| !hit.contains_key(b))
                        .map(|b| b.to_string())
                        .collect();
                    if !missing.is_empty() {
                        let d: Vec<String> = hit.iter().map(|(b, n)| format!("{b} x{n}")).collect();
                        problems.push(format!(
                            "never reached in {} tries: {} (reached: {})",
                            seen.len(),
                            missing.join(", "),
                            d.join(", ")
                        ));
                    }
                }
            }
        }
    }
    problems
}

fn summarize(seen: &[Seen]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in seen {
        let key = match s {
            // Group answers by backend and whether the source was kept.
            Seen::Answer {
                backend,
                src,
                client,
            } => {
                if src == client {
                    format!("answered by {backend}, source kept")
                } else {
                    format!("answered by {backend}, source seen {}", src.ip())
                }
            }
            other => other.to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} x {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs a prepared case through a loader. `Err` carries the whole report.
pub fn run_case(p: &Prepared, loader: &dyn Loader, loader_label: &str) -> Result<(), String> {
    let work_root = std::env::temp_dir().join(format!("svcc-flow-{}", std::process::id()));
    let work = work_root.join(format!("{loader_label}-{}", p.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;

    let input = CaseInput {
        name: &p.name,
        dir: &p.dir,
        case: &p.case,
    };
    let file = loader
        .build(&input, &work)
        .map_err(|e| format!("{e}\n(work dir kept: {})", work.display()))?;

    let seq = CASE_SEQ.fetch_add(1, Ordering::SeqCst);
    let built = p
        .plan
        .build(&seq.to_string())
        .map_err(|e| format!("topology: {e}"))?;
    let names = built.ns.names.clone();
    let node_ns = names[0].clone();
    loader.load(&node_ns, &file, &input).map_err(|e| {
        format!(
            "loading {} failed ({}):\n{e}\n(work dir kept: {})",
            file.display(),
            loader.name(),
            work.display()
        )
    })?;
    // A daemon the loader runs while the flows run (userspace: `svcc run`), stopped on return.
    let _running = loader.start(&node_ns, &file, &input).map_err(|e| {
        format!(
            "starting {} failed:\n{e}\n(work dir kept: {})",
            loader.name(),
            work.display()
        )
    })?;

    let binds: Vec<(String, Vec<IpAddr>)> = p
        .plan
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut addrs = h.addrs.clone();
            if h.role == Role::Node {
                addrs.push(IpAddr::from([127, 0, 0, 1]));
                addrs.push("::1".parse().unwrap());
            }
            (names[i].clone(), addrs)
        })
        .collect();
    let ports: Vec<u16> = p.plan.ports.iter().copied().collect();
    let server = Server::start(&binds, &ports).map_err(|e| format!("servers: {e}"))?;

    // `skip: {iptables: …}` / `expectOn: {iptables: …}` cover every iptables flavour
    // (iptables-nft, iptables-legacy).
    let loader_name = loader.name();
    let flows: Vec<Flow> = p
        .flows
        .iter()
        .filter_map(|f| f.for_loader(&loader_name))
        .map(|mut f| {
            // Loader-level rule (docs/FLOW-TESTS.md): a proxy's backends always see the node.
            if loader.source_is_node() {
                if let Expect::Backends { masquerade, .. } = &mut f.expect {
                    *masquerade = Masquerade::All(true);
                }
            }
            f
        })
        .collect();
    let skipped = p.flows.len() - flows.len();
    let results: Mutex<Vec<FlowResult>> = Mutex::new(Vec::new());
    // Source ports, unique within the case (see client::try_once), never a server port.
    let next_port = AtomicUsize::new(0);
    let sport = || loop {
        let n = next_port.fetch_add(1, Ordering::Relaxed);
        let port =
            (CLIENT_PORTS.0 as usize + n % (CLIENT_PORTS.1 - CLIENT_PORTS.0) as usize) as u16;
        if !p.plan.ports.contains(&port) {
            break port;
        }
    };
    let next = AtomicUsize::new(0);
    let workers = if p.topology.sequential || loader.sequential_flows() {
        1
    } else {
        flows.len().clamp(1, MAX_PARALLEL_FLOWS)
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(f) = flows.get(i) else { break };
                let t0 = Instant::now();
                let (host, bind) = client_of(&p.plan, f).expect("checked in prepare");
                let dst = SocketAddr::new(f.to, f.port);
                let wait = if f.expect == Expect::Drop {
                    DROP_WAIT
                } else {
                    ANSWER_WAIT
                };
                let mut seen = Vec::new();
                match netns::enter(&names[host]) {
                    Ok(()) => {
                        for _ in 0..f.tries() {
                            seen.push(try_once(f.proto, bind, sport(), dst, wait));
                        }
                    }
                    Err(e) => seen.push(Seen::Error(e)),
                }
                let problems = judge(&p.plan, f, &seen);
                TRIES_RUN.fetch_add(seen.len(), Ordering::Relaxed);
                results.lock().unwrap().push(FlowResult {
                    flow_idx: f.index,
                    seen,
                    problems,
                    elapsed: t0.elapsed(),
                });
            });
        }
    });
    FLOWS_RUN.fetch_add(flows.len(), Ordering::Relaxed);
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.flow_idx);
    let failed: Vec<&FlowResult> = results.iter().filter(|r| !r.problems.is_empty()).collect();

    if let Some(secs) = std::env::var("SVCC_FLOW_HOLD")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        println!(
            "  {}: holding the namespaces for {secs}s (node: {node_ns})",
            p.name
        );
        std::thread::sleep(Duration::from_secs(secs));
    }
    if std::env::var("SVCC_FLOW_VERBOSE").is_ok_and(|v| v == "1") {
        for fr in &results {
            let f = flows.iter().find(|f| f.index == fr.flow_idx).unwrap();
            println!(
                "  {} {}: {} [{:.2}s] {}",
                if fr.problems.is_empty() {
                    "ok  "
                } else {
                    "FAIL"
                },
                p.name,
                f.label(),
                fr.elapsed.as_secs_f64(),
                summarize(&fr.seen)
            );
        }
    }
    if failed.is_empty() {
        drop(server);
        drop(built);
        let _ = std::fs::remove_dir_all(&work);
        if skipped > 0 {
            println!(
                "  {}: {skipped} flow(s) skipped for loader {}",
                p.name,
                loader.name()
            );
        }
        return Ok(());
    }

    // Report: what was expected, what was seen, where the rules are.
    let live = loader.dump(&node_ns);
    let live_path = work.join("loaded-ruleset.txt");
    let _ = std::fs::write(&live_path, &live);
    drop(server);
    drop(built);
    let mut r = String::new();
    let _ = writeln!(
        r,
        "{} of {} flows failed in case {} ({}; loader {})",
        failed.len(),
        flows.len(),
        p.name,
        p.case.description.trim(),
        loader.name()
    );
    for fr in &failed {
        let f = flows.iter().find(|f| f.index == fr.flow_idx).unwrap();
        let _ = writeln!(r, "\n  {}", f.label());
        let _ = writeln!(
            r,
            "    expected: {}{}",
            f.expect,
            if f.affinity { " (affinity)" } else { "" }
        );
        let _ = writeln!(r, "    seen:     {}", summarize(&fr.seen));
        for pr in fr.problems.iter().take(5) {
            let _ = writeln!(r, "      - {pr}");
        }
        if fr.problems.len() > 5 {
            let _ = writeln!(r, "      - ... {} more", fr.problems.len() - 5);
        }
        let _ = writeln!(
            r,
            "    ({} tries, {:.2}s)",
            fr.seen.len(),
            fr.elapsed.as_secs_f64()
        );
    }
    let _ = writeln!(r, "\n  topology:\n{}", p.plan.describe(&names));
    let _ = writeln!(r, "  case:           {}", p.dir.join("case.yaml").display());
    let _ = writeln!(r, "  ruleset loaded: {}", file.display());
    let _ = writeln!(
        r,
        "  live ruleset:   {} (after the flows)",
        live_path.display()
    );
    let _ = std::fs::write(work.join("report.txt"), &r);
    Err(r)
}
