//! Parsers for the nft ruleset language svcc emits.
//!
//! The grammar (`src/nft.pest`) reads two dialects into svcc's nft object model
//! ([`svcc_compiler::nft::model`]):
//!
//! * **svcc's own text**, exactly as `svcc_compiler::nft::render` prints it. [`parse_ruleset`]
//!   is its inverse: `parse_ruleset(&render_replace(&m)) == Ok(m)` for every model that the
//!   renderer prints faithfully and nft's lexer accepts, that is:
//!   - comments without `"` or newlines and at most 128 bytes (`render::quote` alters others);
//!   - names in nft's identifier syntax (`[A-Za-z_.][A-Za-z0-9/_.-]*`);
//!   - rules with at least a match, a statement or a verdict (an empty rule prints nothing and
//!     a lone `comment "…"` line is the chain's comment);
//!   - elements whose values fit the set's declared types (the parser checks them);
//!   - no integer ([`Value::Num`](svcc_compiler::nft::model::Value::Num)) in the data of an
//!     `update` statement: it is untyped in the text and reads back as a port;
//!   - no one-field address lookup `Match::Lookup { key: [Saddr] }`: it prints exactly like
//!     `Match::Saddr { addr: AddrMatch::Set(_) }`, which is what the parser returns.
//! * **`nft list table …` output** of such a ruleset after the kernel has it. nft prints some
//!   constructs differently from how they were written and drops some information;
//!   [`parse_nft_list`] reads that dialect and [`normalize_for_compare`] applies the same lossy
//!   normalisation to a compiled model, so that
//!   `normalize_for_compare(&compiled) == parse_nft_list(&listing)?` checks that the kernel
//!   holds what was compiled. See the `normalize` module for what is normalised.
//!
//! Errors carry the 1-based line and column and a message naming what was expected.

pub mod fast;
mod normalize;
mod parse;

use svcc_compiler::nft::model::Ruleset;

pub use normalize::normalize_for_compare;

/// A syntax or semantic error, with the 1-based line and column (in characters) where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The text of the offending line, for context in diagnostics.
    pub source_line: String,
}

/// Parses a whole file as `render_replace` writes it (or any sequence of `table … { … }`
/// blocks). `table X` / `delete table X` preamble lines are accepted and ignored; the result
/// holds the table blocks, in order.
pub fn parse_ruleset(text: &str) -> Result<Ruleset, ParseError> {
    parse::parse_text(text)
}

/// Parses `nft list table ip svcc` (or `nft list ruleset`, if it holds only svcc's tables)
/// output and returns it in the normal form of [`normalize_for_compare`]: elements sorted,
/// elements of dynamic sets (added by the packet path) dropped, the `meta l4proto` matches
/// nft hides behind `tcp dport` restored, and so on. Accepts svcc's own text too.
pub fn parse_nft_list(text: &str) -> Result<Ruleset, ParseError> {
    let rs = parse::parse_text(text)?;
    Ok(normalize_for_compare(&rs))
}
