//! Real compiler output: the nft snapshots of the workspace's snapshot tests
//! (`tests/snapshots/snapshots__nft__*.snap`) parse, print back byte for byte, and — as root
//! with nft — load into a throwaway namespace and list back as the normalised model.
//!
//! `SVCC_GRAMMAR_NFT_DIR=<dir>` adds every `*.nft` file of that directory (e.g. the output of
//! `svcc compile` over all fixture cases).

use std::path::PathBuf;
use std::process::Command;

use svcc_compiler::nft::render::render_replace;
use svcc_grammar::{normalize_for_compare, parse_nft_list, parse_ruleset};

/// (file name, nft text) of every nft snapshot; empty if there are none.
fn snapshots() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/snapshots");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("snapshots__nft__") || !name.ends_with(".snap") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        // insta's header: `---`, metadata lines, `---`, then the snapshot.
        let body = text
            .splitn(3, "---\n")
            .nth(2)
            .unwrap_or_default()
            .to_string();
        out.push((name, body));
    }
    if let Some(extra) = std::env::var_os("SVCC_GRAMMAR_NFT_DIR") {
        for e in std::fs::read_dir(&extra)
            .expect("SVCC_GRAMMAR_NFT_DIR")
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".nft") {
                out.push((name, std::fs::read_to_string(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn snapshots_parse_and_print_back() {
    let snaps = snapshots();
    if snaps.is_empty() {
        eprintln!("SKIPPED: no nft snapshots under tests/snapshots");
        return;
    }
    for (name, text) in snaps {
        let m = parse_ruleset(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{}", e.source_line));
        assert!(!m.tables.is_empty(), "{name}: no tables");
        assert_eq!(
            render_replace(&m),
            text,
            "{name}: does not print back the same"
        );
    }
}

fn can_run_nft() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        == Some("0");
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    root && nft
}

#[test]
fn snapshots_list_back_from_the_kernel() {
    if !can_run_nft() {
        eprintln!("SKIPPED: kernel test needs root and nft");
        return;
    }
    for (name, text) in snapshots() {
        let ns = format!("svcc-grammar-snap-{}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success());
        let path = std::env::temp_dir().join(format!("{ns}.nft"));
        std::fs::write(&path, &text).unwrap();
        let load = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        let list = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "list", "ruleset"])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        if !load.status.success() {
            // Loading is the flow tests' business; say so loudly, but it is not a grammar failure.
            eprintln!(
                "WARNING: {name}: nft -f failed: {}",
                String::from_utf8_lossy(&load.stderr)
            );
            continue;
        }
        let listing = String::from_utf8(list.stdout).unwrap();
        let m = parse_ruleset(&text).unwrap();
        let got = parse_nft_list(&listing)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}\n{listing}", e.source_line));
        assert_eq!(
            normalize_for_compare(&m),
            got,
            "{name}\nlisting:\n{listing}"
        );
    }
}
