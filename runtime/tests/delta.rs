//! Endpoint-only changes go to the kernel as deltas made by the compile session; after each,
//! the kernel must hold what `nft -f` of a fresh full compile gives.

#[path = "../../fixtures/gen/cluster.rs"]
mod cluster;
mod common;

use common::*;
use svcc_compiler::session::Session;
use svcc_compiler::{NodeSettings, Source};
use svcc_runtime::{Applier, ApplyOptions};

fn settings() -> NodeSettings {
    NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        cluster_cidrs: vec![
            "10.128.0.0/9".parse().unwrap(),
            "fd00:10:128::/48".parse().unwrap(),
        ],
        ..Default::default()
    }
}

/// The generated cluster with endpoint-only edits: some endpoints become not ready, move to
/// this node or change address, depending on `step`.
fn cluster_at(base: &str, step: usize, sparse: bool) -> Source {
    let (ma, mr, mn) = if sparse { (97, 89, 83) } else { (13, 7, 11) };
    let mut out = String::with_capacity(base.len());
    let mut n = 0;
    for line in base.split_inclusive('\n') {
        if line.starts_with("  - addresses: [") {
            n += 1;
            if n % ma == step % ma {
                let addr = line.trim_start_matches("  - addresses: [");
                let new = if addr.contains(':') {
                    format!("  - addresses: [fd00:10:250::{:x}]\n", n + step)
                } else {
                    format!("  - addresses: [10.250.{}.{}]\n", step, n % 250 + 1)
                };
                out.push_str(&new);
                continue;
            }
        }
        if line.starts_with("    conditions: {ready: true") && n % mr == step % mr {
            out.push_str("    conditions: {ready: false, serving: false, terminating: false}\n");
            continue;
        }
        if line.starts_with("    nodeName: node-") && n % mn == step % mn {
            out.push_str("    nodeName: node-1\n");
            continue;
        }
        out.push_str(line);
    }
    Source {
        name: "cluster.yaml".into(),
        text: out,
    }
}

/// A table listing with its sets, maps and chains in name order (the kernel lists chains in
/// the order they were made, and a delta adds chains last).
fn sort_blocks(listing: &str) -> String {
    let mut head = String::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut cur: Option<String> = None;
    for line in listing.lines() {
        if let Some(b) = cur.as_mut() {
            b.push_str(line);
            b.push('\n');
            if line == "\t}" {
                blocks.push(cur.take().unwrap());
            }
        } else if line.starts_with("\tchain ")
            || line.starts_with("\tset ")
            || line.starts_with("\tmap ")
        {
            cur = Some(format!("{line}\n"));
        } else if !line.is_empty() {
            head.push_str(line);
            head.push('\n');
        }
    }
    blocks.sort();
    head + &blocks.concat()
}

fn full_text(src: &Source) -> String {
    let mut s = Session::new(settings());
    s.set_file(src.clone());
    svcc_compiler::nft::render::render_replace(&s.compile().ruleset)
}

#[test]
fn endpoint_deltas_keep_the_kernel_equal_to_a_full_compile() {
    deltas(false);
}

/// Dual-stack: IPv6 Services with ClientIP affinity have per-endpoint sets (see the nft
/// build), so their endpoint changes take the full path; the rest are still deltas.
#[test]
fn dual_stack_endpoint_deltas() {
    deltas(true);
}

