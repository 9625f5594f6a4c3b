//! Node settings: a `KubeProxyConfiguration` file (kubeproxy.config.k8s.io/v1alpha1) and/or
//! kube-proxy's flags, merged into one [`NodeSettings`] (flags override the file).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::diag::{Diagnostic, Origin, PathSeg, Severity};

/// Which writer the IR goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Nftables,
    Iptables,
}

/// `nodePortAddresses`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// Not set: kube-proxy's nftables mode then uses the node's primary IPs (`primary`);
    /// without a known node IP, every local non-loopback address.
    #[default]
    Unset,
    /// `primary`: the node's primary IP per family (the first `--node-ip` of each family).
    Primary,
    /// Node IPs inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// Everything about the node that changes the generated rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// Node name: endpoints with this `nodeName` are local.
    pub hostname: String,
    pub node_ips: Vec<IpAddr>,
    /// Pod CIDRs for the ClusterCIDR local-traffic detector; empty = no detector.
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub nodeport_addresses: NodePortAddresses,
    /// Service CIDRs (also taken from ServiceCIDR objects).
    pub service_cidrs: Vec<IpNet>,
    pub backend: Backend,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            hostname: String::new(),
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            nodeport_addresses: NodePortAddresses::Unset,
            service_cidrs: Vec::new(),
            backend: Backend::Nftables,
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }
}

impl NodeSettings {
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}

