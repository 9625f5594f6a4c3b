//! Compile end to end on structured inputs (`tests/gen/structured.rs`, shared with
//! `tests/property.rs`): no panic, the same bytes twice, the nft text parses back to the
//! compiled model, keep-going and strict agree.
#![no_main]

#[path = "../../tests/gen/structured.rs"]
mod structured;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(case) = structured::case(&mut Unstructured::new(data)) else {
        return;
    };
    structured::check(&case);
});
