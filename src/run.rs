//! `svcc run`: flags → [`svcc_runtime::daemon::Config`], logging set-up, exit codes. The daemon
//! itself lives in `runtime/src/daemon/` (it talks to the kernel); see docs/RUN.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use svcc_compiler::config::parse_duration;
use svcc_compiler::Backend;
use svcc_runtime::daemon;

use crate::cli::NodeFlags;

/// Exit code for bad flags or config (as the other subcommands).
const EXIT_INPUT: u8 = 2;

pub const RUN_EXAMPLES: &str = "\
Examples:
  svcc run --kubeconfig /var/lib/svcc/kubeconfig --config kp.yaml   # fed by the Kubernetes API
  svcc run                 # in a pod: the service account (or KUBECONFIG, ~/.kube/config)
  svcc run --watch /etc/svcc/manifests --config kp.yaml --node-ip 192.168.0.2
  svcc run --watch cluster/ --watch extra.yaml --hostname-override node-a \\
      --node-ip 192.168.0.2 --cluster-cidr 10.244.0.0/16 --min-sync-period 0s --sync-period 10s

Runs until SIGTERM or SIGINT, then exits 0 and leaves svcc's rules in place.
Exit status: 2 bad flags or config; 1 cannot start (a path that does not exist, an address in
use, no netlink).";

#[derive(Args, Debug)]
pub struct RunCmd {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Files or directories (`*.yaml`, `*.yml`, `*.json`, recursively) to read and watch,
    /// instead of the Kubernetes API.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub watch: Vec<PathBuf>,
    /// Without --watch, the Kubernetes API is the source: this kubeconfig (default: the
    /// config file's `clientConnection.kubeconfig`, else KUBECONFIG, else the in-cluster
    /// service account, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL (kube-proxy's flag): overrides the kubeconfig's server.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// At most one sync per this period; changes meanwhile are batched (default 1s, or
    /// `nftables.minSyncPeriod` of --config). `0s` syncs at once.
    #[arg(long, value_name = "DURATION")]
    pub min_sync_period: Option<String>,
    /// Every this period: re-check every watched file, verify the kernel still holds svcc's
    /// ruleset and repair it if not (default 30s, or `nftables.syncPeriod` of --config).
    #[arg(long, value_name = "DURATION")]
    pub sync_period: Option<String>,
    /// Prometheus metrics at http://ADDR/metrics; empty to disable.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
    /// /healthz and /livez, as kube-proxy's; empty to disable.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// Log verbosity like kube-proxy's --v: 0-2 info, 3-4 debug, 5+ trace (-v = debug;
    /// the environment variable SVCC_LOG, e.g. `svcc::sync=debug`, overrides both).
    #[arg(long = "v", value_name = "LEVEL")]
    pub log_level: Option<u8>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL target: message key=value ...`
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(c: &RunCmd) {
    use tracing_subscriber::EnvFilter;
    let level = match (c.log_level, c.node.verbose) {
        (Some(l), _) if l >= 5 => "trace",
        (Some(l), _) if l >= 3 => "debug",
        (Some(_), _) => "info",
        (None, true) => "debug",
        (None, false) => "info",
    };
    let filter = std::env::var("SVCC_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match c.log_format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

fn bind_addr(flag: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    v.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("{flag}: {v:?} is not IP:PORT"))
}

pub fn run(c: RunCmd) -> Result<ExitCode> {
    crate::purge_freed_memory_at_once();
    init_logging(&c);
    let bad = |msg: String| {
        eprintln!("error: <flags>: {msg}");
        Ok(ExitCode::from(EXIT_INPUT))
    };
    let mut settings = match c.node.settings() {
        Ok(s) => s,
        Err(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(EXIT_INPUT));
        }
    };
    if settings.backend == Backend::Iptables {
        return bad("svcc run programs nftables only (--backend iptables: use svcc apply)".into());
    }
    for (flag, v, slot) in [
        (
            "--min-sync-period",
            &c.min_sync_period,
            &mut settings.min_sync_period,
        ),
        ("--sync-period", &c.sync_period, &mut settings.sync_period),
    ] {
        if let Some(v) = v {
            match parse_duration(v) {
                Ok(d) => *slot = d,
                Err(e) => return bad(format!("{flag}: {e}")),
            }
        }
    }
    if settings.sync_period.is_zero() {
        return bad("--sync-period must be greater than 0".into());
    }
    let metrics_addr = match bind_addr("--metrics-bind-address", &c.metrics_bind_address) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let healthz_addr = match bind_addr("--healthz-bind-address", &c.healthz_bind_address) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let api = if c.watch.is_empty() {
        // clientConnection.kubeconfig of --config, when the flag is not given.
        let from_file = match (&c.kubeconfig, &c.node.config) {
            (None, Some(p)) => crate::inputs::read_source(p)
                .ok()
                .and_then(|src| {
                    svcc_compiler::config::parse_kube_proxy_config(&src.name, &src.text).ok()
                })
                .and_then(|f| f.kubeconfig)
                .map(PathBuf::from),
            _ => None,
        };
        // kube-proxy's node name: the override (or host name), trimmed and lowercased.
        settings.hostname = settings.hostname.trim().to_lowercase();
        Some(daemon::api::ApiConfig {
            kubeconfig: c.kubeconfig.or(from_file),
            master: c.master.filter(|m| !m.is_empty()),
            node: settings.hostname.clone(),
        })
    } else if c.kubeconfig.is_some() || c.master.is_some() {
        return bad("--watch (files) and --kubeconfig/--master (the Kubernetes API) are two sources: give one".into());
    } else {
        None
    };
    let cfg = daemon::Config {
        api,
        watch: c.watch,
        settings,
        metrics_addr,
        healthz_addr,
    };
    match daemon::run(cfg) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("svcc run: cannot start: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
