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
//! - `ipvs`: `svcc apply --backend ipvs` (needs IP_VS: only when named, in the VM of
//!   `scripts/vm-test.sh`); the artifact is `svcc compile --backend ipvs`;
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
    /// Starts what must keep running while the flows run (a daemon); it is stopped when the
    /// returned guard is dropped, also on failure.
    fn start(
        &self,
        _netns: &str,
        _file: &Path,
        _input: &CaseInput<'_>,
    ) -> Result<Option<Running>, String> {
        Ok(None)
    }
    /// The backends see a node address as the source of every connection (a proxy dials them):
    /// every `backends` outcome then expects masquerading, whatever the flow says.
    fn source_is_node(&self) -> bool {
        false
    }
    /// The mode picks backends deterministically (IPVS's rr): flows run in parallel would
    /// interleave their new connections to one virtual server in lockstep, and each flow
    /// would then see only the backends of its turns. Such a loader runs a case's flows one
    /// at a time.
    fn sequential_flows(&self) -> bool {
        false
    }
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

/// A process started by a loader, killed (and reaped) on drop.
pub struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The listener ports of the userspace loader: outside the clients' source ports
/// (`run::CLIENT_PORTS`), so a node-sourced client never collides with a listener.
pub const USERSPACE_PORTS: &str = "61000-61999";

/// `svcc run --backend userspace` in the node namespace (the rules and the proxy listeners),
/// ready when its `/healthz` answers 200 (rules applied, every listener bound). The artifact is
/// `svcc compile --backend userspace` of the same inputs (the rules `svcc run` starts with).
pub struct Userspace;

impl Loader for Userspace {
    fn name(&self) -> String {
        "userspace".into()
    }
    fn build(&self, input: &CaseInput<'_>, work: &Path) -> Result<PathBuf, String> {
        let out = work.join("ruleset.nft");
        compile(
            input,
            &[
                "--backend",
                "userspace",
                "--proxy-port-range",
                USERSPACE_PORTS,
            ],
            &out,
        )?;
        Ok(out)
    }
    fn load(&self, _netns: &str, _file: &Path, _input: &CaseInput<'_>) -> Result<(), String> {
        Ok(())
    }
    fn start(
        &self,
        netns: &str,
        file: &Path,
        input: &CaseInput<'_>,
    ) -> Result<Option<Running>, String> {
        let files = crate::case::manifest_files(input.dir);
        let mut flags = input.case.compile_args(input.dir);
        flags.truncate(flags.len() - files.len());
        let mut args: Vec<String> = [
            "run",
            "--backend",
            "userspace",
            "--proxy-port-range",
            USERSPACE_PORTS,
            "--min-sync-period",
            "0s",
            "--metrics-bind-address",
            "",
            "--healthz-bind-address",
            "127.0.0.1:10256",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(flags);
        for f in &files {
            args.push("--watch".into());
            args.push(f.display().to_string());
        }
        let log = file.with_file_name("svcc-run.log");
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(svcc_bin())
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start svcc run: {e}"))?;
        let mut running = Running(child);
        let ns = netns.to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = running.0.try_wait() {
                return Err(format!(
                    "svcc run exited ({st}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            let ns2 = ns.clone();
            let ok = std::thread::spawn(move || healthz_ok(&ns2))
                .join()
                .unwrap_or(false);
            if ok {
                return Ok(Some(running));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "svcc run: /healthz not 200 after 20 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    fn source_is_node(&self) -> bool {
        true
    }
}

/// `GET /healthz` on 127.0.0.1:10256 of a namespace (this thread enters it): 200?
fn healthz_ok(ns: &str) -> bool {
    use std::io::{Read, Write};
    if crate::netns::enter(ns).is_err() {
        return false;
    }
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:10256".parse().unwrap(),
        std::time::Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200")
}

/// `svcc compile --backend ipvs` (the artifact: ipvsadm-restore text, dummy addresses, glue),
/// loaded by `svcc apply --backend ipvs` with the same inputs (IPVS over generic netlink, the
/// VIPs on svcc-ipvs0, the glue table). Needs a kernel with IP_VS: only when
/// `SVCC_FLOW_LOADERS` names it (the VM of `scripts/vm-test.sh` does).
pub struct Ipvs;

impl Loader for Ipvs {
    fn sequential_flows(&self) -> bool {
        true
    }
    fn name(&self) -> String {
        "ipvs".into()
    }
    fn build(&self, input: &CaseInput<'_>, work: &Path) -> Result<PathBuf, String> {
        let out = work.join("ipvs.txt");
        compile(input, &["--backend", "ipvs"], &out)?;
        Ok(out)
    }
    fn load(&self, netns: &str, _file: &Path, input: &CaseInput<'_>) -> Result<(), String> {
        let bin = svcc_bin().display().to_string();
        let mut args: Vec<String> = vec!["apply".into(), "--backend".into(), "ipvs".into()];
        args.extend(input.case.compile_args(input.dir));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in(netns, &bin, &args).map(|_| ())
    }
    fn dump(&self, netns: &str) -> String {
        let a = run_in(netns, "ipvsadm", &["-Ln"]).unwrap_or_else(|e| e);
        let b = run_in(netns, "ip", &["addr", "show", "dev", "svcc-ipvs0"]).unwrap_or_else(|e| e);
        let c = run_in(netns, "nft", &["list", "ruleset"]).unwrap_or_else(|e| e);
        format!("{a}\n{b}\n{c}")
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
        .unwrap_or_else(|_| "nft,apply,iptables-nft,iptables-legacy,userspace".into());
    let mut v: Vec<Box<dyn Loader>> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "nft" => v.push(Box::new(Nft)),
            "apply" => v.push(Box::new(SvccApply)),
            "iptables" | "iptables-nft" => v.push(Box::new(IptablesRestore("nft"))),
            "iptables-legacy" => v.push(Box::new(IptablesRestore("legacy"))),
            "userspace" => v.push(Box::new(Userspace)),
            "ipvs" => v.push(Box::new(Ipvs)),
            s if s.starts_with("prebuilt:") => v.push(Box::new(Prebuilt(PathBuf::from(&s["prebuilt:".len()..])))),
            other => {
                return Err(format!(
                    "SVCC_FLOW_LOADERS: unknown loader `{other}` (known: nft, apply, iptables[-nft], iptables-legacy, userspace, ipvs, prebuilt:DIR)"
                ))
            }
        }
    }
    if v.is_empty() {
        return Err("SVCC_FLOW_LOADERS names no loader".into());
    }
    Ok(v)
}
