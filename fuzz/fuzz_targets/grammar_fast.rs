//! The fast ruleset parser (`svcc_grammar::fast`) against the pest grammar: whatever the
//! input, the fast parser either gives exactly pest's model (and pest accepts the text) or
//! hands the text to pest (`Unrecognized`); never a model where pest has an error or another
//! model. Text that is not UTF-8 is always handed on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcc_grammar::fast::{parse_reader, Outcome};
use svcc_grammar::parse_ruleset;

fuzz_target!(|data: &[u8]| {
    let fast = parse_reader(data).expect("reading from memory cannot fail");
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(
            matches!(fast, Outcome::Unrecognized(_)),
            "parsed text that is not UTF-8"
        );
        return;
    };
    if let Outcome::Parsed(p) = fast {
        match parse_ruleset(text) {
            Ok(m) => assert!(
                m == p.ruleset,
                "fast and pest differ:\nfast {:#?}\npest {m:#?}",
                p.ruleset
            ),
            Err(e) => panic!("fast parsed what pest refuses ({e}): {:#?}", p.ruleset),
        }
    }
});
