//! `svcc apply --ruleset`, phase by phase, for `scripts/perf.sh`: parse a ruleset file (as
//! `svcc compile` writes it) with the fast parser, then apply it in one transaction. Run it
//! in a throwaway network namespace (it programs the current one):
//!
//!   ip netns add b; ip netns exec b target/release/examples/apply-ruleset FILE [--pest]; ip netns del b
//!
//! `--pest` also parses the file with the pest grammar (timed apart) and checks that both
//! parsers give the same model. Prints one line: parse, apply (encode + kernel) times in
//! seconds and the statements the fast parser left to pest.

use std::time::Instant;

use svcc_grammar::fast::{parse_reader, Outcome};
use svcc_runtime::{Applier, ApplyOptions};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: apply-ruleset FILE [--pest]");
    let pest = std::env::args().any(|a| a == "--pest");
    let t0 = Instant::now();
    let f = std::fs::File::open(&path).expect("open the ruleset file");
    let parsed = match parse_reader(std::io::BufReader::with_capacity(1 << 16, f)).expect("read") {
        Outcome::Parsed(p) => p,
        Outcome::Unrecognized(u) => {
            panic!("the fast parser gave up at line {}: {}", u.line, u.reason)
        }
    };
    let t1 = Instant::now();
    let mut pest_time = String::new();
    if pest {
        let text = std::fs::read_to_string(&path).expect("read the ruleset file");
        let p0 = Instant::now();
        let m = svcc_grammar::parse_ruleset(&text).expect("pest parses the file");
        pest_time = format!(" pest {:.3}", p0.elapsed().as_secs_f64());
        assert!(
            m == parsed.ruleset,
            "the fast parser and pest differ on {path}"
        );
    }
    let t2 = Instant::now();
    let mut applier = Applier::new().expect("netlink");
    let r = applier
        .apply_owned(parsed.ruleset, &ApplyOptions::default())
        .expect("apply");
    let t3 = Instant::now();
    assert!(r.committed && r.full);
    println!(
        "parse {:.3} apply {:.3} encode {:.3} kernel {:.3} pest_statements {}{pest_time}",
        (t1 - t0).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        r.encode_time.as_secs_f64(),
        r.kernel_time.as_secs_f64(),
        parsed.pest_statements,
    );
}
