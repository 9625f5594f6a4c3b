//! Flags (kube-proxy's names where kube-proxy has one) and the subcommands.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use svcc_compiler::config::{
    parse_cidrs, parse_kube_proxy_config, parse_nodeport_addresses, parse_port_range,
};
use svcc_compiler::ipvs::build::IpvsOptions;
use svcc_compiler::{Backend, CompileOptions, Diagnostic, NodeSettings, Output};

use svcc_runtime::iptables::{Flavor, IptApplier};
use svcc_runtime::{Applier, ApplyOptions};

use crate::inputs;

/// Exit code for input errors (bad manifests, bad flags or config).
const EXIT_INPUT: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "svcc",
    version,
    about = "A netfilter ruleset compiler for Kubernetes Services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compile manifests into an nftables ruleset (an `nft -f` script replacing tables ip/ip6 svcc).
    #[command(after_help = COMPILE_EXAMPLES)]
    Compile(CompileCmd),
    /// Compile and apply to the kernel in one atomic transaction (only svcc's tables/chains).
    #[command(after_help = APPLY_EXAMPLES)]
    Apply(ApplyCmd),
    /// Show what `apply` would change, as an nft script (nothing is applied).
    #[command(after_help = DIFF_EXAMPLES)]
    Diff(DiffCmd),
    /// Remove svcc's tables (or, with --backend iptables, its chains and jumps), nothing else.
    Cleanup(CleanupCmd),
    /// Keep the kernel in step with the manifests under --watch paths: watch, re-apply the
    /// difference on change, repair drift, serve metrics and health checks (see docs/RUN.md).
    #[command(after_help = crate::run::RUN_EXAMPLES)]
    Run(crate::run::RunCmd),
    /// Follow one packet through the node's rules: which Service, which endpoints and their
    /// chances, masquerade or not, or the REJECT/DROP and why — offline, from the manifests.
    #[command(after_help = crate::trace::TRACE_EXAMPLES)]
    Trace(crate::trace::TraceCmd),
    /// One Service as this node sees it: frontends, endpoints and their use, policies, notes.
    #[command(after_help = crate::trace::EXPLAIN_EXAMPLES)]
    Explain(crate::trace::ExplainCmd),
}

const APPLY_EXAMPLES: &str = "\
Examples:
  svcc apply --config kp.yaml --node-ip 192.168.0.2 cluster.yaml
  svcc compile --node-ip 192.168.0.2 cluster.yaml -o svcc.nft && svcc apply --ruleset svcc.nft
  svcc apply --dry-run --node-ip 192.168.0.2 cluster.yaml      # print the transaction
  svcc apply --backend iptables --node-ip 192.168.0.2 cluster.yaml

Exit status: 0 applied; 2 input errors (nothing applied); 1 the kernel refused or another
failure (the previous ruleset is left in place).";

#[derive(Args, Debug)]
pub struct ApplyCmd {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Apply a ruleset file written by `svcc compile` instead of compiling manifests.
    #[arg(long, value_name = "FILE", conflicts_with = "inputs")]
    pub ruleset: Option<PathBuf>,
    /// Print the transaction that would be sent; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// iptables flavour for --backend iptables (default: the one the host already uses).
    #[arg(long, value_enum, default_value_t = FlavorFlag::Auto)]
    pub iptables_flavor: FlavorFlag,
    /// Manifest files or directories; `-` for stdin.
    #[arg(value_name = "MANIFEST", required_unless_present = "ruleset")]
    pub inputs: Vec<PathBuf>,
}

const DIFF_EXAMPLES: &str = "\
Examples:
  svcc diff --config kp.yaml --node-ip 192.168.0.2 cluster.yaml   # the nft statements apply would send
  svcc diff --node-ip 192.168.0.2 cluster.yaml >/dev/null; [ $? = 1 ] && echo out of date

