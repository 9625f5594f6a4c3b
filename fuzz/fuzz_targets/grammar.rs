//! The pest nft grammar: svcc's dialect (`parse_ruleset`) and `nft list` output
//! (`parse_nft_list`). What parses prints back (`render_replace`) as text that parses to the
//! same model; the normal form of a listing is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcc_compiler::nft::model::Match;
use svcc_compiler::nft::render::render_replace;
use svcc_grammar::{normalize_for_compare, parse_nft_list, parse_ruleset};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = parse_ruleset(text) {
        let printed = render_replace(&m);
        match parse_ruleset(&printed) {
            Ok(back) => assert!(
                back == m,
                "prints back as another model:\n{printed}\nwas {m:#?}\nnow {back:#?}"
            ),
            Err(e) => panic!("does not parse what it printed: {e}\n{printed}"),
        }
    }
    if let Ok(n) = parse_nft_list(text) {
        // The normal form is a fixed point, except for rules with two different
        // `meta l4proto` matches (documented on `normalize_for_compare`).
        let twice = normalize_for_compare(&n);
        let two_protos = n
            .tables
            .iter()
            .flat_map(|t| &t.chains)
            .flat_map(|c| &c.rules)
            .any(|r| {
                let mut p = r.matches.iter().filter_map(|m| match m {
                    Match::L4Proto(p) => Some(p),
                    _ => None,
                });
                p.next().is_some_and(|first| p.any(|x| x != first))
            });
        assert!(
            two_protos || twice == n,
            "normalize_for_compare is not idempotent:\n{n:#?}\n{twice:#?}"
        );
    }
});
