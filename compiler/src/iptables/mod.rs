//! The legacy iptables backend: IR → `iptables-restore` input, a writer beside the nftables
//! one (the IR holds the semantics; this only expresses them as kube-proxy's iptables mode does).
pub mod build;
pub mod model;

pub use model::{IptJump, IptRule, IptRuleset, IptTable};
