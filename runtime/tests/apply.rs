//! The applier against the real kernel, each test in its own network namespace.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use svcc_compiler::nft::model::*;
use svcc_runtime::{Applier, ApplyError, ApplyOptions, MISSING_CHAIN};

fn opts() -> ApplyOptions {
    ApplyOptions::default()
}

#[test]
fn full_apply_lists_like_nft_f() {
    let model = kube_model(3);
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    let rep = ap.apply(&model, &opts()).unwrap();
    assert!(rep.full && rep.committed, "{rep:?}");

    let oracle = Netns::new();
    oracle
        .nft_f(&svcc_compiler::nft::render::render_replace(&model))
        .expect("nft -f of the rendered model");
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle.list_table("ip"))
    );
    // Stronger: the kernel's objects as nft decodes them at the netlink level (expressions,
    // registers, set key/data types and lengths, element flags).
    let dbg = |n: &Netns| n.nft(&["--debug=netlink", "list", "table", "ip", "svcc"]);
    let (a, b) = (
        sort_element_lines(&dbg(&ns)),
        sort_element_lines(&dbg(&oracle)),
    );
    if a != b {
        std::fs::write("/tmp/svcc-dbg-ours.txt", &a).unwrap();
        std::fs::write("/tmp/svcc-dbg-nft.txt", &b).unwrap();
        panic!("netlink-level listings differ: diff /tmp/svcc-dbg-ours.txt /tmp/svcc-dbg-nft.txt");
    }
}

#[test]
fn reapply_same_model_sends_nothing() {
    let model = kube_model(3);
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    ap.apply(&model, &opts()).unwrap();
    let before = ns.ruleset();
    let rep = ap.apply(&model.clone(), &opts()).unwrap();
    assert!(!rep.full && !rep.committed, "{rep:?}");
    assert_eq!(rep.messages, 0);
    assert_eq!(rep.reason, "no change");
    assert_eq!(ns.ruleset(), before);
}

#[test]
fn incremental_changes_are_small_and_exact() {
    let mut model = kube_model(4);
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    ap.apply(&model, &opts()).unwrap();

    // One endpoint moves: its chain is flushed and refilled (flush + 2 rules).
    move_endpoint(&mut model, 1, 0, "10.70.0.7");
    let rep = ap.apply(&model, &opts()).unwrap();
    assert!(!rep.full && rep.committed, "{rep:?}");
    assert_eq!(rep.messages, 3, "{rep:?}");
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle_listing(&model, "ip"))
    );

    // One element changes its verdict: delete + add.
    let t = &mut model.tables[0];
    let no_ep = t
        .sets
        .iter_mut()
        .find(|s| s.name == "no-endpoints")
        .unwrap();
    no_ep.elements[0].data = Some(ElemData::Verdict(Verdict::Accept));
    let rep = ap.apply(&model, &opts()).unwrap();
    assert_eq!(
        (
            rep.messages,
            rep.changes.elements_added,
            rep.changes.elements_deleted
        ),
        (2, 1, 1),
        "{rep:?}"
    );
    assert_eq!(
        normalize(&ns.list_table("ip")),
        normalize(&oracle_listing(&model, "ip"))
    );

    // An endpoint is replaced by another (same count): elements only, no rule.
    let t = &mut model.tables[0];
    let eps = t.sets.iter_mut().find(|s| s.name == "endpoints").unwrap();
    eps.elements[1].data = Some(ElemData::Values(vec![
        Value::Addr(ip("10.81.0.1")),
        Value::Port(9090),
    ]));
    let rep = ap.apply(&model, &opts()).unwrap();
    assert_eq!(
        (
            rep.messages,
            rep.changes.elements_added,
            rep.changes.elements_deleted,
            rep.changes.rules_added
        ),
        (2, 1, 1, 0),
        "{rep:?}"
    );
    assert_eq!(
        normalize(&ns.list_table("ip")),
        normalize(&oracle_listing(&model, "ip"))
    );

    // A service goes away: its 2 elements and 3 chains (elements first: they refer to the
    // chain; the chains are flushed before they are deleted, as they may refer to each other).
    let gone = kube_model(4);
    let mut fewer = model.clone();
    let t = &mut fewer.tables[0];
    t.chains.retain(|c| !c.name.starts_with("svc-3"));
    for s in &mut t.sets {
        s.elements.retain(|e| {
            !gone.tables[0].set("cluster-ips").unwrap().elements[3..].contains(e)
                || s.name != "cluster-ips"
        });
        s.elements.retain(
            |e| !matches!(&e.data, Some(ElemData::Verdict(Verdict::Goto(c))) if c == "svc-3"),
        );
    }
    let rep = ap.apply(&fewer, &opts()).unwrap();
    assert_eq!(rep.messages, 2 + 3 + 3, "{rep:?}");
    assert_eq!(
        (rep.changes.elements_deleted, rep.changes.chains_deleted),
        (2, 3)
    );
    assert_eq!(
        normalize(&ns.list_table("ip")),
        normalize(&oracle_listing(&fewer, "ip"))
    );

    // ... and comes back: 3 chains, 8 rules, 2 element messages.
    let rep = ap.apply(&model, &opts()).unwrap();
    assert_eq!(rep.messages, 3 + 8 + 2, "{rep:?}");
    assert_eq!(
        normalize(&ns.list_table("ip")),
        normalize(&oracle_listing(&model, "ip"))
    );

    // The script of an incremental apply is a valid nft script doing the same.
    let mut moved = model.clone();
    move_endpoint(&mut moved, 2, 1, "10.70.0.9");
    let dry = ap
        .apply(
            &moved,
            &ApplyOptions {
                dry_run: true,
                ..opts()
            },
        )
        .unwrap();
    assert!(!dry.committed && dry.messages == 3);
    assert!(
        dry.script.contains("flush chain ip svcc svc-2-ep1"),
        "{}",
        dry.script
    );
    ns.nft_f(&dry.script).unwrap();
    assert_eq!(
        normalize(&ns.list_table("ip")),
        normalize(&oracle_listing(&moved, "ip"))
    );
}

