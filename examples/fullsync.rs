//! Full sync through the netlink applier, phase by phase, for `scripts/perf.sh`: compile a
//! manifest file (parse, lower, build), then apply the model in one transaction. Run it in a
//! throwaway network namespace (it programs the current one):
//!
//!   ip netns add b; ip netns exec b cargo run --release --example fullsync -- cluster.yaml; ip netns del b
//!
//! Prints one line: compile and apply (encode + kernel) times in seconds, and object counts.

use std::time::Instant;

use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};
use svcc_runtime::{Applier, ApplyOptions};

fn main() {
    let path = std::env::args().nth(1).expect("usage: fullsync FILE");
    let text = std::fs::read_to_string(&path).expect("read the manifest file");
    let settings = NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = compile(
        &[Source { name: path, text }],
        &settings,
        CompileOptions::default(),
    )
    .expect("the manifests compile");
    let t1 = Instant::now();
    let st = out.ruleset.stats();
    let mut applier = Applier::new().expect("netlink");
    let r = applier
        .apply_owned(out.ruleset, &ApplyOptions::default())
        .expect("apply");
    let t2 = Instant::now();
    assert!(r.committed && r.full);
    println!(
        "compile {:.3} apply {:.3} encode {:.3} kernel {:.3} messages {} objects {}_sets/maps,_{}_chains,_{}_rules,_{}_elements",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        r.encode_time.as_secs_f64(),
        r.kernel_time.as_secs_f64(),
        r.messages,
        st.sets,
        st.chains,
        st.rules,
        st.elements
    );
}
