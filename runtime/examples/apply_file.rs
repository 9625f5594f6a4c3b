//! Applies an nft file written by `svcc compile` in the current network namespace and prints
//! where the time went: `ip netns exec NS cargo run --release -p svcc-runtime --example
//! apply_file -- FILE [FILE2]` (FILE2: applied next, incrementally, by the same applier).

use std::time::Instant;

use svcc_runtime::{Applier, ApplyOptions};

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let mut ap = Applier::new().expect("netlink socket");
    for f in files {
        let t = Instant::now();
        let text = std::fs::read_to_string(&f).expect("read");
        let model = svcc_grammar::parse_ruleset(&text).expect("parse");
        let parse = t.elapsed();
        let s = model.stats();
        let t = Instant::now();
        let rep = ap
            .apply_owned(model, &ApplyOptions::default())
            .expect("apply");
        println!(
            "{f}: {} chains, {} rules, {} elements; parse {:.3} s; apply {:.3} s ({}; {} messages, {} bytes; plan+encode {:.3} s, kernel {:.3} s)",
            s.chains,
            s.rules,
            s.elements,
            parse.as_secs_f64(),
            t.elapsed().as_secs_f64(),
            rep.reason,
            rep.messages,
            rep.bytes,
            rep.encode_time.as_secs_f64(),
            rep.kernel_time.as_secs_f64()
        );
    }
}
