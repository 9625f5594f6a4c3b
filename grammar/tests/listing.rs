//! The `nft list` dialect, offline: listings nft 1.0.6 printed (kept in `tests/data/`, written
//! by the kernel tests with `SVCC_GRAMMAR_BLESS=1`) and hand-written snippets of each
//! spelling nft normalises to.

mod common;

use common::*;
use svcc_compiler::nft::model::*;
use svcc_grammar::{normalize_for_compare, parse_nft_list, parse_ruleset};

fn data(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn kept_sample_listings_match_the_samples() {
    for fam in [Family::Ip, Family::Ip6] {
        let listing = data(&format!("sample-{}.list", fam.keyword()));
        let got = parse_nft_list(&listing).unwrap_or_else(|e| panic!("{e}\n{}", e.source_line));
        let want = normalize_for_compare(&sample(fam));
        for (w, g) in want.tables[0].chains.iter().zip(&got.tables[0].chains) {
            assert_eq!(w, g);
        }
        assert_eq!(want, got);
        assert_eq!(
            normalize_for_compare(&got),
            got,
            "normal form is a fixed point"
        );
    }
}

fn one_table(body: &str) -> Table {
    let text = format!("table ip svcc {{\n{body}\n}}\n");
    let mut rs = parse_nft_list(&text).unwrap_or_else(|e| panic!("{e}\n{}", e.source_line));
    rs.tables.remove(0)
}

fn one_rule(rule: &str) -> Rule {
    let mut t = one_table(&format!("\tchain c {{\n\t\t{rule}\n\t}}"));
    t.chains.remove(0).rules.remove(0)
}

fn svcc_rule(rule: &str) -> Rule {
    let text = format!("table ip svcc {{\n\tchain c {{\n\t\t{rule}\n\t}}\n}}\n");
    parse_ruleset(&text)
        .unwrap()
        .tables
        .remove(0)
        .chains
        .remove(0)
        .rules
        .remove(0)
}

#[test]
fn priorities_by_name() {
    let t = one_table(
        "\tchain a {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n\
         \tchain b {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\t}\n\
         \tchain c {\n\t\ttype nat hook postrouting priority srcnat + 5; policy accept;\n\t}\n\
         \tchain d {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t}\n\
         \tchain e {\n\t\ttype filter hook output priority mangle - 1; policy accept;\n\t}\n\
         \tchain f {\n\t\ttype filter hook input priority security; policy accept;\n\t}\n\
         \tchain g {\n\t\ttype nat hook output priority -2147483648; policy accept;\n\t}",
    );
    let prios: Vec<i32> = t.chains.iter().map(|c| c.base.unwrap().priority).collect();
    assert_eq!(prios, vec![-100, -10, 105, -300, -151, 50, i32::MIN]);
}

#[test]
fn durations() {
    let t = one_table(
        "\tset a {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 1d1h1m1s\n\t}\n\
         \tset b {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\ttimeout 3h\n\t}\n\
         \tset c {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\ttimeout 49d17h2m47s\n\t}",
    );
    let timeouts: Vec<Option<u32>> = t.sets.iter().map(|s| s.timeout).collect();
    assert_eq!(timeouts, vec![Some(90061), Some(10800), Some(4294967)]);
    assert_eq!(
        one_rule("update @a { ip saddr }"),
        svcc_rule("update @a { ip saddr timeout 0s }")
    );
}

#[test]
fn numgen_and_marks() {
    assert_eq!(
        one_rule("numgen random mod 2 0 accept"),
        svcc_rule("numgen random mod 2 == 0 accept")
    );
    assert_eq!(
        one_rule("meta mark 0x00000000"),
        Rule::new().m(Match::MarkClear(u32::MAX))
    );
    assert_eq!(
        one_rule("meta mark 0x00000000/0"),
        Rule::new().m(Match::MarkClear(0))
    );
    assert_eq!(
        one_rule("meta mark 0x00000000/16"),
        Rule::new().m(Match::MarkClear(0xffff_0000))
    );
    assert_eq!(
        one_rule("meta mark & 0x00004000 == 0x00000000"),
        Rule::new().m(Match::MarkClear(0x4000))
    );
    assert_eq!(
        one_rule("meta mark set meta mark"),
        Rule::new().s(Stmt::MarkOr(0))
    );
    assert_eq!(
        normalize_for_compare(&Ruleset {
            tables: vec![table_with(Rule::new().s(Stmt::MarkXor(0)))]
        }),
        Ruleset {
            tables: vec![table_with(Rule::new().s(Stmt::MarkOr(0)))]
        }
    );
}

fn table_with(r: Rule) -> Table {
    Table {
        family: Family::Ip,
        name: "svcc".into(),
        comment: None,
        sets: vec![],
        chains: vec![Chain {
            name: "c".into(),
            base: None,
            comment: None,
            rules: vec![r],
        }],
    }
}

#[test]
fn dnat_spellings() {
    assert_eq!(
        one_rule("dnat ip to ip daddr . meta l4proto . th dport map @m"),
        svcc_rule("dnat ip addr . port to ip daddr . meta l4proto . th dport map @m")
    );
    let text = "table ip6 svcc {\n\tchain c {\n\t\tmeta l4proto tcp dnat to [fd00::1]:80\n\t}\n}\n";
    let r = &parse_nft_list(text).unwrap().tables[0].chains[0].rules[0];
    assert_eq!(
        r.stmts,
        vec![Stmt::Dnat {
            addr: ip("fd00::1"),
            port: 80
        }]
    );
}

#[test]
fn l4proto_dependencies_come_back() {
    // nft drops `meta l4proto tcp` and prints the `th dport` after it as `tcp dport`.
    assert_eq!(
        one_rule("tcp dport @ports accept"),
        svcc_rule("meta l4proto tcp th dport @ports accept")
    );
    assert_eq!(
        one_rule("ip saddr . udp dport @aff dnat ip to ip saddr . udp dport map @aff"),
        svcc_rule("meta l4proto udp ip saddr . th dport @aff dnat ip addr . port to ip saddr . th dport map @aff")
    );
    // used by a statement only: the match ends the matches
    assert_eq!(
        one_rule("ct state new update @s { ip saddr . sctp dport timeout 1m }"),
        svcc_rule("ct state new meta l4proto sctp update @s { ip saddr . th dport timeout 60s }")
    );
    // a match kept by nft is not doubled
    assert_eq!(
        one_rule("meta l4proto tcp meta mark set meta mark | 0x00000001 update @s { ip saddr . tcp dport }"),
        svcc_rule("meta l4proto tcp meta mark set meta mark | 0x00000001 update @s { ip saddr . th dport timeout 0s }")
    );
    // `th` stays `th` where nft had no protocol
    assert_eq!(
        one_rule("th dport @ports meta l4proto tcp accept"),
        svcc_rule("th dport @ports meta l4proto tcp accept")
    );
}

#[test]
fn canonical_place_of_l4proto_matches() {
    // The normal form moves the match to the first use of the dport, as the listing gives it.
    let compiled = svcc_rule("meta l4proto tcp ip saddr 10.0.0.0/8 th dport @ports accept");
    let listed = one_rule("ip saddr 10.0.0.0/8 tcp dport @ports accept");
    let n = |r: Rule| {
        normalize_for_compare(&Ruleset {
            tables: vec![table_with(r)],
        })
    };
    assert_eq!(n(compiled), n(listed.clone()));
    assert_eq!(
        listed,
        svcc_rule("ip saddr 10.0.0.0/8 meta l4proto tcp th dport @ports accept")
    );
    // Duplicates collapse.
    assert_eq!(
        n(svcc_rule(
            "meta l4proto tcp meta l4proto tcp th dport @ports accept"
        )),
        n(svcc_rule("meta l4proto tcp th dport @ports accept"))
    );
}

#[test]
fn elements_sets_and_comments() {
    let t = one_table(
        "\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.0/8 comment \"a b/c\", 192.168.1.1,\n\t\t\t     172.16.0.0/12 }\n\t}\n\
         \tmap aff {\n\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t\t\
         elements = { 1.2.3.4 . 80 timeout 1h expires 59m59s996ms comment \"x y\" : 5.6.7.8 . 90,\n\t\t\t     1.2.3.5 . 80 expires 2h59m59s996ms : 5.6.7.8 . 91 }\n\t}",
    );
    let keys: Vec<&Value> = t.sets[0].elements.iter().map(|e| &e.key[0]).collect();
    assert_eq!(
        keys,
        vec![
            &Value::Addr(ip("192.168.1.1")),
            &Value::Prefix(net("10.0.0.0/8")),
            &Value::Prefix(net("172.16.0.0/12"))
        ],
        "sorted by key"
    );
    assert_eq!(t.sets[0].elements[1].comment.as_deref(), Some("a b/c"));
    assert!(
        t.sets[1].elements.is_empty(),
        "dynamic elements are not part of the ruleset"
    );
    assert_eq!(t.sets[1].timeout, Some(10800));
}

#[test]
fn normalisation_of_compiled_sets() {
    let mut s = Set {
        name: "aff".into(),
        key: vec![DataType::Ipv4Addr],
        data: None,
        flags: SetFlags::default(),
        timeout: Some(0),
        size: None,
        comment: Some("x\"y\nz".into()),
        elements: vec![
            Element {
                key: vec![Value::Prefix(net("10.1.2.3/8"))],
                data: None,
                comment: None,
            },
            Element {
                key: vec![Value::Prefix(net("10.9.9.9/32"))],
                data: None,
                comment: None,
            },
        ],
    };
    let mut t = table_with(Rule::new().s(Stmt::Update {
        set: "aff".into(),
        key: vec![Field::Saddr],
        timeout: 0,
        data: vec![],
    }));
    t.sets.push(s.clone());
    let n = normalize_for_compare(&Ruleset { tables: vec![t] });
    let ns = &n.tables[0].sets[0];
    assert_eq!(ns.timeout, None);
    assert!(ns.flags.dynamic);
    assert_eq!(ns.size, Some(65535));
    assert!(ns.elements.is_empty());
    assert_eq!(ns.comment.as_deref(), Some("xyz"));

    s.timeout = Some(5);
    let mut t = table_with(Rule::new());
    t.sets.push(s);
    let n = normalize_for_compare(&Ruleset { tables: vec![t] });
    let ns = &n.tables[0].sets[0];
    assert!(ns.flags.timeout && !ns.flags.dynamic && ns.size.is_none());
    assert_eq!(ns.elements[0].key, vec![Value::Addr(ip("10.9.9.9"))]);
    assert_eq!(ns.elements[1].key, vec![Value::Prefix(net("10.0.0.0/8"))]);
}

#[test]
fn normal_form_is_idempotent_for_generated_models() {
    for seed in 0..400 {
        let mut r = Rng::new(seed);
        let fam = if seed % 2 == 0 {
            Family::Ip
        } else {
            Family::Ip6
        };
        let mut m = gen_loadable(&mut r, fam);
        // Rules that match two transport protocols match nothing; the normal form of those
        // may take two steps. Keep one protocol per rule.
        for c in &mut m.tables[0].chains {
            for rule in &mut c.rules {
                let first = rule.matches.iter().find_map(|x| {
                    if let Match::L4Proto(p) = x {
                        Some(*p)
                    } else {
                        None
                    }
                });
                for x in &mut rule.matches {
                    if let (Match::L4Proto(p), Some(f)) = (&mut *x, first) {
                        *p = f;
                    }
                }
            }
        }
        let n = normalize_for_compare(&m);
        assert_eq!(normalize_for_compare(&n), n, "seed {seed}");
    }
}