#[test]
fn concurrent_change_is_detected_and_retried() {
    let model = kube_model(2);
    let mut ns = Netns::new();
    ns.enter();
    let name = ns.name.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    // Another program commits between our read of the generation and our commit (first try only).
    let hook = Arc::new(move |attempt: u32| {
        c2.fetch_add(1, Ordering::SeqCst);
        if attempt == 0 {
            let st = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &name, "nft", "add", "table", "ip", "intruder",
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
    });
    let mut ap = Applier::new().unwrap();
    let rep = ap
        .apply(
            &model,
            &ApplyOptions {
                before_commit: Some(hook),
                ..opts()
            },
        )
        .unwrap();
    assert_eq!(rep.retries, 1, "{rep:?}");
    assert!(rep.committed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let rs = ns.ruleset();
    assert!(rs.contains("table ip intruder"));
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle_listing(&model, "ip"))
    );

    // Always changing: bounded retries, nothing applied.
    let name = ns.name.clone();
    let n = Arc::new(AtomicU32::new(0));
    let hook = Arc::new(move |_| {
        let t = format!("intruder{}", n.fetch_add(1, Ordering::SeqCst));
        std::process::Command::new("ip")
            .args(["netns", "exec", &name, "nft", "add", "table", "ip", &t])
            .status()
            .unwrap();
    });
    let mut m2 = model.clone();
    move_endpoint(&mut m2, 0, 0, "10.70.0.1");
    let before = ns.list_table("ip");
    let err = ap
        .apply(
            &m2,
            &ApplyOptions {
                before_commit: Some(hook),
                max_retries: 3,
                ..opts()
            },
        )
        .unwrap_err();
    assert!(matches!(err, ApplyError::TooManyRetries(3)), "{err}");
    assert_eq!(ns.list_table("ip"), before);
}

