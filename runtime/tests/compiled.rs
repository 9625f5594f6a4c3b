//! The compiler's real output (the nft snapshots of every fixture case), parsed back with the
//! grammar crate and applied over netlink, must give the kernel state `nft -f` gives.

mod common;

use common::*;
use svcc_runtime::{Applier, ApplyOptions};

fn snapshots() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/snapshots");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("tests/snapshots") {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("snapshots__nft__") || !name.ends_with(".snap") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        // insta header: "---\n...\n---\n", then the script.
        let body = text
            .splitn(3, "---\n")
            .nth(2)
            .unwrap_or_default()
            .to_string();
        if body.starts_with("#!/usr/sbin/nft") {
            out.push((name, body));
        }
    }
    out.sort();
    out
}

#[test]
fn every_compiled_case_applies_like_nft_f() {
    let cases = snapshots();
    assert!(cases.len() >= 20, "found {} nft snapshots", cases.len());
    for (name, text) in cases {
        let model = svcc_grammar::parse_ruleset(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let mut ns = Netns::new();
        ns.enter();
        let mut ap = Applier::new().unwrap();
        let rep = ap
            .apply(&model, &ApplyOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(rep.committed, "{name}");
        let oracle = Netns::new();
        oracle
            .nft_f(&text)
            .unwrap_or_else(|e| panic!("{name}: nft -f: {e}"));
        for t in &model.tables {
            let fam = t.family.keyword();
            assert_eq!(
                sort_elements(&ns.list_table(fam)),
                sort_elements(&oracle.list_table(fam)),
                "{name}: {fam} svcc differs"
            );
            let dbg = |n: &Netns| {
                sort_element_lines(&n.nft(&["--debug=netlink", "list", "table", fam, "svcc"]))
            };
            assert_eq!(
                dbg(&ns),
                dbg(&oracle),
                "{name}: {fam} svcc differs at the netlink level"
            );
        }
        let again = ap.apply(&model, &ApplyOptions::default()).unwrap();
        assert_eq!(again.messages, 0, "{name}: re-apply sent something");
        drop(ns);
    }
}
