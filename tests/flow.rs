//! Packet-flow tests in the real kernel (issue 3).
//!
//! Every `fixtures/cases/<name>/` is one test: its manifests are compiled by `svcc compile`, the
//! ruleset is loaded into a fresh node namespace, and each flow of `case.yaml` is tried with
//! real TCP/UDP connections from pod, node and external namespaces. See docs/FLOW-TESTS.md.
//!
//! Needs root (network namespaces); without it every case is reported as ignored, unless
//! `SVCC_FLOW_REQUIRE=1`, which makes that an error.

#[path = "common/case.rs"]
mod case;
#[path = "flow/client.rs"]
mod client;
#[path = "flow/loader.rs"]
mod loader;
#[path = "flow/manifest.rs"]
mod manifest;
#[path = "flow/netns.rs"]
mod netns;
#[path = "flow/run.rs"]
mod run;
#[path = "flow/schema.rs"]
mod schema;
#[path = "flow/server.rs"]
mod server;
#[path = "flow/topo.rs"]
mod topo;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};

/// Why the flow tests cannot run here, if they cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let ok = std::process::Command::new(tool)
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Some(format!("`{tool}` not found"));
        }
    }
    None
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn main() {
    let args = Arguments::from_args();
    let started = Instant::now();
    let why_not = unsupported();
    if let Some(why) = &why_not {
        if std::env::var("SVCC_FLOW_REQUIRE").as_deref() == Ok("1") {
            eprintln!("flow: cannot run: {why} (SVCC_FLOW_REQUIRE=1)");
            std::process::exit(1);
        }
        eprintln!("flow: {why}: every case is ignored (run as root to test packet flows)");
    } else {
        netns::install_signal_cleanup();
        raise_nofile();
        netns::sweep_stale();
    }

    let loaders: Vec<Arc<dyn loader::Loader>> = match loader::from_env() {
        Ok(v) => v.into_iter().map(Arc::from).collect(),
        Err(e) => {
            eprintln!("flow: {e}");
            std::process::exit(1);
        }
    };
    let several = loaders.len() > 1;
    let mut trials = Vec::new();
    let mut case_count = 0;
    let mut flow_count = 0;
    for dir in case::all_cases() {
        let prepared = run::prepare(&dir);
        let base = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let prepared = match prepared {
            Ok(p) => Arc::new(p),
            Err(e) => {
                trials.push(Trial::test(base, move || Err(Failed::from(e))).with_kind("flow"));
                continue;
            }
        };
        case_count += 1;
        flow_count += prepared.flows.len();
        for l in &loaders {
            let label = l.name();
            let name = if several {
                format!("{label}/{base}")
            } else {
                base.clone()
            };
            let skip = prepared.case.skip_flows.is_some() || prepared.flows.is_empty();
            if let Some(reason) = &prepared.case.skip_flows {
                eprintln!("flow: {base}: skipped: {reason}");
            }
            let (p, l) = (prepared.clone(), l.clone());
            let trial = Trial::test(name, move || {
                let first = run::run_case(&p, l.as_ref(), &label);
                match first {
                    // IPVS runs only in the emulated VM (TCG): a case that fails there is run
                    // once more in fresh namespaces, and fails only if it fails again; the
                    // first failure is printed so a flake stays visible (docs/FLOW-TESTS.md).
                    Err(e) if label == "ipvs" => {
                        eprintln!(
                            "flow: {label}/{}: failed once, running it again:\n{e}",
                            p.name
                        );
                        run::run_case(&p, l.as_ref(), &label).map_err(Failed::from)
                    }
                    r => r.map_err(Failed::from),
                }
            })
            .with_kind("flow")
            .with_ignored_flag(skip || why_not.is_some());
            trials.push(trial);
        }
    }

    trials.push(
        Trial::test("schema-errors", || {
            schema::self_test().map_err(Failed::from)
        })
        .with_kind("self-test"),
    );

    let conclusion = libtest_mimic::run(&args, trials);
    if why_not.is_none() {
        netns::sweep_mine();
        let root = std::env::temp_dir().join(format!("svcc-flow-{}", std::process::id()));
        let _ = std::fs::remove_dir(&root); // only if empty: failed cases keep their work dirs
        println!(
            "flow: {case_count} cases with {flow_count} flows; ran {} flows ({} tries) in {:.1}s",
            run::FLOWS_RUN.load(Ordering::Relaxed),
            run::TRIES_RUN.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
    conclusion.exit();
}