#[test]
fn refused_batch_names_the_object_and_changes_nothing() {
    let model = kube_model(2);
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    ap.apply(&model, &opts()).unwrap();
    let before = ns.ruleset();

    // Incremental batch with an invalid rule.
    let mut m2 = model.clone();
    move_endpoint(&mut m2, 0, 1, "10.70.0.2");
    let err = ap
        .apply(
            &m2,
            &ApplyOptions {
                inject_invalid: true,
                ..opts()
            },
        )
        .unwrap_err();
    let msg = err.to_string();
    let ApplyError::Refused(refusals) = &err else {
        panic!("{err}")
    };
    assert!(refusals[0].object.contains(MISSING_CHAIN), "{msg}");
    assert_eq!(
        refusals[0].comment.as_deref(),
        Some("svcc test hook: invalid object")
    );
    assert_eq!(refusals[0].errno, libc_enoent());
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert_eq!(ns.ruleset(), before, "a refused batch must change nothing");

    // Full replace with an invalid rule: the old tables stay.
    let err = ap
        .apply(
            &m2,
            &ApplyOptions {
                inject_invalid: true,
                force_full: true,
                ..opts()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains(MISSING_CHAIN), "{err}");
    assert_eq!(ns.ruleset(), before);

    // An element the kernel refuses (verdict to a missing chain) is named.
    let mut m3 = model.clone();
    let s = m3.tables[0]
        .sets
        .iter_mut()
        .find(|s| s.name == "service-ips")
        .unwrap();
    s.elements.push(elem(
        key3("10.96.9.9", L4Proto::Tcp, 9),
        Some(ElemData::Verdict(Verdict::Goto("nowhere".into()))),
        Some("ns/broken:x"),
    ));
    let err = ap.apply(&m3, &opts()).unwrap_err();
    let ApplyError::Refused(r) = &err else {
        panic!("{err}")
    };
    assert!(r[0].object.contains("service-ips"), "{err}");
    assert_eq!(
        r[0].element.as_deref(),
        Some("10.96.9.9 . tcp . 9 comment \"ns/broken:x\" : goto nowhere"),
        "{err}"
    );
    assert_eq!(ns.ruleset(), before);

    // The applier still knows the kernel's state: the good model applies incrementally.
    let rep = ap.apply(&m2, &opts()).unwrap();
    assert!(!rep.full, "{rep:?}");
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle_listing(&m2, "ip"))
    );
}

fn libc_enoent() -> i32 {
    2
}

const FOREIGN: &str = "table inet firewall {
	set allowed {
		type ipv4_addr
		elements = { 192.0.2.1 }
	}

	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr @allowed accept
		tcp dport 22 accept
	}
}
table ip svcc-not-ours {
	chain c {
		ip daddr 10.0.0.1 drop
	}
}
table ip6 other {
	chain c {
	}
}
";

#[test]
fn foreign_tables_are_untouched_by_apply_and_cleanup() {
    let mut model = kube_model(2);
    let mut ns = Netns::new();
    ns.enter();
    ns.nft_f(FOREIGN).unwrap();
    let listing = |ns: &Netns| {
        ["inet firewall", "ip svcc-not-ours", "ip6 other"]
            .iter()
            .map(|t| {
                ns.nft(&[
                    "list",
                    "table",
                    t.split(' ').next().unwrap(),
                    t.split(' ').nth(1).unwrap(),
                ])
            })
            .collect::<Vec<_>>()
    };
    let before = listing(&ns);
    let mut ap = Applier::new().unwrap();
    ap.apply(&model, &opts()).unwrap();
    assert_eq!(listing(&ns), before);
    move_endpoint(&mut model, 0, 0, "10.70.0.3");
    ap.apply(&model, &opts()).unwrap();
    ap.apply(
        &model,
        &ApplyOptions {
            force_full: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(listing(&ns), before);
    let rep = ap.cleanup().unwrap();
    assert!(rep.committed && rep.messages == 1, "{rep:?}");
    assert_eq!(listing(&ns), before);
    assert!(!ns.ruleset().contains("table ip svcc "));
    // Nothing left to clean: nothing sent.
    let rep = ap.cleanup().unwrap();
    assert_eq!(rep.messages, 0);
    assert_eq!(listing(&ns), before);

    // A table svcc does not own is refused before anything is sent.
    let mut bad = model.clone();
    bad.tables[0].name = "firewall".into();
    assert!(matches!(
        ap.apply(&bad, &opts()),
        Err(ApplyError::NotOwned(_))
    ));
}

#[test]
fn fresh_applier_replaces_table_made_by_another() {
    let model = kube_model(2);
    let mut ns = Netns::new();
    ns.enter();
    ns.nft_f(&svcc_compiler::nft::render::render_replace(&model))
        .unwrap();
    let mut a = Applier::new().unwrap();
    let rep = a.apply(&model, &opts()).unwrap();
    assert!(rep.full, "{rep:?}");
    // A second applier replaces the table: the first one notices it is no longer its own.
    let mut b = Applier::new().unwrap();
    b.apply(&model, &opts()).unwrap();
    let mut m2 = model.clone();
    move_endpoint(&mut m2, 1, 1, "10.70.0.4");
    let rep = a.apply(&m2, &opts()).unwrap();
    assert!(rep.full, "{rep:?}");
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle_listing(&m2, "ip"))
    );
}

