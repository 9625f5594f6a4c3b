//! Manifest text (YAML or JSON; anything) → parse, lower, locate diagnostics, build, render.
//! Split at NUL bytes into several files, so cross-file joins are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let sources: Vec<Source> = text
        .split('\0')
        .take(4)
        .enumerate()
        .map(|(i, t)| Source {
            name: format!("in-{i}.yaml"),
            text: t.to_string(),
        })
        .collect();
    let settings = NodeSettings {
        hostname: "node-a".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        ..NodeSettings::default()
    };
    // Parse alone (the public entry), then locate whatever it reported.
    let mut diags = Vec::new();
    let parsed = svcc_compiler::manifest::parse_sources(&sources, &mut diags);
    drop(parsed);
    svcc_compiler::manifest::locate(&mut diags, &sources);
    // And the whole compile, keep-going, with both writers.
    let out = compile(&sources, &settings, CompileOptions { keep_going: true })
        .expect("keep-going never fails");
    let _ = out.nft_text();
    for r in out.iptables() {
        let _ = r.restore_text();
    }
});
