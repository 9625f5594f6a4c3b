//! KubeProxyConfiguration files and kube-proxy flag values (`compiler/src/config.rs`).
//! The whole input is a config file; each of its lines is also a flag value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcc_compiler::config::{
    parse_cidr, parse_cidrs, parse_duration, parse_kube_proxy_config, parse_nodeport_addresses,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_kube_proxy_config("kp.yaml", text) {
        Ok(f) => {
            for b in [f.nftables.masquerade_bit, f.iptables.masquerade_bit].into_iter().flatten() {
                assert!(b <= 31, "masqueradeBit {b} accepted");
            }
        }
        Err(d) => assert!(!d.is_empty(), "an error without a diagnostic"),
    }
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines {
        if let Ok(n) = parse_cidr(l) {
            // What the parser gives back is a network: it reads back as itself.
            assert_eq!(parse_cidr(&n.to_string()), Ok(n), "{l:?}");
        }
        let _ = parse_duration(l);
        let _ = parse_nodeport_addresses(&[l]);
    }
    let _ = parse_cidrs(&lines);
    let _ = parse_nodeport_addresses(&lines);
});