#[test]
fn changes_by_others_to_svcc_tables_force_a_full_replace() {
    let mut model = kube_model(3);
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    ap.apply(&model, &opts()).unwrap();

    // Another program changes a foreign table: the next change is still a difference.
    ns.nft(&["add", "table", "ip", "someone-else"]);
    move_endpoint(&mut model, 0, 0, "10.70.0.1");
    let rep = ap.apply(&model, &opts()).unwrap();
    assert!(!rep.full, "{rep:?}");

    // Another program changes svcc's table: seen, full replace, its change is gone.
    ns.nft(&[
        "add",
        "element",
        "ip",
        "svcc",
        "cluster-ips",
        "{ 10.99.0.1 }",
    ]);
    move_endpoint(&mut model, 0, 1, "10.70.0.2");
    let rep = ap.apply(&model, &opts()).unwrap();
    assert!(rep.full, "{rep:?}");
    assert!(rep.reason.contains("another program"), "{rep:?}");
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle_listing(&model, "ip"))
    );

    // Same while we plan: the batch is refused (stale), the retry sees the event and replaces.
    let name = ns.name.clone();
    let hook = Arc::new(move |attempt: u32| {
        if attempt == 0 {
            let st = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &name, "nft", "add", "rule", "ip", "svcc", "svc-1", "drop",
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
    });
    move_endpoint(&mut model, 1, 1, "10.70.0.3");
    let rep = ap
        .apply(
            &model,
            &ApplyOptions {
                before_commit: Some(hook),
                ..opts()
            },
        )
        .unwrap();
    assert_eq!((rep.retries, rep.full), (1, true), "{rep:?}");
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle_listing(&model, "ip"))
    );

    // Quiet again: differences.
    move_endpoint(&mut model, 2, 1, "10.70.0.4");
    let rep = ap.apply(&model, &opts()).unwrap();
    assert!(!rep.full && rep.messages == 3, "{rep:?}");
}

#[test]
fn dual_stack_lists_like_nft_f() {
    let mut model = dual_stack_model(3);
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    let rep = ap.apply(&model, &opts()).unwrap();
    assert!(rep.full && rep.changes.tables_replaced == 2, "{rep:?}");
    let oracle = Netns::new();
    oracle
        .nft_f(&svcc_compiler::nft::render::render_replace(&model))
        .unwrap();
    for fam in ["ip", "ip6"] {
        assert_eq!(
            sort_elements(&ns.list_table(fam)),
            sort_elements(&oracle.list_table(fam)),
            "{fam}"
        );
        let dbg = |n: &Netns| {
            sort_element_lines(&n.nft(&["--debug=netlink", "list", "table", fam, "svcc"]))
        };
        assert_eq!(dbg(&ns), dbg(&oracle), "{fam}");
    }
    // An endpoint moves in both families: two chains refilled, 6 messages.
    move_endpoint(&mut model, 2, 0, "10.70.0.5");
    let rep = ap.apply(&model, &opts()).unwrap();
    assert_eq!((rep.full, rep.messages), (false, 3 + 2), "{rep:?}");
    for fam in ["ip", "ip6"] {
        assert_eq!(
            sort_elements(&ns.list_table(fam)),
            sort_elements(&oracle_listing(&model, fam)),
            "{fam}"
        );
    }
    // The ip6 table goes away (single-stack again): deleted in the same kind of transaction.
    let v4 = Ruleset {
        tables: vec![model.tables[0].clone()],
    };
    let rep = ap.apply(&v4, &opts()).unwrap();
    assert!(rep.full && rep.changes.tables_deleted == 1, "{rep:?}");
    assert!(!ns.ruleset().contains("table ip6 svcc"));
}

#[test]
fn ip6_update_with_concatenated_data() {
    // nft 1.0.6 cannot load this rule (it aborts); the kernel takes it and nft lists it.
    let model = Ruleset {
        tables: vec![kube_table(Family::Ip6, 2, true)],
    };
    let mut ns = Netns::new();
    ns.enter();
    Applier::new().unwrap().apply(&model, &opts()).unwrap();
    let l = ns.list_table("ip6");
    assert!(
        l.contains("update @affinity { ip6 saddr . meta l4proto . ip6 daddr . tcp dport timeout 3h : fd00::a40:1 . 8080 } comment \"affinity\""),
        "{l}"
    );
    assert!(
        l.contains("dnat ip6 to ip6 saddr . meta l4proto . ip6 daddr . th dport map @affinity"),
        "{l}"
    );
}

