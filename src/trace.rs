//! `svcc trace` and `svcc explain`: flags, reading, printing. The answers come from
//! `svcc_compiler::trace`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use svcc_compiler::family::L4Proto;
use svcc_compiler::trace::{Model, Packet};

use crate::cli::NodeFlags;
use crate::inputs;

/// Exit code for bad flags or a bad packet.
const EXIT_INPUT: u8 = 2;

pub const TRACE_EXAMPLES: &str = "\
Examples:
  # A pod reaching a ClusterIP:
  svcc trace --config kp.yaml --node-ip 192.168.0.2 cluster.yaml \\
      --from 10.0.0.2 --to 172.30.0.41 --port 80
  # An external client on a NodePort, UDP, as JSON:
  svcc trace --node-ip 192.168.0.2 --cluster-cidr 10.0.0.0/16 cluster.yaml \\
      --from 203.0.113.7 --to 192.168.0.2 --port 30053 --proto udp --output json
  # The same packet in iptables or userspace mode:
  svcc trace --backend iptables ...

Where the packet comes from is decided as the node sees it: a node IP is the node itself
(output path); an address in the cluster CIDRs (--cluster-cidr) is a pod; anything else is
an external client. Objects with errors are left out (and listed), as with --keep-going.

JSON (--output json): {\"verdict\": \"dnat\"|\"reject\"|\"drop\"|\"accept\", \"service\":
\"ns/name:port\"|null, \"frontend\": \"cluster_ip\"|\"node_port\"|\"external_ip\"|\"load_balancer\"|null,
\"backends\": [{\"address\", \"port\", \"probability\", \"local\", \"masquerade\"}], \"masquerade\",
\"affinity\", \"affinity_timeout_seconds\", \"source_kind\": \"node\"|\"pod\"|\"external\", \"mode\",
\"packet\", \"steps\": [{\"what\", \"why\", \"from\": \"file:line Kind ns/name field\"|null}],
\"left_out\": [\"...\"]}; \"accept\" means the proxy leaves the packet alone (README: trace).

Exit status: 0 a trace was printed (whatever its verdict); 2 bad flags or packet.";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoFlag {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Args, Debug)]
pub struct TraceCmd {
    #[command(flatten)]
    pub node: NodeFlags,
    /// The packet's source address, or `node` for the node itself (its first node IP of the
    /// destination's family).
    #[arg(long, value_name = "IP|node")]
    pub from: String,
    /// Other addresses of the node, not given as --node-ip (they are the node as a source,
    /// and take NodePorts where every local address does); comma-separated, repeatable.
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    pub local_address: Vec<IpAddr>,
    /// The packet's destination address.
    #[arg(long, value_name = "IP")]
    pub to: IpAddr,
    /// The destination port.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The protocol.
    #[arg(long, value_enum, default_value_t = ProtoFlag::Tcp)]
    pub proto: ProtoFlag,
    /// Text for people, JSON for scripts (a stable schema: see below and the README).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Manifest files or directories; `-` for stdin.
    #[arg(value_name = "MANIFEST", required = true)]
    pub inputs: Vec<PathBuf>,
}

pub const EXPLAIN_EXAMPLES: &str = "\
Examples:
  svcc explain --node-ip 192.168.0.2 shop/web cluster.yaml
  svcc explain --node-ip 192.168.0.2 --output json kube-system/kube-dns cluster.yaml

Every frontend (ClusterIP, NodePort and on which addresses, externalIPs, load-balancer IPs),
every endpoint and whether it is used for cluster and for local traffic, the policies, and
svcc's notes (headless, ExternalName, selector-less, problems with the object).

Exit status: 0 explained; 1 no such Service in the input (near names are suggested); 2 bad
flags.";

#[derive(Args, Debug)]
pub struct ExplainCmd {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Text for people, JSON for scripts (a stable schema: see below and the README).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// The Service: `namespace/name` (or `name` in namespace default).
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Manifest files or directories; `-` for stdin.
    #[arg(value_name = "MANIFEST", required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn settings(node: &NodeFlags) -> Result<svcc_compiler::NodeSettings, ExitCode> {
    node.settings().map_err(|d| {
        for x in &d {
            eprintln!("{x}");
        }
        ExitCode::from(EXIT_INPUT)
    })
}

pub fn trace(c: TraceCmd) -> Result<ExitCode> {
    let settings = match settings(&c.node) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (sources, unreadable) = inputs::read_sources(&c.inputs);
    let mut model = Model::new(&sources, &settings).with_local_addresses(c.local_address.clone());
    // Files that could not be read are left out like objects with errors.
    model.diagnostics.extend(unreadable);
    let from = match c.from.trim() {
        "node" => match model.node_source(c.to) {
            Some(a) => a,
            None => {
                eprintln!("svcc: --from node: no node address of the family of {} is known (give --node-ip or --local-address)", c.to);
                return Ok(ExitCode::from(EXIT_INPUT));
            }
        },
        s => match s.parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                eprintln!("svcc: --from {s:?}: not an IP address or `node`");
                return Ok(ExitCode::from(EXIT_INPUT));
            }
        },
    };
    if from.is_ipv4() != c.to.is_ipv4() {
        eprintln!(
            "svcc: --from {from} and --to {} are of different IP families",
            c.to
        );
        return Ok(ExitCode::from(EXIT_INPUT));
    }
    let packet = Packet {
        source: from,
        destination: c.to,
        port: c.port,
        protocol: match c.proto {
            ProtoFlag::Tcp => L4Proto::Tcp,
            ProtoFlag::Udp => L4Proto::Udp,
            ProtoFlag::Sctp => L4Proto::Sctp,
        },
    };
    let t = model.trace(&packet);
    let text = match c.output {
        OutputFormat::Text => t.to_string(),
        OutputFormat::Json => serde_json::to_string_pretty(&t)? + "\n",
    };
    print_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

pub fn explain(c: ExplainCmd) -> Result<ExitCode> {
    let settings = match settings(&c.node) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (sources, unreadable) = inputs::read_sources(&c.inputs);
    let mut model = Model::new(&sources, &settings);
    model.diagnostics.extend(unreadable);
    match model.explain(&c.service) {
        Ok(e) => {
            let text = match c.output {
                OutputFormat::Text => e.to_string(),
                OutputFormat::Json => serde_json::to_string_pretty(&e)? + "\n",
            };
            print_out(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(m) => {
            eprintln!("svcc: {m}");
            Ok(ExitCode::from(1))
        }
    }
}
