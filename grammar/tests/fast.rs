//! The fast parser (`svcc_grammar::fast`) gives exactly what the pest parser gives: on every
//! nft snapshot of the workspace (where it must not need pest at all), on `nft list` output
//! (which it hands to pest), and on mutations of the snapshots (same model or same error).

mod common;

use std::path::PathBuf;

use svcc_grammar::fast::{parse_reader, parse_ruleset_fast, Outcome};
use svcc_grammar::parse_ruleset;

/// (file name, nft text) of every nft snapshot (nftables and userspace modes).
fn snapshots() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/snapshots");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("tests/snapshots").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let nft =
            name.starts_with("snapshots__nft__") || name.starts_with("snapshots__userspace__");
        if !nft || !name.ends_with(".snap") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let body = text.splitn(3, "---\n").nth(2).unwrap_or_default();
        if body.starts_with("#!/usr/sbin/nft") {
            out.push((name, body.to_string()));
        }
    }
    out.sort();
    assert!(
        out.len() >= 30,
        "expected the nft snapshots, found {}",
        out.len()
    );
    out
}

#[track_caller]
fn same_as_pest(text: &str) {
    let pest = parse_ruleset(text);
    let fast = parse_ruleset_fast(text);
    assert_eq!(fast, pest, "fast and pest differ on:\n{text}");
}

#[test]
fn snapshots_parse_without_pest_to_the_same_model() {
    for (name, text) in snapshots() {
        let Outcome::Parsed(p) = parse_reader(text.as_bytes()).unwrap() else {
            panic!("{name}: the fast parser gave up on svcc's own output");
        };
        assert_eq!(p.pest_statements, 0, "{name}: statements left to pest");
        let pest = parse_ruleset(&text).unwrap();
        assert!(p.ruleset == pest, "{name}: the models differ");
    }
}

#[test]
fn listings_go_to_pest_and_agree() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "list") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(parse_ruleset(&text).is_ok(), "{:?}", e.path());
            same_as_pest(&text);
            n += 1;
        }
    }
    assert!(n > 0, "no listings under tests/data");
}

