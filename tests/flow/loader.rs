//! How the ruleset under test is produced and put into the node namespace. The same cases run
//! through every loader; choose them with `SVCC_FLOW_LOADERS` (comma-separated, default all four of
//! `nft,apply,iptables-nft,iptables-legacy`):
//!
//! - `nft`: `svcc compile ... -o ruleset.nft`, then `nft -f ruleset.nft` in the node namespace;
//! - `apply`: the same file, loaded by svcc's own netlink applier, `svcc apply --ruleset FILE`;
//! - `iptables`: `svcc compile --backend iptables ... -o rules.txt` (+ `rules.txt.v6`) is kept as
//!   the artifact; `svcc apply --backend iptables` with the same inputs loads it (iptables-restore
//!   plus the jumps from the built-in chains). iptables mode differs from nftables mode by design
//!   (see docs/FLOW-TESTS.md): flows mark those with `skip: {iptables: reason}`;
//! - `prebuilt:DIR`: no compiler: `DIR/<case>.nft` is loaded with `nft -f` (hand-written rules,
//!   for working on the framework or on a case).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::case::Case;

/// What a loader needs to know about a case.
pub struct CaseInput<'a> {
    pub name: &'a str,
    pub dir: &'a Path,
    pub case: &'a Case,
}

pub trait Loader: Send + Sync {
    /// Short name (used in test names when several loaders run).
    fn name(&self) -> String;
    /// Produces the ruleset for a case in `work`; returns the file to load.
    fn build(&self, input: &CaseInput<'_>, work: &Path) -> Result<PathBuf, String>;
    /// Loads it into the namespace.
    fn load(&self, netns: &str, file: &Path, input: &CaseInput<'_>) -> Result<(), String>;
    /// What is loaded now, for failure reports.
    fn dump(&self, netns: &str) -> String {
        run_in(netns, "nft", &["list", "ruleset"]).unwrap_or_else(|e| e)
    }
}

pub fn svcc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_svcc"))
}

/// Runs a command inside a namespace (`ip netns exec`), returning stdout, or an error with
/// the command line, exit status and stderr.
pub fn run_in(netns: &str, prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, prog])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip netns exec {netns} {prog}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{prog} {}` in {netns} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `svcc compile <case flags> <extra> FILES -o OUT`; the command line is saved next to it.
pub fn compile(input: &CaseInput<'_>, extra: &[&str], out: &Path) -> Result<(), String> {
    let mut args: Vec<String> = vec!["compile".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(input.case.compile_args(input.dir));
    args.push("-o".into());
    args.push(out.display().to_string());
    let cmdline = format!("{} {}", svcc_bin().display(), args.join(" "));
    if let Some(dir) = out.parent() {
        let _ = std::fs::write(dir.join("compile.cmd"), format!("{cmdline}\n"));
    }
    let o = Command::new(svcc_bin())
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run svcc: {e}\n  {cmdline}"))?;
    if !o.status.success() {
        return Err(format!(
            "svcc compile failed ({}):\n  {cmdline}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    // The iptables writer puts IPv6 rules in OUT.v6 (and nothing in OUT on an IPv6-only node).
    let v6 = PathBuf::from(format!("{}.v6", out.display()));
    if !out.exists() && !v6.exists() {
        return Err(format!(
            "svcc compile succeeded but wrote no {}\n  {cmdline}",
            out.display()
        ));
    }
    Ok(())
}

/// `svcc compile` + `nft -f`.
pub struct Nft;

impl Loader for Nft {
    fn name(&self) -> String {
        "nft".into()
    }
    fn build(&self, input: &CaseInput<'_>, work: &Path) -> Result<PathBuf, String> {
        let out = work.join("ruleset.nft");
        compile(input, &[], &out)?;
        Ok(out)
    }
    fn load(&self, netns: &str, file: &Path, _input: &CaseInput<'_>) -> Result<(), String> {
        run_in(netns, "nft", &["-f", &file.display().to_string()]).map(|_| ())
    }
}

/// `svcc compile` + `svcc apply --ruleset FILE` (svcc's own netlink applier).
pub struct SvccApply;

impl Loader for SvccApply {
    fn name(&self) -> String {
        "apply".into()
    }
    fn build(&self, input: &CaseInput<'_>, work: &Path) -> Result<PathBuf, String> {
        Nft.build(input, work)
    }
    fn load(&self, netns: &str, file: &Path, _input: &CaseInput<'_>) -> Result<(), String> {
        let bin = svcc_bin().display().to_string();
        run_in(
            netns,
            &bin,
            &["apply", "--ruleset", &file.display().to_string()],
        )
        .map(|_| ())
    }
}

/// `svcc compile --backend iptables` (kept as the artifact: `rules.txt`, `rules.txt.v6`), loaded by
/// `svcc apply --backend iptables` with the same inputs, which also inserts the jumps from the
/// built-in chains that a plain `iptables-restore --noflush` of the file would lack.
/// The flavour is `nft` (iptables-nft) or `legacy` (iptables-legacy).
pub struct IptablesRestore(pub &'static str);

impl Loader for IptablesRestore {
    fn name(&self) -> String {
        format!("iptables-{}", self.0)
    }
    fn build(&self, input: &CaseInput<'_>, work: &Path) -> Result<PathBuf, String> {
        let out = work.join("rules.txt");
        compile(input, &["--backend", "iptables"], &out)?;
        Ok(out)
    }
    fn load(&self, netns: &str, _file: &Path, input: &CaseInput<'_>) -> Result<(), String> {
        let bin = svcc_bin().display().to_string();
        let mut args: Vec<String> = vec![
            "apply".into(),
            "--backend".into(),
            "iptables".into(),
            "--iptables-flavor".into(),
            self.0.into(),
        ];
        args.extend(input.case.compile_args(input.dir));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in(netns, &bin, &args).map(|_| ())
    }
    fn dump(&self, netns: &str) -> String {
        let a = run_in(netns, &format!("iptables-{}-save", self.0), &[]).unwrap_or_else(|e| e);
        let b = run_in(netns, &format!("ip6tables-{}-save", self.0), &[]).unwrap_or_else(|e| e);
        format!("{a}\n{b}")
    }
}

/// Hand-written rules: `DIR/<case>.nft`, loaded with `nft -f`.
pub struct Prebuilt(pub PathBuf);

impl Loader for Prebuilt {
    fn name(&self) -> String {
        "prebuilt".into()
    }
    fn build(&self, input: &CaseInput<'_>, work: &Path) -> Result<PathBuf, String> {
        let src = self.0.join(format!("{}.nft", input.name));
        let out = work.join("ruleset.nft");
        std::fs::copy(&src, &out).map_err(|e| format!("{}: {e}", src.display()))?;
        Ok(out)
    }
    fn load(&self, netns: &str, file: &Path, input: &CaseInput<'_>) -> Result<(), String> {
        Nft.load(netns, file, input)
    }
}

/// The loaders named by `SVCC_FLOW_LOADERS` (default: every backend and loader).
pub fn from_env() -> Result<Vec<Box<dyn Loader>>, String> {
    let spec = std::env::var("SVCC_FLOW_LOADERS")
        .unwrap_or_else(|_| "nft,apply,iptables-nft,iptables-legacy".into());
    let mut v: Vec<Box<dyn Loader>> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "nft" => v.push(Box::new(Nft)),
            "apply" => v.push(Box::new(SvccApply)),
            "iptables" | "iptables-nft" => v.push(Box::new(IptablesRestore("nft"))),
            "iptables-legacy" => v.push(Box::new(IptablesRestore("legacy"))),
            s if s.starts_with("prebuilt:") => v.push(Box::new(Prebuilt(PathBuf::from(&s["prebuilt:".len()..])))),
            other => {
                return Err(format!(
                    "SVCC_FLOW_LOADERS: unknown loader `{other}` (known: nft, apply, iptables[-nft], iptables-legacy, prebuilt:DIR)"
                ))
            }
        }
    }
    if v.is_empty() {
        return Err("SVCC_FLOW_LOADERS names no loader".into());
    }
    Ok(v)
}
