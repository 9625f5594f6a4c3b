//! The netlink parsing of the runtime (`runtime/src/nl.rs`, included as is: it is safe Rust
//! with no dependency, so the fuzzer need not link libnftnl): replies and events split into
//! messages, attributes, extended ACKs and user-data TLVs. Must never panic, and what
//! `begin`/`attr`/`end` build must parse back as built.
#![no_main]

#[allow(dead_code)]
#[path = "../../runtime/src/nl.rs"]
mod nl;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct BuiltMsg {
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: Vec<(u16, Vec<u8>)>,
}

fuzz_target!(|data: &[u8]| {
    // Any bytes, as a datagram from the kernel.
    for m in nl::msgs(data) {
        assert!(m.payload.len() <= data.len());
        if let Some(a) = nl::parse_ack(&m) {
            let _ = (a.errno, a.seq, a.msg, a.offset);
        }
        for (ty, d) in nl::nft_attrs(m.payload) {
            assert!(ty <= 0x3fff);
            for (_, v) in nl::udata(d) {
                assert!(v.len() < 256);
            }
        }
    }
    for (_, v) in nl::udata(data) {
        assert!(v.len() < 256);
    }
    // Structured: messages built as the runtime builds them parse back as built.
    let Ok(built) = Vec::<BuiltMsg>::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let mut out = Vec::new();
    let mut want = Vec::new();
    for b in built.iter().take(8) {
        let s = nl::begin(&mut out, b.ty, b.flags, b.seq, b.family, b.res_id);
        let attrs: Vec<(u16, &[u8])> = b
            .attrs
            .iter()
            .take(8)
            .map(|(t, d)| (t & 0x3fff, &d[..d.len().min(512)]))
            .collect();
        for (t, d) in &attrs {
            nl::attr(&mut out, *t, d);
        }
        nl::end(&mut out, s);
        want.push((b.ty, b.flags, b.seq, b.family, attrs));
    }
    let got: Vec<_> = nl::msgs(&out).collect();
    assert_eq!(got.len(), want.len());
    for (m, (ty, flags, seq, family, attrs)) in got.iter().zip(&want) {
        assert_eq!((m.ty, m.flags, m.seq), (*ty, *flags, *seq));
        assert_eq!(m.payload.first(), Some(family));
        let back: Vec<(u16, &[u8])> = nl::nft_attrs(m.payload).collect();
        assert_eq!(&back, attrs);
    }
});
