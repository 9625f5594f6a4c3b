//! Structured property test: generated clusters (Services, EndpointSlices, Nodes and node
//! settings of realistic shape, `tests/gen/structured.rs`, the generator the `compile` fuzz
//! target uses) compile deterministically, print nft text that the grammar reads back as the
//! compiled model, and — as root — give rulesets the kernel accepts: `nft -c -f` for nftables,
//! `iptables-restore --test` / `ip6tables-restore --test` for iptables.
//!
//! Not root (or no nft): the kernel checks are skipped with a message, unless
//! `SVCC_FLOW_REQUIRE=1` (CI), where that is a failure. `PROPTEST_CASES` overrides the
//! number of cases (64).

#[path = "gen/structured.rs"]
mod structured;

use std::cell::Cell;
use std::io::Write;
use std::process::{Command, Stdio};

use arbitrary::Unstructured;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use svcc_compiler::nft::model::Family;

fn kernel_checks() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tool = |t: &str, a: &str| {
        Command::new(t)
            .arg(a)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = root && tool("nft", "--version") && tool("iptables-restore", "--version");
    if !ok {
        if std::env::var_os("SVCC_FLOW_REQUIRE").is_some_and(|v| v == "1") {
            panic!("SVCC_FLOW_REQUIRE=1 but the kernel checks cannot run (root, nft, iptables-restore)");
        }
        eprintln!("SKIPPED kernel checks (nft -c, iptables-restore --test): needs root and nft");
    }
    ok
}

/// Feeds `text` to `cmd args…` on stdin; the tool's complaint if it refuses it.
fn refused(cmd: &str, args: &[&str], text: &str) -> Option<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

#[test]
fn generated_clusters_compile_to_rulesets_the_kernel_accepts() {
    let kernel = kernel_checks();
    let default = ProptestConfig::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        // The same cases every run (CI must not flake), unless PROPTEST_RNG_SEED says.
        rng_seed: match std::env::var_os("PROPTEST_RNG_SEED") {
            Some(_) => default.rng_seed,
            None => RngSeed::Fixed(0x5ecc),
        },
        failure_persistence: None,
        ..default
    });
    let (with_errors, services) = (Cell::new(0), Cell::new(0));
    let result = runner.run(&proptest::collection::vec(any::<u8>(), 64..4096), |bytes| {
        let Ok(case) = structured::case(&mut Unstructured::new(&bytes)) else {
            return Ok(());
        };
        let c = structured::check(&case);
        with_errors.set(with_errors.get() + usize::from(!c.errors.is_empty()));
        services.set(services.get() + c.nft.matches("cluster endpoints\"").count());
        if kernel {
            // The text starts with `table ip svcc` + `delete table`: a check, no commit.
            if let Some(e) = refused("nft", &["-c", "-f", "-"], &c.nft) {
                let f = std::env::temp_dir().join("svcc-property-refused.nft");
                let _ = std::fs::write(&f, &c.nft);
                return Err(TestCaseError::fail(format!(
                    "nft -c refused the ruleset ({}):\n{e}\ninputs: {:#?}",
                    f.display(),
                    case.sources
                )));
            }
            for (fam, text) in &c.iptables {
                let tool = match fam {
                    Family::Ip => "iptables-restore",
                    Family::Ip6 => "ip6tables-restore",
                };
                if let Some(e) = refused(tool, &["--test", "--noflush"], text) {
                    return Err(TestCaseError::fail(format!(
                        "{tool} --test refused the rules:\n{e}\n{text}\ninputs: {:#?}",
                        case.sources
                    )));
                }
            }
        }
        Ok(())
    });
    eprintln!(
        "{} cases: {} with invalid objects left out, {} service chains",
        cases(),
        with_errors.get(),
        services.get()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
