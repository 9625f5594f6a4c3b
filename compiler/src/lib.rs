//! svcc's compiler: Kubernetes manifests → IR → nftables object model → text.
//!
//! Pure: no I/O, no netlink. The CLI reads files and hands their text in as [`Source`]s;
//! the runtime crate encodes the returned [`nft::model::Ruleset`] to netlink.
//!
//! Stages (one public function each): [`manifest::parse_sources`] → [`lower::lower`] →
//! [`nft::build::build`] → [`nft::render::render_replace`]. [`compile`] runs them all.

pub mod config;
pub mod diag;
pub mod family;
pub mod iptables;
pub mod ipvs;
pub mod ir;
pub mod lower;
pub mod manifest;
pub mod names;
pub mod nft;
pub mod session;
pub mod trace;
pub mod userspace;
pub mod validate;

pub use config::{Backend, NodePortAddresses, NodeSettings};
pub use diag::{Diagnostic, InputErrors, Severity};
pub use manifest::{Skipped, Source};

/// What to do with invalid objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// Compile every valid object and report the rest, instead of failing.
    pub keep_going: bool,
}

/// The result of a compile.
#[derive(Debug)]
pub struct Output {
    pub ir: ir::Ir,
    pub ruleset: nft::model::Ruleset,
    /// Warnings, and with `keep_going` the errors of the objects left out.
    pub diagnostics: Vec<Diagnostic>,
    /// Things worth saying with `--verbose` (headless services, ignored objects …).
    pub notes: Vec<String>,
    pub skipped: Vec<Skipped>,
}

impl Output {
    /// The ruleset as an `nft -f` script replacing svcc's tables.
    pub fn nft_text(&self) -> String {
        nft::render::render_replace(&self.ruleset)
    }

    /// The IPVS backend's model (virtual servers, dummy-interface addresses, nft glue),
    /// from the same IR.
    pub fn ipvs(&self, opts: &ipvs::build::IpvsOptions) -> ipvs::model::IpvsModel {
        ipvs::build::build(&self.ir, opts)
    }

    /// The iptables backend's rulesets (one per family), from the same IR.
    pub fn iptables(&self) -> Vec<iptables::IptRuleset> {
        iptables::build::build(&self.ir)
    }
}

/// Runs every stage. Fails (with every diagnostic, located) if the input has errors and
/// `keep_going` is off.
pub fn compile(
    sources: &[Source],
    settings: &NodeSettings,
    opts: CompileOptions,
) -> Result<Output, InputErrors> {
    Ok(lower_located(sources, settings, opts)?.build())
}

/// The first half of [`compile`] (parse and lower), taking the sources: their texts are
/// freed once the diagnostics are located. [`Lowered::build`] is the second half; between
/// the two, nothing of the parse is left, so a caller can return the freed memory to the
/// system before the model (the biggest thing built) is.
pub fn lower_sources(
    sources: Vec<Source>,
    settings: &NodeSettings,
    opts: CompileOptions,
) -> Result<Lowered, InputErrors> {
    lower_located(&sources, settings, opts)
}

/// Parsed and lowered inputs, diagnostics located: everything [`Lowered::build`] needs.
#[derive(Debug)]
pub struct Lowered {
    ir: ir::Ir,
    diags: Vec<Diagnostic>,
    notes: Vec<String>,
    skipped: Vec<Skipped>,
}

/// Parse, lower, locate the diagnostics.
fn lower_located(
    sources: &[Source],
    settings: &NodeSettings,
    opts: CompileOptions,
) -> Result<Lowered, InputErrors> {
    let mut diags = Vec::new();
    let mut notes = Vec::new();
    let parsed = manifest::parse_sources(sources, &mut diags);
    let ir = lower::lower(&parsed, settings, &mut diags, &mut notes);
    // The typed objects are the biggest thing alive: free them before building the model.
    let skipped = parsed.skipped;
    drop(parsed.objects);
    manifest::locate(&mut diags, sources);
    if !opts.keep_going && diags.iter().any(Diagnostic::is_error) {
        return Err(InputErrors(diags));
    }
    Ok(Lowered {
        ir,
        diags,
        notes,
        skipped,
    })
}

impl Lowered {
    /// Builds the nftables model: the rest of [`compile`].
    pub fn build(self) -> Output {
        let ruleset = nft::build::build(&self.ir);
        Output {
            ir: self.ir,
            ruleset,
            diagnostics: self.diags,
            notes: self.notes,
            skipped: self.skipped,
        }
    }
}
