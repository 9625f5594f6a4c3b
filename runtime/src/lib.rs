//! svcc's runtime: applies the nftables object model to the kernel over netlink, atomically.
//!
//! [`Applier::apply`] turns a [`Ruleset`](svcc_compiler::nft::model::Ruleset) into ONE nf_tables
//! transaction (one `sendmsg`), guarded by the generation id it was computed against: a full
//! replace of svcc's tables, or — when the kernel provably still holds what this applier last
//! applied — only the difference. Only `ip svcc` and `ip6 svcc` are ever touched.
//!
//! "Provably" = the tables carry the nonce this applier gave them at its last full replace, and
//! a second socket listening to nf_tables events saw no commit by anyone else touch them since.
//! A long-running caller keeps one `Applier` (use [`Applier::apply_owned`] to hand the model
//! over without a copy); a one-shot caller gets a full replace.
//!
//! Messages are built with libnftnl (crate `nftnl`), the socket is libmnl's (crate `mnl`); every
//! `unsafe` line is in `sys.rs` with its safety contract.

mod applier;
mod batch;
mod conn;
mod encode;
mod error;
mod nl;
mod plan;
mod sys;

pub mod daemon;
pub mod iptables;
pub mod ipvs;
pub mod userspace;

/// The object model and the bits of the text writer the runtime shares with it.
mod model {
    pub use svcc_compiler::nft::model::*;
    pub use svcc_compiler::nft::render::{
        quote, render_table, rule_text, write_values, write_verdict, MAX_COMMENT,
    };
}

pub use applier::{Applier, ApplyOptions, ApplyReport, BeforeCommit, OWNED};
pub use error::{ApplyError, Refusal};
pub use plan::{Changes, MISSING_CHAIN};

/// The nft script that turns `old` into `new` the way an incremental apply would, or why only
/// a full replace can (tables or sets added, removed or redefined). `svcc diff` uses it
/// against the kernel's listing, so a fresh process can still show a real difference.
pub fn diff_script(
    old: &svcc_compiler::nft::model::Ruleset,
    new: &svcc_compiler::nft::model::Ruleset,
) -> Result<String, String> {
    plan::incremental(old, new).map(|p| p.script())
}
