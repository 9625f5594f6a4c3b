//! Flags (kube-proxy's names where kube-proxy has one) and the subcommands.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use svcc_compiler::config::{parse_cidrs, parse_kube_proxy_config, parse_nodeport_addresses};
use svcc_compiler::{Backend, CompileOptions, Diagnostic, NodeSettings, Output};

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
    /// Node addresses that accept NodePorts: CIDRs (comma-separated) or `primary`.
    #[arg(long, value_name = "CIDR,..|primary")]
    pub nodeport_addresses: Option<String>,
    /// Service CIDRs (comma-separated): unallocated addresses in them are dropped.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub service_cidr: Option<String>,
    /// Which rules to generate.
    #[arg(long, value_enum)]
    pub backend: Option<BackendFlag>,
    /// Compile every valid object and report the others, instead of failing.
    #[arg(long)]
    pub keep_going: bool,
    /// Say what was skipped and why (headless services, other kinds …).
    #[arg(short, long)]
    pub verbose: bool,
}

/// A flag or config problem: reported like an input error.
fn input_error(msg: String) -> Vec<Diagnostic> {
    vec![Diagnostic::error("<flags>", msg)]
}

impl NodeFlags {
    /// Merges the config file and the flags (flags win).
    pub fn settings(&self) -> Result<NodeSettings, Vec<Diagnostic>> {
        let mut s = NodeSettings::default();
        if let Some(path) = &self.config {
            let src = inputs::read_file(path).map_err(|e| input_error(format!("{e:#}")))?;
            let f = parse_kube_proxy_config(&src.name, &src.text).map_err(|mut d| {
                svcc_compiler::manifest::locate(&mut d, std::slice::from_ref(&src));
                d
            })?;
            if let Some(h) = f.hostname {
                s.hostname = h;
            }
            if let Some(c) = f.cluster_cidrs {
                s.cluster_cidrs = c;
            }
            if let Some(m) = f.masquerade_all {
                s.masquerade_all = m;
            }
            if let Some(b) = f.masquerade_bit {
                s.masquerade_bit = b;
            }
            if let Some(n) = f.nodeport_addresses {
                s.nodeport_addresses = n;
            }
            if let Some(b) = f.backend {
                s.backend = b;
            }
            if let Some(d) = f.min_sync_period {
                s.min_sync_period = d;
            }
            if let Some(d) = f.sync_period {
                s.sync_period = d;
            }
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
        match self.backend {
            Some(BackendFlag::Nftables) => s.backend = Backend::Nftables,
            Some(BackendFlag::Iptables) => s.backend = Backend::Iptables,
            None => {}
        }
        if s.backend == Backend::Iptables {
            return Err(input_error(
                "the iptables backend is not available yet: use --backend nftables".into(),
            ));
        }
        Ok(s)
    }

    /// Compiles the inputs; prints diagnostics; `Err(code)` when the run must stop.
    pub fn compile(&self, inputs_: &[PathBuf]) -> Result<Result<Output, ExitCode>> {
        let settings = match self.settings() {
            Ok(s) => s,
            Err(d) => {
                print_diags(&d);
                return Ok(Err(ExitCode::from(EXIT_INPUT)));
            }
        };
        let sources = inputs::read_sources(inputs_)?;
        let opts = CompileOptions {
            keep_going: self.keep_going,
        };
        match svcc_compiler::compile(&sources, &settings, opts) {
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
                Ok(Ok(out))
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
    }
}

fn compile(c: CompileCmd) -> Result<ExitCode> {
    let out = match c.node.compile(&c.inputs)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    let text = match c.emit {
        Emit::Nft => out.nft_text(),
        Emit::Ir => serde_json::to_string_pretty(&out.ir).context("serialising the IR")? + "\n",
    };
    match &c.output {
        Some(p) => inputs::write_atomic(p, &text)?,
        None => {
            let mut o = std::io::stdout().lock();
            if let Err(e) = o.write_all(text.as_bytes()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    bail!("writing standard output: {e}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