/// The fields of KubeProxyConfiguration that change svcc's output. Other fields are accepted
/// and ignored (a real config file has many: clientConnection, conntrack, …).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeProxyConfiguration {
    api_version: Option<String>,
    kind: Option<String>,
    hostname_override: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    detect_local_mode: Option<String>,
    detect_local: Option<DetectLocal>,
    mode: Option<String>,
    node_port_addresses: Option<Vec<String>>,
    nftables: Option<ModeConfig>,
    iptables: Option<ModeConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetectLocal {
    #[serde(rename = "clusterCIDRs", default)]
    cluster_cidrs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModeConfig {
    masquerade_all: Option<bool>,
    masquerade_bit: Option<i64>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

/// Settings read from a config file; `None` = not set there.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileSettings {
    pub hostname: Option<String>,
    pub cluster_cidrs: Option<Vec<IpNet>>,
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<u8>,
    pub nodeport_addresses: Option<NodePortAddresses>,
    pub backend: Option<Backend>,
    pub min_sync_period: Option<Duration>,
    pub sync_period: Option<Duration>,
}

/// Parses a KubeProxyConfiguration file.
pub fn parse_kube_proxy_config(file: &str, text: &str) -> Result<FileSettings, Vec<Diagnostic>> {
    let origin = Origin {
        file: file.into(),
        doc: 0,
        base: Vec::new(),
    };
    let err = |field: &[&str], msg: String| {
        let path: Vec<PathSeg> = field.iter().map(|s| PathSeg::Key(s.to_string())).collect();
        Diagnostic::at_field(
            Severity::Error,
            &origin,
            Some("KubeProxyConfiguration".into()),
            &path,
            msg,
        )
    };
    let cfg: KubeProxyConfiguration = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .map_err(|e| (e.location(), e.to_string()))
        .and_then(|v| {
            serde_path_to_error::deserialize(v)
                .map_err(|e| (None, format!("{}: {}", e.path(), e.inner())))
        }) {
        Ok(c) => c,
        Err((loc, msg)) => {
            let mut d =
                Diagnostic::error(file, format!("cannot read KubeProxyConfiguration: {msg}"));
            if let Some(l) = loc {
                d.line = Some(l.line());
                d.column = Some(l.column());
            }
            return Err(vec![d]);
        }
    };
    let mut errs = Vec::new();
    if cfg.kind.as_deref() != Some("KubeProxyConfiguration") {
        errs.push(err(
            &["kind"],
            format!(
                "expected kind KubeProxyConfiguration, found {:?}",
                cfg.kind.unwrap_or_default()
            ),
        ));
    }
    if let Some(a) = &cfg.api_version {
        if a != "kubeproxy.config.k8s.io/v1alpha1" {
            errs.push(err(
                &["apiVersion"],
                format!("unsupported apiVersion {a:?} (want kubeproxy.config.k8s.io/v1alpha1)"),
            ));
        }
    }
    let mut out = FileSettings {
        hostname: cfg.hostname_override.filter(|h| !h.is_empty()),
        ..Default::default()
    };
    match cfg.detect_local_mode.as_deref() {
        None | Some("") | Some("ClusterCIDR") => {}
        Some(other) => errs.push(err(
            &["detectLocalMode"],
            format!("detectLocalMode {other:?} is unsupported by svcc (only ClusterCIDR)"),
        )),
    }
    let mut cidrs: Vec<String> = Vec::new();
    if let Some(c) = &cfg.cluster_cidr {
        cidrs.extend(
            c.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    if let Some(d) = &cfg.detect_local {
        cidrs.extend(d.cluster_cidrs.iter().cloned());
    }
    if !cidrs.is_empty() {
        match parse_cidrs(&cidrs) {
            Ok(v) => out.cluster_cidrs = Some(v),
            Err(m) => errs.push(err(&["clusterCIDR"], m)),
        }
    }
    out.backend = match cfg.mode.as_deref() {
        None | Some("") => None,
        Some("nftables") => Some(Backend::Nftables),
        Some("iptables") => Some(Backend::Iptables),
        Some(m) => {
            errs.push(err(
                &["mode"],
                format!("mode {m:?} is unsupported by svcc (nftables or iptables)"),
            ));
            None
        }
    };
    let mode_cfg = match out.backend {
        Some(Backend::Iptables) => cfg.iptables.as_ref().or(cfg.nftables.as_ref()),
        _ => cfg.nftables.as_ref().or(cfg.iptables.as_ref()),
    };
    let mode_key = if matches!(out.backend, Some(Backend::Iptables)) {
        "iptables"
    } else {
        "nftables"
    };
    if let Some(m) = mode_cfg {
        out.masquerade_all = m.masquerade_all;
        if let Some(b) = m.masquerade_bit {
            if (0..=31).contains(&b) {
                out.masquerade_bit = Some(b as u8);
            } else {
                errs.push(err(
                    &[mode_key, "masqueradeBit"],
                    format!("masqueradeBit {b} out of range 0-31"),
                ));
            }
        }
        for (val, key, slot) in [
            (&m.sync_period, "syncPeriod", &mut out.sync_period),
            (
                &m.min_sync_period,
                "minSyncPeriod",
                &mut out.min_sync_period,
            ),
        ] {
            if let Some(s) = val {
                match parse_duration(s) {
                    Ok(d) => *slot = Some(d),
                    Err(e) => errs.push(err(&[mode_key, key], e)),
                }
            }
        }
    }
    if let Some(npa) = &cfg.node_port_addresses {
        match parse_nodeport_addresses(npa) {
            Ok(v) => out.nodeport_addresses = Some(v),
            Err(m) => errs.push(err(&["nodePortAddresses"], m)),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// Comma/list CIDRs (`10.0.0.0/8`, `fd00::/48`); a bare address is a host prefix.
pub fn parse_cidrs<S: AsRef<str>>(items: &[S]) -> Result<Vec<IpNet>, String> {
    let mut v = Vec::new();
    for s in items.iter().flat_map(|s| s.as_ref().split(',')) {
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        v.push(parse_cidr(s)?);
    }
    Ok(v)
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid CIDR {s:?}"))
}

pub fn parse_nodeport_addresses<S: AsRef<str>>(items: &[S]) -> Result<NodePortAddresses, String> {
    let flat: Vec<&str> = items
        .iter()
        .flat_map(|s| s.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if flat.is_empty() {
        return Ok(NodePortAddresses::Unset);
    }
    if flat == ["primary"] {
        return Ok(NodePortAddresses::Primary);
    }
    if flat.contains(&"primary") {
        return Err("`primary` cannot be combined with CIDRs".into());
    }
    parse_cidrs(&flat).map(NodePortAddresses::Cidrs)
}

/// Go duration strings as kube-proxy writes them: `1s`, `500ms`, `1m30s`, `0s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (e.g. 1s, 500ms, 1m30s)");
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += num * mult;
        rest = &rest[u..];
    }
    // Too long for a Duration (found by fuzz/): an error, not a panic.
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 apples").is_err());
        // Found by fuzz/ (target `config`): from_secs_f64 panicked on these.
        assert!(parse_duration("1777777777777777777777777777771.5h").is_err());
        assert!(parse_duration(&format!("{}s", "9".repeat(400))).is_err());
    }

    #[test]
    fn config_file() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\nhostnameOverride: node-a\nnftables:\n  masqueradeAll: true\n  masqueradeBit: 15\n  minSyncPeriod: 2s\nnodePortAddresses: [primary]\nclientConnection:\n  kubeconfig: /x\n";
        let f = parse_kube_proxy_config("kp.yaml", text).unwrap();
        assert_eq!(f.hostname.as_deref(), Some("node-a"));
        assert_eq!(f.cluster_cidrs.as_ref().unwrap().len(), 2);
        assert_eq!(f.masquerade_all, Some(true));
        assert_eq!(f.masquerade_bit, Some(15));
        assert_eq!(f.nodeport_addresses, Some(NodePortAddresses::Primary));
        assert_eq!(f.min_sync_period, Some(Duration::from_secs(2)));
    }

    #[test]
    fn unsupported_detect_local_mode() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\ndetectLocalMode: NodeCIDR\n";
        let e = parse_kube_proxy_config("kp.yaml", text).unwrap_err();
        assert!(e[0].message.contains("NodeCIDR"), "{e:?}");
    }
}