#[test]
fn other_set_shapes_list_like_nft_f() {
    let p = |s: &str| Value::Prefix(net(s));
    let a = |s: &str| Value::Addr(ip(s));
    let mut protos = set("protos", vec![DataType::InetProto], None);
    protos.elements = vec![
        elem(vec![Value::Proto(L4Proto::Tcp)], None, None),
        elem(vec![Value::Proto(L4Proto::Sctp)], None, None),
    ];
    let mut nat = set(
        "nat",
        vec![DataType::Ipv4Addr],
        Some(SetData::Values(vec![DataType::Ipv4Addr])),
    );
    nat.elements = vec![elem(
        vec![a("1.1.1.1")],
        Some(ElemData::Values(vec![a("2.2.2.2")])),
        Some("one"),
    )];
    let mut ports = set(
        "port-ranges",
        vec![DataType::InetService],
        Some(SetData::Values(vec![DataType::InetService])),
    );
    ports.flags.interval = true;
    ports.elements = vec![
        elem(
            vec![Value::Port(80)],
            Some(ElemData::Values(vec![Value::Port(8080)])),
            None,
        ),
        elem(
            vec![Value::Port(65535)],
            Some(ElemData::Values(vec![Value::Port(1)])),
            None,
        ),
    ];
    let mut allow = set(
        "allow",
        vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
            DataType::Ipv4Addr,
        ],
        None,
    );
    allow.flags.interval = true;
    allow.comment = Some("pipapo".into());
    allow.elements = vec![
        elem(
            vec![
                a("10.0.0.1"),
                Value::Proto(L4Proto::Tcp),
                Value::Port(80),
                p("192.168.0.0/16"),
            ],
            None,
            None,
        ),
        elem(
            vec![
                a("10.0.0.2"),
                Value::Proto(L4Proto::Udp),
                Value::Port(53),
                a("1.2.3.4"),
            ],
            None,
            Some("dns"),
        ),
    ];
    let mut edges = set("edges", vec![DataType::Ipv4Addr], None);
    edges.flags.interval = true;
    edges.elements = vec![
        elem(vec![p("0.0.0.0/8")], None, None),
        elem(vec![a("255.255.255.255")], None, None),
    ];
    let k4 = vec![Field::Daddr, Field::L4Proto, Field::Dport, Field::Saddr];
    let c = chain(
        "c",
        vec![
            Rule::new()
                .m(Match::Lookup {
                    key: k4.clone(),
                    set: "allow".into(),
                    negate: true,
                })
                .v(Verdict::Drop),
            Rule::new()
                .m(Match::Lookup {
                    key: vec![Field::L4Proto],
                    set: "protos".into(),
                    negate: false,
                })
                .v(Verdict::Accept),
            Rule::new()
                .m(Match::Saddr {
                    negate: false,
                    addr: AddrMatch::Set("edges".into()),
                })
                .v(Verdict::Return),
            Rule::new()
                .m(Match::Saddr {
                    negate: false,
                    addr: AddrMatch::Net(net("0.0.0.0/0")),
                })
                .v(Verdict::Accept),
        ],
    );
    let model = Ruleset {
        tables: vec![Table {
            family: Family::Ip,
            name: "svcc".into(),
            comment: None,
            sets: vec![protos, nat, ports, allow, edges],
            chains: vec![c],
        }],
    };
    let mut ns = Netns::new();
    ns.enter();
    let mut ap = Applier::new().unwrap();
    ap.apply(&model, &opts()).unwrap();
    let oracle = Netns::new();
    oracle
        .nft_f(&svcc_compiler::nft::render::render_replace(&model))
        .unwrap();
    assert_eq!(
        sort_elements(&ns.list_table("ip")),
        sort_elements(&oracle.list_table("ip"))
    );
    let dbg =
        |n: &Netns| sort_element_lines(&n.nft(&["--debug=netlink", "list", "table", "ip", "svcc"]));
    assert_eq!(dbg(&ns), dbg(&oracle));

    // Incremental changes in interval sets: a range out, another in.
    let mut m2 = model.clone();
    let t = &mut m2.tables[0];
    t.sets[4].elements[0] = elem(vec![p("10.0.0.0/8")], None, Some("ten"));
    t.sets[3].elements.pop();
    t.sets[2].elements.push(elem(
        vec![Value::Port(443)],
        Some(ElemData::Values(vec![Value::Port(8443)])),
        None,
    ));
    let rep = ap.apply(&m2, &opts()).unwrap();
    assert!(!rep.full, "{rep:?}");
    assert_eq!(
        normalize(&ns.list_table("ip")),
        normalize(&oracle_listing(&m2, "ip"))
    );
}