Exit status (as diff(1) and kubectl diff): 0 the kernel already holds this ruleset; 1 there are
differences (shown; also when svcc's tables would be replaced as a whole, or cannot be listed);
2 input errors (bad manifests, flags or config; nothing compared); 3 other failures (netlink).";

/// `svcc diff`'s exit status for a failure other than an input error (0 and 1 are taken by
/// \"same\" and \"different\", 2 by input errors).
const EXIT_DIFF_TROUBLE: u8 = 3;

#[derive(Args, Debug)]
pub struct DiffCmd {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Manifest files or directories; `-` for stdin.
    #[arg(value_name = "MANIFEST", required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CleanupCmd {
    /// Which rules to remove.
    #[arg(long, value_enum, default_value_t = BackendFlag::Nftables)]
    pub backend: BackendFlag,
    /// iptables flavour for --backend iptables (default: the one the host already uses).
    #[arg(long, value_enum, default_value_t = FlavorFlag::Auto)]
    pub iptables_flavor: FlavorFlag,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlavorFlag {
    Auto,
    Nft,
    Legacy,
}

impl FlavorFlag {
    fn resolve(self) -> Flavor {
        match self {
            FlavorFlag::Auto => Flavor::detect(),
            FlavorFlag::Nft => Flavor::Nft,
            FlavorFlag::Legacy => Flavor::Legacy,
        }
    }
}

const COMPILE_EXAMPLES: &str = "\
Examples:
  # Everything kubectl knows, compiled for node 192.168.0.2:
  kubectl get svc,endpointslices -A -o yaml > cluster.yaml
  svcc compile --config kp.yaml --node-ip 192.168.0.2,2001:db8::1 cluster.yaml

  # A directory of manifests (recursively), to a file, then load it:
  svcc compile --hostname-override node-a --cluster-cidr 10.244.0.0/16 \\
      --node-ip 192.168.0.2 manifests/ -o svcc.nft && nft -f svcc.nft

  # From standard input, keeping going past invalid objects:
  kubectl get all -A -o json | svcc compile --keep-going --node-ip 192.168.0.2 -

  # The IR (JSON) instead of rules:
  svcc compile --emit ir --node-ip 192.168.0.2 cluster.yaml

Exit status: 0 on success; 2 when the input has errors (nothing is written);
1 on other failures.";

#[derive(Args, Debug)]
pub struct CompileCmd {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Write the result here instead of standard output (atomically).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Emit::Nft)]
    pub emit: Emit,
    /// Manifest files or directories (`*.yaml`, `*.yml`, `*.json`, recursively); `-` for stdin.
    #[arg(value_name = "MANIFEST", required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The nftables ruleset (nft -f script).
    Nft,
    /// The IR, as JSON.
    Ir,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendFlag {
    Nftables,
    Iptables,
    /// Redirect rules (nftables) to the proxy listeners of `svcc run --backend userspace`.
    Userspace,
    /// IPVS virtual servers, VIPs on `svcc-ipvs0` and a small nftables table.
    Ipvs,
}

/// Node settings shared by every subcommand that compiles.
#[derive(Args, Debug)]
pub struct NodeFlags {
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node's name: endpoints with this nodeName are local (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// The node's IPs (IPv4 and/or IPv6), comma-separated; repeatable. They choose the IP
    /// families programmed and the NodePort addresses.
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    pub node_ip: Vec<String>,
    /// Pod CIDRs (comma-separated): traffic from outside them to a ClusterIP is masqueraded.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,
    /// Masquerade every connection to a ClusterIP.
    #[arg(long)]
    pub masquerade_all: bool,
    /// Node addresses that accept NodePorts: CIDRs (comma-separated) or `primary`. Unset: the
    /// primary node IP of each family (nftables mode) or every local address (iptables and
    /// ipvs modes), kube-proxy's per-mode defaults; never loopback.
    #[arg(long, value_name = "CIDR,..|primary")]
    pub nodeport_addresses: Option<String>,
    /// Service CIDRs (comma-separated): unallocated addresses in them are dropped.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub service_cidr: Option<String>,
    /// The cluster's NodePort range (kube-apiserver's flag; LOW-HIGH or BASE+SIZE). A nodePort
    /// outside it is served, as kube-proxy does, with a warning.
    #[arg(long, value_name = "RANGE", default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Which rules to generate, as kube-proxy's `mode` (default: the config file's `mode`,
    /// else nftables). It also chooses the config file's section (`nftables:`/`iptables:`;
    /// ipvs: `ipvs:` and the mark of `iptables:`) and the per-mode defaults.
    #[arg(long, value_enum)]
    pub backend: Option<BackendFlag>,
    /// Userspace mode: the ports of the proxy listeners (kube-proxy's flag: LOW-HIGH,
    /// BASE+SIZE or one port; empty, 0 or 0-0: the default 32768-60999).
    #[arg(long, value_name = "RANGE")]
    pub proxy_port_range: Option<String>,
    /// Userspace mode: how long an idle UDP client session is kept (kube-proxy's
    /// `--udp-timeout` / `udpIdleTimeout`; default 250ms).
    #[arg(long, value_name = "DURATION")]
    pub udp_timeout: Option<String>,
    #[command(flatten)]
    pub ipvs: IpvsFlags,
    /// Compile every valid object and report the others, instead of failing.
    #[arg(long)]
    pub keep_going: bool,
    /// Say what was skipped and why (headless services, other kinds …).
    #[arg(short, long)]
    pub verbose: bool,
}

/// IPVS mode's settings, with kube-proxy's flag names (they override the file's `ipvs:`).
#[derive(Args, Debug, Default)]
pub struct IpvsFlags {
    /// IPVS mode: the scheduler (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh; default rr).
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,
    /// IPVS mode: idle timeout of TCP sessions (e.g. 900s; 0 keeps the system's value).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,
    /// IPVS mode: timeout of TCP sessions after FIN (0 keeps the system's value).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,
    /// IPVS mode: timeout of UDP packets (0 keeps the system's value).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,
    /// IPVS mode: set arp_ignore=1 and arp_announce=2 (no ARP answers for VIPs).
    #[arg(long)]
    pub ipvs_strict_arp: bool,
    /// IPVS mode: CIDRs whose IPVS services svcc never touches (comma-separated).
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub ipvs_exclude_cidrs: Option<String>,
    /// IPVS mode: the sync period (deprecated in kube-proxy for --sync-period).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_sync_period: Option<String>,
    /// IPVS mode: the minimum sync period (deprecated in kube-proxy for --min-sync-period).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_min_sync_period: Option<String>,
}

impl IpvsFlags {
    /// Overrides `s` with the flags given.
    fn apply(&self, s: &mut NodeSettings) -> Result<(), Vec<Diagnostic>> {
        use svcc_compiler::config::{parse_duration, parse_ipvs_timeout, parse_scheduler};
        if let Some(v) = &self.ipvs_scheduler {
            s.ipvs.scheduler =
                parse_scheduler(v).map_err(|e| input_error(format!("--ipvs-scheduler: {e}")))?;
        }
        for (flag, v, dst) in [
            (
                "--ipvs-tcp-timeout",
                &self.ipvs_tcp_timeout,
                &mut s.ipvs.tcp_timeout,
            ),
            (
                "--ipvs-tcpfin-timeout",
                &self.ipvs_tcpfin_timeout,
                &mut s.ipvs.tcp_fin_timeout,
            ),
            (
                "--ipvs-udp-timeout",
                &self.ipvs_udp_timeout,
                &mut s.ipvs.udp_timeout,
            ),
        ] {
            if let Some(v) = v {
                *dst = parse_ipvs_timeout(v).map_err(|e| input_error(format!("{flag}: {e}")))?;
            }
        }
        if self.ipvs_strict_arp {
            s.ipvs.strict_arp = true;
        }
        if let Some(c) = &self.ipvs_exclude_cidrs {
            s.ipvs.exclude_cidrs =
                parse_cidrs(&[c]).map_err(|e| input_error(format!("--ipvs-exclude-cidrs: {e}")))?;
        }
        if s.backend == Backend::Ipvs {
            for (flag, v, dst) in [
                (
                    "--ipvs-sync-period",
                    &self.ipvs_sync_period,
                    &mut s.sync_period,
                ),
                (
                    "--ipvs-min-sync-period",
                    &self.ipvs_min_sync_period,
                    &mut s.min_sync_period,
                ),
            ] {
                if let Some(v) = v {
                    *dst = parse_duration(v).map_err(|e| input_error(format!("{flag}: {e}")))?;
                }
            }
        }
        Ok(())
    }
}

/// A flag or config problem: reported like an input error.
fn input_error(msg: String) -> Vec<Diagnostic> {
    vec![Diagnostic::error("<flags>", msg)]
}

impl NodeFlags {
    /// Merges the config file and the flags (flags win).
    pub fn settings(&self) -> Result<NodeSettings, Vec<Diagnostic>> {
        let mut s = NodeSettings::default();
        // The mode first (flag, else the file's `mode`, else nftables): it chooses the
        // file's section (`nftables:` / `iptables:`) the other settings come from.
        let flag_backend = self.backend.map(|b| match b {
            BackendFlag::Nftables => Backend::Nftables,
            BackendFlag::Iptables => Backend::Iptables,
            BackendFlag::Userspace => Backend::Userspace,
            BackendFlag::Ipvs => Backend::Ipvs,
        });
        if let Some(path) = &self.config {
            let src = inputs::read_source(path).map_err(|d| vec![d])?;
            let f = parse_kube_proxy_config(&src.name, &src.text).map_err(|mut d| {
                svcc_compiler::manifest::locate(&mut d, std::slice::from_ref(&src));
                d
            })?;
            if let Some(h) = f.hostname.clone() {
                s.hostname = h;
            }
            if let Some(c) = f.cluster_cidrs.clone() {
                s.cluster_cidrs = c;
            }
            if let Some(n) = f.nodeport_addresses.clone() {
                s.nodeport_addresses = n;
            }
            if let Some(b) = f.backend {
                s.backend = b;
            }
            if let Some(b) = flag_backend {
                s.backend = b;
            }
            if s.backend == Backend::Ipvs {
                // kube-proxy's IPVS mode: minSyncPeriod has no default (0: every change
                // syncs at once).
                s.min_sync_period = std::time::Duration::ZERO;
                f.apply_ipvs(&mut s.ipvs);
            }
            let m = f.section(s.backend);
            if let Some(v) = m.masquerade_all {
                s.masquerade_all = v;
            }
            if let Some(b) = m.masquerade_bit {
                s.masquerade_bit = b;
            }
            if let Some(d) = m.min_sync_period {
                s.min_sync_period = d;
            }
            if let Some(d) = m.sync_period {
                s.sync_period = d;
            }
            if let Some(l) = f.conntrack_tcp_be_liberal {
                s.conntrack_tcp_be_liberal = l;
            }
            if let Some(r) = f.proxy_port_range {
                s.proxy_port_range = r;
            }
            if let Some(d) = f.udp_idle_timeout {
                s.udp_idle_timeout = d;
            }
            let mut warnings = f.ignored_fields(&src.name, s.backend);
            svcc_compiler::manifest::locate(&mut warnings, std::slice::from_ref(&src));
            print_diags(&warnings);
        }
        if let Some(h) = &self.hostname_override {
            s.hostname = h.clone();
        }
        if s.hostname.is_empty() {
            s.hostname = inputs::hostname();
        }
        for ip in self
            .node_ip
            .iter()
            .map(|x| x.trim())
            .filter(|x| !x.is_empty())
        {
            let a: IpAddr = ip
                .parse()
                .map_err(|_| input_error(format!("--node-ip: invalid IP address {ip:?}")))?;
            if !s.node_ips.contains(&a) {
                s.node_ips.push(a);
            }
        }
        if let Some(c) = &self.cluster_cidr {
            s.cluster_cidrs =
                parse_cidrs(&[c]).map_err(|e| input_error(format!("--cluster-cidr: {e}")))?;
        }
        if self.masquerade_all {
            s.masquerade_all = true;
        }
        if let Some(n) = &self.nodeport_addresses {
            s.nodeport_addresses = parse_nodeport_addresses(&[n])
                .map_err(|e| input_error(format!("--nodeport-addresses: {e}")))?;
        }
        if let Some(c) = &self.service_cidr {
            s.service_cidrs =
                parse_cidrs(&[c]).map_err(|e| input_error(format!("--service-cidr: {e}")))?;
        }
        s.service_node_port_range = parse_port_range(&self.service_node_port_range)
            .map_err(|e| input_error(format!("--service-node-port-range: {e}")))?;
        if let Some(r) = &self.proxy_port_range {
            s.proxy_port_range = svcc_compiler::config::parse_proxy_port_range(r)
                .map_err(|e| input_error(format!("--proxy-port-range: {e}")))?;
        }
        if let Some(d) = &self.udp_timeout {
            s.udp_idle_timeout = svcc_compiler::config::parse_duration(d)
                .map_err(|e| input_error(format!("--udp-timeout: {e}")))?;
        }
        if let Some(b) = flag_backend {
            if b == Backend::Ipvs && s.backend != Backend::Ipvs {
                s.min_sync_period = std::time::Duration::ZERO;
            }
            s.backend = b;
        }
        self.ipvs.apply(&mut s)?;
        Ok(s)
    }

    /// Compiles the inputs; prints diagnostics; `Err(code)` when the run must stop.
    pub fn compile(&self, inputs_: &[PathBuf]) -> Result<Result<(NodeSettings, Output), ExitCode>> {
        let settings = match self.settings() {
            Ok(s) => s,
            Err(d) => {
                print_diags(&d);
                return Ok(Err(ExitCode::from(EXIT_INPUT)));
            }
        };
        // A file that cannot be read is an input error like an invalid object: reported,
        // and without --keep-going nothing is written; the other files are compiled either
        // way, so that every error is reported at once.
        let (sources, read_errors) = inputs::read_sources(inputs_);
        let opts = CompileOptions {
            keep_going: self.keep_going,
        };
        let lowered = match svcc_compiler::lower_sources(sources, &settings, opts) {
            Err(mut e) => {
                e.0.splice(0..0, read_errors);
                Err(e)
            }
            Ok(l) if !self.keep_going && read_errors.iter().any(Diagnostic::is_error) => {
                let mut all = read_errors;
                all.extend(l.build().diagnostics); // the rest's warnings
                Err(svcc_compiler::InputErrors(all))
            }
            Ok(l) => {
                print_diags(&read_errors);
                Ok(l)
            }
        };
        // What parse and lower freed goes back to the system before the model is built.
        match lowered.map(|l| {
            crate::release_free_memory();
            l.build()
        }) {
            Ok(out) => {
                print_diags(&out.diagnostics);
                if self.verbose {
                    for n in &out.notes {
                        eprintln!("note: {n}");
                    }
                    for s in &out.skipped {
                        eprintln!(
                            "note: {}: skipped {} {} (not used by svcc)",
                            s.file, s.kind, s.name
                        );
                    }
                    let st = out.ruleset.stats();
                    let ports: usize = out.ir.families.iter().map(|f| f.service_ports.len()).sum();
                    eprintln!(
                        "svcc: {ports} service ports; {} tables, {} sets/maps, {} elements, {} chains, {} rules; {} objects of other kinds skipped",
                        st.tables, st.sets, st.elements, st.chains, st.rules, out.skipped.len()
                    );
                } else if !out.skipped.is_empty() {
                    eprintln!("svcc: skipped {} objects of kinds svcc does not use (--verbose lists them)", out.skipped.len());
                }
                Ok(Ok((settings, out)))
            }
            Err(e) => {
                print_diags(&e.0);
                eprintln!("svcc: {e}; nothing written (--keep-going compiles the valid objects)");
                Ok(Err(ExitCode::from(EXIT_INPUT)))
            }
        }
    }
}

fn print_diags(d: &[Diagnostic]) {
    let mut err = std::io::stderr().lock();
    for x in d {
        let _ = writeln!(err, "{x}");
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Compile(c) => compile(c),
        Command::Apply(c) => apply(c),
        Command::Diff(c) => diff(c),
        Command::Cleanup(c) => cleanup(c),
        Command::Run(c) => crate::run::run(c),
        Command::Trace(c) => crate::trace::trace(c),
        Command::Explain(c) => crate::trace::explain(c),
    }
}

fn compile(c: CompileCmd) -> Result<ExitCode> {
    let (settings, out) = match c.node.compile(&c.inputs)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    if c.emit == Emit::Nft && settings.backend == Backend::Iptables {
        return write_iptables(&out, c.output.as_deref());
    }
    if c.emit == Emit::Nft && settings.backend == Backend::Ipvs {
        let model = out.ipvs(&IpvsOptions::from_settings(&settings.ipvs));
        let text = svcc_compiler::ipvs::render::render(&model);
        match &c.output {
            Some(p) => inputs::write_atomic(p, &text)?,
            None => {
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = out;
    if c.emit == Emit::Nft && settings.backend == Backend::Userspace {
        out.ruleset = userspace_ruleset(&out.ir, &settings);
    }
    // Only what is written stays alive while it is written (the model of a big cluster is
    // the biggest thing svcc holds, the IR a tenth of it).
    let what = match c.emit {
        Emit::Nft => {
            drop(out.ir);
            Ok(out.ruleset)
        }
        Emit::Ir => {
            drop(out.ruleset);
            Err(out.ir)
        }
    };
    // Streamed: the ruleset of a big cluster is never one string in memory.
    let write = |w: &mut dyn std::io::Write| -> std::io::Result<()> {
        match &what {
            Ok(ruleset) => svcc_compiler::nft::render::write_replace(w, ruleset),
            Err(ir) => {
                serde_json::to_writer_pretty(&mut *w, ir)?;
                w.write_all(b"\n")
            }
        }
    };
    match &c.output {
        Some(p) => inputs::write_atomic_with(p, write)?,
        None => {
            let mut o = std::io::BufWriter::new(std::io::stdout().lock());
            if let Err(e) = write(&mut o).and_then(|_| o.flush()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    bail!("writing standard output: {e}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--backend userspace`: the redirect rules for listener ports assigned from
/// `--proxy-port-range` as `svcc run` would on an idle node (every port free). Service ports
/// without a listener (SCTP, a range too small) are named on stderr.
fn userspace_ruleset(
    ir: &svcc_compiler::ir::Ir,
    settings: &NodeSettings,
) -> svcc_compiler::nft::model::Ruleset {
    use svcc_compiler::userspace;
    for f in &ir.families {
        for sp in &f.service_ports {
            if sp.protocol == svcc_compiler::family::L4Proto::Sctp {
                eprintln!(
                    "warning: {} ({}): SCTP is not supported in userspace mode: no listener, its traffic is not proxied",
                    sp.name,
                    f.family.keyword()
                );
            }
        }
    }
    let keys = userspace::listener_keys(ir);
    let a = userspace::assign(
        &keys,
        settings.proxy_port_range,
        &userspace::Ports::new(),
        |_, _| true,
    );
    for k in &a.unassigned {
        eprintln!(
            "error: {k}: no free port left in --proxy-port-range {}-{} ({} listeners): not proxied",
            settings.proxy_port_range.0,
            settings.proxy_port_range.1,
            keys.len()
        );
    }
    userspace::build(ir, &a.ports)
}

/// `--backend iptables`: iptables-restore input for IPv4 (to FILE) and ip6tables-restore
/// input for IPv6 (to FILE.v6); on stdout, one after the other.
fn write_iptables(out: &Output, path: Option<&std::path::Path>) -> Result<ExitCode> {
    use svcc_compiler::family::Family;
    let sets = out.iptables();
    match path {
        Some(p) => {
            for rs in &sets {
                let target = match rs.family {
                    Family::Ip => p.to_path_buf(),
                    Family::Ip6 => PathBuf::from(format!("{}.v6", p.display())),
                };
                inputs::write_atomic(&target, &rs.restore_text())?;
            }
        }
        None => {
            let mut o = std::io::stdout().lock();
            for rs in &sets {
                let _ = o.write_all(rs.restore_text().as_bytes());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_line(r: &svcc_runtime::ApplyReport) -> String {
    format!(
        "svcc: {} apply{}: {} messages, {} bytes, generation {}, {} retries ({})",
        if r.full { "full" } else { "incremental" },
        if r.committed {
            ""
        } else {
            " (nothing committed)"
        },
        r.messages,
        r.bytes,
        r.generation,
        r.retries,
        r.reason
    )
}

fn apply(c: ApplyCmd) -> Result<ExitCode> {
    if let Some(path) = &c.ruleset {
        // svcc's own output streams through the fast parser (no whole text, no parse tree);
        // anything it does not recognise, and every error, is pest's (below).
        if let Ok(Some(rs)) = svcc_grammar::fast::parse_file(path) {
            return apply_nft(rs, c.dry_run);
        }
        let src = inputs::read_file(path)?;
        let rs = match svcc_grammar::parse_ruleset(&src.text) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {}:{}:{}: {}", src.name, e.line, e.column, e.message);
                return Ok(ExitCode::from(EXIT_INPUT));
            }
        };
        return apply_nft(rs, c.dry_run);
    }
    let (settings, out) = match c.node.compile(&c.inputs)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    if settings.backend == Backend::Ipvs {
        return apply_ipvs(&settings, &out, c.dry_run);
    }
    if settings.backend == Backend::Userspace {
        eprintln!("svcc: the userspace mode's rules send traffic to proxy listeners that only `svcc run --backend userspace` opens; use it (or `svcc compile --backend userspace` to review the rules)");
        return Ok(ExitCode::from(EXIT_INPUT));
    }
    if settings.backend == Backend::Iptables {
        let sets = out.iptables();
        if c.dry_run {
            for rs in &sets {
                print!("{}", rs.restore_text());
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut a = IptApplier::new(c.iptables_flavor.resolve());
        let r = a.apply(&sets).context("applying with iptables-restore")?;
        eprintln!(
            "svcc: iptables ({:?}): {} chains written, {} deleted, {} jumps inserted, {} restores",
            a.flavor(),
            r.chains_written,
            r.chains_deleted,
            r.jumps_inserted,
            r.restores
        );
        return Ok(ExitCode::SUCCESS);
    }
    apply_nft(out.ruleset, c.dry_run)
}

fn apply_nft(rs: svcc_compiler::nft::model::Ruleset, dry_run: bool) -> Result<ExitCode> {
    let mut a = Applier::new().context("opening the netlink socket")?;
    let opts = ApplyOptions {
        dry_run,
        script: dry_run,
        ..Default::default()
    };
    // `apply_owned`: the applier keeps the model as "last applied" without copying it.
    match a.apply_owned(rs, &opts) {
        Ok(r) => {
            if dry_run {
                print!("{}", r.script);
            }
            eprintln!("{}", report_line(&r));
            Ok(ExitCode::SUCCESS)
        }
        Err(svcc_runtime::ApplyError::Refused(all)) => {
            eprintln!("svcc: the kernel refused the transaction; nothing was applied, the previous ruleset is unchanged:");
            for r in &all {
                eprintln!("  {r}");
            }
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("svcc: apply failed, the previous ruleset is unchanged: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `svcc diff`: exit status as diff(1) (see `DIFF_EXAMPLES`); no failure may exit 1, which
/// means "differences".
fn diff(c: DiffCmd) -> Result<ExitCode> {
    match diff_inner(c) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("svcc: {e:#}");
            Ok(ExitCode::from(EXIT_DIFF_TROUBLE))
        }
    }
}

/// Exit status 1: there are differences.
const EXIT_DIFFERENT: u8 = 1;

fn diff_inner(c: DiffCmd) -> Result<ExitCode> {
    let (settings, out) = match c.node.compile(&c.inputs)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    if settings.backend == Backend::Ipvs {
        return diff_ipvs(&settings, &out);
    }
    if settings.backend == Backend::Iptables {
        eprintln!("svcc: diff compares nftables rulesets; for iptables, `svcc apply --backend iptables --dry-run` prints the restore input");
        return Ok(ExitCode::from(EXIT_INPUT));
    }
    let mut out = out;
    if settings.backend == Backend::Userspace {
        // The ports `svcc run` assigns on an idle node (a port taken there moves its listener).
        out.ruleset = userspace_ruleset(&out.ir, &settings);
    }
    // Compare with what the kernel holds (its listing, parsed back by the grammar), so that the
    // difference is real even from a fresh process.
    if let Some(current) = kernel_listing(&out.ruleset) {
        let desired = svcc_grammar::normalize_for_compare(&out.ruleset);
        match svcc_runtime::diff_script(&current, &desired) {
            Ok(script) => {
                let changes = script
                    .lines()
                    .filter(|l| {
                        l.starts_with("add ") || l.starts_with("delete ") || l.starts_with("flush ")
                    })
                    .count();
                print!("{script}");
                eprintln!(
                    "svcc: {changes} statement(s) to bring the kernel's svcc tables up to date"
                );
                return Ok(if changes == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_DIFFERENT)
                });
            }
            Err(why) => eprintln!("svcc: apply would replace svcc's tables as a whole ({why})"),
        }
    }
    let mut a = Applier::new().context("opening the netlink socket")?;
    let opts = ApplyOptions {
        dry_run: true,
        script: true,
        ..Default::default()
    };
    let r = a
        .apply_owned(out.ruleset, &opts)
        .context("computing the difference")?;
    print!("{}", r.script);
    eprintln!("{}", report_line(&r));
    // A full replace (the kernel's tables could not be compared statement by statement):
    // counted as a difference, as it would be sent.
    Ok(if r.messages == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENT)
    })
}

/// svcc's tables as the kernel lists them (`nft list table`), normalised like a compiled model;
/// None when nft is not there or a listing does not parse.
fn kernel_listing(
    desired: &svcc_compiler::nft::model::Ruleset,
) -> Option<svcc_compiler::nft::model::Ruleset> {
    let mut tables = Vec::new();
    for t in &desired.tables {
        let o = std::process::Command::new("nft")
            .args(["list", "table", t.family.keyword(), &t.name])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        if !o.status.success() {
            continue; // no such table: the difference creates it
        }
        let text = String::from_utf8_lossy(&o.stdout);
        match svcc_grammar::parse_nft_list(&text) {
            Ok(rs) => tables.extend(rs.tables),
            Err(e) => {
                eprintln!(
                    "svcc: cannot read the kernel's listing of table {} {}: {e}",
                    t.family.keyword(),
                    t.name
                );
                return None;
            }
        }
    }
    Some(svcc_compiler::nft::model::Ruleset { tables })
}

/// The IPVS model for this node: NodePort virtual servers on its current addresses.
fn ipvs_model(settings: &NodeSettings, out: &Output) -> svcc_compiler::ipvs::model::IpvsModel {
    let mut o = IpvsOptions::from_settings(&settings.ipvs);
    match svcc_runtime::ipvs::local_addrs() {
        Ok(a) => o.local_addrs = Some(a),
        Err(e) => eprintln!("svcc: warning: cannot list local addresses ({e}); NodePorts on the --node-ip addresses only"),
    }
    out.ipvs(&o)
}

/// `svcc apply --backend ipvs`: IPVS over generic netlink, svcc-ipvs0, the glue table.
fn apply_ipvs(settings: &NodeSettings, out: &Output, dry_run: bool) -> Result<ExitCode> {
    let model = ipvs_model(settings, out);
    if dry_run {
        print!("{}", svcc_compiler::ipvs::render::render(&model));
        return Ok(ExitCode::SUCCESS);
    }
    let want = svcc_runtime::ipvs::desired(&model, settings.ipvs.strict_arp);
    let mut a = match svcc_runtime::ipvs::IpvsApplier::new() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("svcc: cannot program IPVS: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match a.apply(&want) {
        Ok(r) => {
            eprintln!("svcc: ipvs apply: {r}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("svcc: ipvs apply failed: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `svcc diff --backend ipvs`: what apply would change, in ipvsadm/ip syntax.
fn diff_ipvs(settings: &NodeSettings, out: &Output) -> Result<ExitCode> {
    let model = ipvs_model(settings, out);
    let want = svcc_runtime::ipvs::desired(&model, settings.ipvs.strict_arp);
    let mut a = svcc_runtime::ipvs::IpvsApplier::new().context("opening IPVS")?;
    let mut lines = a.diff(&want).context("reading the kernel's IPVS state")?;
    // The glue table, as `svcc diff` shows nftables changes.
    if let Some(current) = kernel_listing(&model.glue) {
        let desired = svcc_grammar::normalize_for_compare(&model.glue);
        match svcc_runtime::diff_script(&current, &desired) {
            Ok(script) => lines.extend(
                script
                    .lines()
                    .filter(|l| {
                        l.starts_with("add ") || l.starts_with("delete ") || l.starts_with("flush ")
                    })
                    .map(|l| format!("nft {l}")),
            ),
            Err(why) => lines.push(format!(
                "# svcc's glue tables are replaced as a whole ({why})"
            )),
        }
    }
    for l in &lines {
        println!("{l}");
    }
    if lines.is_empty() {
        eprintln!("svcc: no difference");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("svcc: {} change(s)", lines.len());
        Ok(ExitCode::from(EXIT_DIFFERENT))
    }
}

fn cleanup(c: CleanupCmd) -> Result<ExitCode> {
    match c.backend {
        BackendFlag::Ipvs => {
            let mut a = svcc_runtime::ipvs::IpvsApplier::new().context("opening IPVS")?;
            let n = a
                .cleanup()
                .context("removing svcc's IPVS services, svcc-ipvs0 and tables")?;
            eprintln!("svcc: ipvs cleanup: {n} virtual servers, interface svcc-ipvs0 and svcc's tables removed");
        }
        BackendFlag::Nftables | BackendFlag::Userspace => {
            let mut a = Applier::new().context("opening the netlink socket")?;
            let r = a.cleanup().context("deleting svcc's tables")?;
            eprintln!("{}", report_line(&r));
        }
        BackendFlag::Iptables => {
            use svcc_compiler::family::Family;
            use svcc_compiler::ir::{FamilyIr, Ir, NodePortAddrs};
            // The jump rules do not depend on the services: an empty IR per family gives them.
            let empty = |family| FamilyIr {
                family,
                node_ports_on: NodePortAddrs::AllLocal,
                node_ips: vec![],
                cluster_cidrs: vec![],
                masquerade_all: false,
                masquerade_mark: NodeSettings::default().masquerade_mark(),
                service_cidrs: vec![],
                drop_ct_invalid: true,
                service_ports: vec![],
            };
            let ir = Ir {
                families: vec![empty(Family::Ip), empty(Family::Ip6)],
            };
            let sets = svcc_compiler::iptables::build::build(&ir);
            let mut a = IptApplier::new(c.iptables_flavor.resolve());
            let r = a
                .cleanup(&sets)
                .context("removing svcc's iptables chains")?;
            eprintln!(
                "svcc: iptables ({:?}): {} chains deleted",
                a.flavor(),
                r.chains_deleted
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