#[test]
fn hand_written_variants_agree() {
    let rule = |r: &str| format!("table ip t {{\n\tchain c {{\n\t\t{r}\n\t}}\n}}\n");
    let set = |body: &str| format!("table ip t {{\n\tmap m {{\n{body}\n\t}}\n}}\n");
    let mut texts = vec![
        rule("ip saddr 10.0.0.0/8 accept"),
        rule("ip saddr 10.0.0.1/32 accept"),
        rule("ip saddr != @s drop"),
        rule("ip saddr @s drop"),
        rule("ip6 saddr @s drop"),
        rule("ip saddr . th dport @s"),
        rule("ip saddr . th dport != @s jump x"),
        rule("meta l4proto @s"),
        rule("meta l4proto tcp th dport vmap @v"),
        rule("numgen random mod 3 == 0 goto x"),
        rule("numgen random mod 3 offset 0 == 0 goto x"),
        rule("numgen random mod 0 == 0 goto x"),
        rule("numgen random mod 3 == 00 goto x"),
        rule("meta mark & 0x00004000 == 0x00000000 return"),
        rule("meta mark & 0x00004000 == 0x00000001 return"),
        rule("meta mark set meta mark | 0x00004000"),
        rule("meta mark set meta mark ^ 0x00004000 comment \"x y\""),
        rule("dnat to 10.0.0.1:80"),
        rule("dnat to [fd00::1]:80"),
        rule("dnat to fd00::1:80"),
        rule("dnat ip addr . port to numgen random mod 1 offset 7 . numgen random mod 2 map @e"),
        rule("dnat ip6 addr . port to ip daddr map @e"),
        rule("redirect to :ip daddr . th dport map @p"),
        rule("update @a { ip saddr . th dport timeout 10800s : 10.0.0.1 . 80 }"),
        rule("update @a { ip saddr timeout 10800s }"),
        rule("masquerade fully-random"),
        rule("masquerade random"),
        rule("ct state new ct status dnat fib daddr type local fib saddr type local reject"),
        rule("accept drop"),
        rule("accept comment \"a\" comment \"b\""),
        rule("reject ip saddr @s"),
        rule("jump 9bad"),
        rule("accept; drop"),
        rule("accept # a comment"),
        rule("comment \"only a comment\""),
        rule("type nat hook prerouting priority -100; policy accept;"),
        rule("type nat hook prerouting priority dstnat; policy accept;"),
        rule("type nat hook prerouting priority -100; policy drop;"),
        rule("accept } chain d { drop"),
        rule(&format!("accept comment \"{}\"", "x".repeat(129))),
        set("\t\ttype ipv4_addr . inet_service : verdict\n\t\telements = {\n\t\t\t10.0.0.1 . 80 : goto x,\n\t\t}"),
        set("\t\ttype ipv4_addr . inet_service : verdict\n\t\telements = {\n\t\t\t10.0.0.1 . 80 : goto x\n\t\t\t10.0.0.2 . 80 : goto x\n\t\t}"),
        set("\t\ttype ipv4_addr . inet_service : verdict\n\t\telements = {\n\t\t\t10.0.0.1 . 80 . 1 : goto x\n\t\t}"),
        set("\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service\n\t\tflags dynamic,timeout\n\t\ttimeout 10800s\n\t\tsize 100"),
        set("\t\ttypeof numgen random mod 1 . numgen random mod 1 : ip daddr . th dport\n\t\telements = {\n\t\t\t5 . 0 : 10.0.0.1 . 80\n\t\t}"),
        set("\t\telements = {\n\t\t\t10.0.0.1 : accept\n\t\t}\n\t\ttype ipv4_addr : verdict"),
        set("\t\ttype ipv4_addr\n\t\telements = {\n\t\t\t10.0.0.1\n\t\t}"),
        set("\t\ttypeof numgen random mod 1 : ip daddr . th dport\n\t\tflags interval\n\t\telements = {\n\t\t\t5-9 comment \"a\" : 10.0.0.1 . 80,\n\t\t\t10-10 : 10.0.0.2 . 80,\n\t\t\t11 : 10.0.0.3 . 80\n\t\t}"),
        set("\t\ttypeof numgen random mod 1 : ip daddr . th dport\n\t\tflags interval\n\t\telements = {\n\t\t\t9-5 : 10.0.0.1 . 80\n\t\t}"),
        set("\t\ttypeof numgen random mod 1 : ip daddr . th dport\n\t\tflags interval\n\t\telements = {\n\t\t\t5-4294967296 : 10.0.0.1 . 80\n\t\t}"),
        set("\t\ttype ipv4_addr . inet_service : verdict\n\t\telements = {\n\t\t\t10.0.0.1 . 80-90 : accept\n\t\t}"),
        set("\t\ttype ipv6_addr : verdict\n\t\telements = {\n\t\t\t::ffff:1.2.3.4 : accept,\n\t\t\tfd00:0::1 : drop, ::1 : return\n\t\t}"),
        set("\t\ttype ipv4_addr : verdict\n\t\ttype ipv4_addr : verdict"),
        set("\t\ttype ipv4_addr : verdict\n\t\tcomment \"a\" # trailing\n\t\telements = { 10.0.0.1 : accept }"),
        "table ip t {\n}\ntable ip t {\n}\n".to_string(),
        "table ip t {\n\tset s {\n\t}\n}\n".to_string(),
        "table ip t {\n\tmap m {\n\t\tcomment \"x\"\n\t}\n}\n".to_string(),
        "table ip t {\n\tset s {\n\t\ttype ipv4_addr : verdict\n\t}\n}\n".to_string(),
        "table ip t {\n\tchain c {\n\t}\n\tchain c {\n\t}\n}\n".to_string(),
        "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n\tset s {\n\t\ttype ipv4_addr\n\t}\n}\n".to_string(),
        "table ip t {\n\tchain c {\n\t\taccept \\\n\t\tcomment \"x\"\n\t}\n}\n".to_string(),
        "table ip t {\r\n}\r\n".to_string(),
        "table ip t { }\n".to_string(),
        "table ip t {\n\tcomment \"a\"\n\tcomment \"b\"\n}\n".to_string(),
        "table ip t {\n".to_string(),
    ];
    texts.push(texts[0].replace("ip t", "ip6 t"));
    for t in &texts {
        same_as_pest(t);
    }
}

/// A deterministic xorshift: the same mutations every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that matter to the grammar, for insertions and replacements.
const ALPHABET: &[u8] = b" \t\n.:,;#\\\"{}@/-0123456789abfxs";

#[test]
fn mutated_snapshots_agree() {
    let mut rng = Rng(0x5ecc_fa57);
    let snaps = snapshots();
    let mut fast_parsed = 0;
    for round in 0..3000 {
        let (_, text) = &snaps[round % snaps.len()];
        let mut b = text.as_bytes().to_vec();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(b.len());
            match rng.below(5) {
                0 => {
                    b.remove(i);
                }
                1 => b.insert(i, ALPHABET[rng.below(ALPHABET.len())]),
                2 => b[i] = ALPHABET[rng.below(ALPHABET.len())],
                3 => {
                    // duplicate a line
                    let s = b[..i]
                        .iter()
                        .rposition(|c| *c == b'\n')
                        .map_or(0, |p| p + 1);
                    let e = b[i..]
                        .iter()
                        .position(|c| *c == b'\n')
                        .map_or(b.len(), |p| i + p + 1);
                    let line = b[s..e].to_vec();
                    b.splice(e..e, line);
                }
                _ => {
                    // swap two bytes
                    let j = rng.below(b.len());
                    b.swap(i, j);
                }
            }
        }
        let Ok(t) = String::from_utf8(b) else {
            continue;
        };
        // Given up: the CLI uses pest then, nothing to compare.
        if let Outcome::Parsed(p) = parse_reader(t.as_bytes()).unwrap() {
            fast_parsed += 1;
            assert_eq!(
                Ok(p.ruleset),
                parse_ruleset(&t),
                "fast and pest differ on:\n{t}"
            );
        }
    }
    // Most single mutations still leave a text the fast parser reads (e.g. in a comment or a
    // name): the comparison is not vacuous.
    assert!(
        fast_parsed > 300,
        "only {fast_parsed} mutants parsed by the fast parser"
    );
}
