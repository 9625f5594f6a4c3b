//! The fast ruleset parser (`svcc_grammar::fast`, behind `svcc apply --ruleset`) reads the
//! compiler's output of generated clusters — the property test's structured generator
//! (`tests/gen/structured.rs`) and the benchmark generator (`fixtures/gen/cluster.rs`) — by
//! itself, to exactly the model the pest grammar gives. `PROPTEST_CASES` overrides the number
//! of structured cases (64).

#[path = "gen/structured.rs"]
mod structured;

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use arbitrary::Unstructured;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};
use svcc_grammar::fast::{parse_reader, Outcome};

fn fast_equals_pest(text: &str) -> Result<(), String> {
    let pest = svcc_grammar::parse_ruleset(text).map_err(|e| format!("pest: {e}"))?;
    match parse_reader(text.as_bytes()).unwrap() {
        Outcome::Parsed(p) if p.pest_statements > 0 => {
            Err(format!("{} statements left to pest", p.pest_statements))
        }
        Outcome::Parsed(p) if p.ruleset != pest => Err("the models differ".into()),
        Outcome::Parsed(_) => Ok(()),
        Outcome::Unrecognized(u) => Err(format!("gave up at line {}: {}", u.line, u.reason)),
    }
}

#[test]
fn generated_clusters_parse_fast_to_the_pest_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let default = ProptestConfig::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        rng_seed: match std::env::var_os("PROPTEST_RNG_SEED") {
            Some(_) => default.rng_seed,
            None => RngSeed::Fixed(0xfa57),
        },
        failure_persistence: None,
        ..default
    });
    let result = runner.run(&proptest::collection::vec(any::<u8>(), 64..4096), |bytes| {
        let Ok(case) = structured::case(&mut Unstructured::new(&bytes)) else {
            return Ok(());
        };
        let c = structured::check(&case);
        fast_equals_pest(&c.nft).map_err(|e| TestCaseError::fail(format!("{e}:\n{}", c.nft)))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn benchmark_clusters_parse_fast_to_the_pest_model() {
    for dual_stack in [false, true] {
        let yaml = cluster::generate(&cluster::GenOptions {
            services: 300,
            endpoints: 3000,
            dual_stack,
            ..Default::default()
        });
        let settings = NodeSettings {
            hostname: "node-1".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
            ..Default::default()
        };
        let out = compile(
            &[Source {
                name: "cluster.yaml".into(),
                text: yaml,
            }],
            &settings,
            CompileOptions::default(),
        )
        .expect("the generated cluster compiles");
        let text = out.nft_text();
        // Both tables (the node has an IPv6 address); IPv6 services with --dual-stack.
        assert!(text.contains("table ip6 svcc {"));
        let ip6 = &text[text.find("table ip6 svcc {").unwrap()..];
        assert_eq!(ip6.contains(" . tcp . "), dual_stack);
        if let Err(e) = fast_equals_pest(&text) {
            panic!("dual stack {dual_stack}: {e}");
        }
    }
}