fn deltas(dual_stack: bool) {
    let base = cluster::generate(&cluster::GenOptions {
        services: 120,
        endpoints: 700,
        nodes: 4,
        dual_stack,
        seed: 7,
    });
    let mut s = Session::new(settings());
    s.set_file(cluster_at(&base, 0, dual_stack));
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    let opts = ApplyOptions::default();
    let rep = ap.apply_owned(s.compile().ruleset, &opts).unwrap();
    assert!(rep.full && rep.committed, "{rep:?}");

    let mut n_deltas = 0;
    for step in 1..=5 {
        let src = cluster_at(&base, step, dual_stack);
        assert!(s.set_file(src.clone()));
        match s.compile_delta() {
            Ok(inc) => {
                assert!(
                    inc.changed_ports > 0 && !inc.delta.is_empty(),
                    "step {step}"
                );
                let rep = ap
                    .apply_delta(&inc.delta, &opts)
                    .unwrap()
                    .expect("applied as a delta");
                assert!(rep.committed && !rep.full, "step {step}: {rep:?}");
                n_deltas += 1;
            }
            Err(why) => {
                assert!(dual_stack, "step {step}: an endpoint-only change: {why}");
                // (per-endpoint sets added or removed: a full replace)
                let rep = ap.apply_owned(s.compile().ruleset, &opts).unwrap();
                assert!(rep.committed, "step {step}: {rep:?}");
            }
        }
        let oracle = Netns::new();
        oracle.nft_f(&full_text(&src)).expect("nft -f");
        let fams: &[&str] = if dual_stack { &["ip", "ip6"] } else { &["ip"] };
        for fam in fams {
            let (a, b) = (
                sort_blocks(&sort_elements(&ns.list_table(fam))),
                sort_blocks(&sort_elements(&oracle.list_table(fam))),
            );
            if a != b {
                std::fs::write("/tmp/svcc-delta-kernel.txt", &a).unwrap();
                std::fs::write("/tmp/svcc-delta-full.txt", &b).unwrap();
                panic!("step {step}: table {fam} svcc differs: diff /tmp/svcc-delta-kernel.txt /tmp/svcc-delta-full.txt");
            }
        }
    }
    assert!(n_deltas >= 2, "only {n_deltas} deltas");

    // Whole Services come and go as deltas too: one with an external IP (its external chain
    // jumps to its cluster chain, both new in the same transaction), then its removal.
    let extra = "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: zz}\nspec:\n  clusterIP: 10.96.255.251\n  externalIPs: [203.0.113.251]\n  ports: [{name: http, port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: extra-1\n  namespace: zz\n  labels: {kubernetes.io/service-name: extra}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.253.20]\n- addresses: [10.244.253.21]\nports:\n- {name: http, port: 8080, protocol: TCP}\n";
    let last = cluster_at(&base, 5, dual_stack);
    for text in [extra, ""] {
        s.set_file(Source {
            name: "extra.yaml".into(),
            text: text.into(),
        });
        let inc = s.compile_delta().expect("a Service change is a delta");
        let rep = ap
            .apply_delta(&inc.delta, &opts)
            .unwrap()
            .expect("applied as a delta");
        assert!(rep.committed && !rep.full, "{rep:?}");
        let mut full = Session::new(settings());
        full.set_file(last.clone());
        full.set_file(Source {
            name: "extra.yaml".into(),
            text: text.into(),
        });
        let oracle = Netns::new();
        oracle
            .nft_f(&svcc_compiler::nft::render::render_replace(
                &full.compile().ruleset,
            ))
            .expect("nft -f");
        assert_eq!(
            sort_blocks(&sort_elements(&ns.list_table("ip"))),
            sort_blocks(&sort_elements(&oracle.list_table("ip"))),
            "Service {}",
            if text.is_empty() { "removed" } else { "added" }
        );
    }
    // The whole model after the deltas is what the applier believes the kernel holds.
    let rep = ap.apply_owned(s.compile().ruleset, &opts).unwrap();
    assert_eq!(rep.reason, "no change", "{rep:?}");

    // Someone else touches svcc's table: no delta is trusted any more.
    ns.nft(&[
        "add",
        "element",
        "ip",
        "svcc",
        "cluster-ips",
        "{ 10.96.250.250 }",
    ]);
    s.set_file(cluster_at(&base, 6, dual_stack));
    if let Ok(inc) = s.compile_delta() {
        assert!(ap.apply_delta(&inc.delta, &opts).unwrap().is_none());
    }
    let rep = ap.apply_owned(s.compile().ruleset, &opts).unwrap();
    assert!(rep.full && rep.committed, "{rep:?}");
    let oracle = Netns::new();
    oracle
        .nft_f(&full_text(&cluster_at(&base, 6, dual_stack)))
        .unwrap();
    assert_eq!(
        sort_blocks(&sort_elements(&ns.list_table("ip"))),
        sort_blocks(&sort_elements(&oracle.list_table("ip")))
    );
}
