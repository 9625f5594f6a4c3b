//! Node settings: a `KubeProxyConfiguration` file (kubeproxy.config.k8s.io/v1alpha1) and/or
//! kube-proxy's flags, merged into one [`NodeSettings`] (flags override the file).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::diag::{Diagnostic, Origin, PathSeg, Severity};
use crate::ipvs::model::{Scheduler, Timeouts};

/// Which writer the IR goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Nftables,
    Iptables,
    /// kube-proxy's removed userspace mode: redirect rules (nftables) to proxy listeners of
    /// `svcc run` (`runtime/src/userspace/`), which pick an endpoint and copy the bytes.
    Userspace,
    /// kube-proxy's IPVS mode: virtual servers in the kernel's IP Virtual Server, VIPs on
    /// svcc's dummy interface, and a small nftables table for the rest (`ipvs/`).
    Ipvs,
}

impl Backend {
    /// The mode's name, as `mode:` of a KubeProxyConfiguration says it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
            Backend::Userspace => "userspace",
            Backend::Ipvs => "ipvs",
        }
    }
}

/// The default `--proxy-port-range` of svcc's userspace mode: Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range`). kube-proxy took any free port (port 0) when the flag was
/// empty; svcc assigns ports deterministically from a range, so a ruleset can be reviewed.
pub const DEFAULT_PROXY_PORT_RANGE: (u16, u16) = (32768, 60999);

/// kube-proxy's default `udpIdleTimeout` (userspace mode).
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_millis(250);

/// `nodePortAddresses`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// Not set: kube-proxy's per-mode default. nftables mode: the node's primary IPs
    /// (`primary`); iptables mode: every local address (svcc: but loopback). Without a known
    /// node IP of a family, every local non-loopback address in both.
    #[default]
    Unset,
    /// `primary`: the node's primary IP per family (the first `--node-ip` of each family).
    Primary,
    /// Node IPs inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// kube-apiserver's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

/// A port range as kube-apiserver's `--service-node-port-range` takes it
/// (`k8s.io/apimachinery/pkg/util/net/port_range.go`: `ParsePortRange`): `LOW-HIGH`,
/// `BASE+SIZE` (the SIZE ports from BASE), or one port.
pub fn parse_port_range(v: &str) -> Result<(u16, u16), String> {
    let v = v.trim();
    let num = |x: &str| -> Result<u16, String> {
        x.trim()
            .parse::<u16>()
            .map_err(|_| format!("invalid port {x:?} in range {v:?} (LOW-HIGH, BASE+SIZE or PORT)"))
    };
    let (lo, hi) = if let Some((a, b)) = v.split_once('-') {
        (num(a)?, num(b)?)
    } else if let Some((a, b)) = v.split_once('+') {
        let base = num(a)?;
        let size = num(b)?;
        if size == 0 {
            return Err(format!("empty range {v:?}"));
        }
        let hi = u32::from(base) + u32::from(size) - 1;
        (
            base,
            u16::try_from(hi).map_err(|_| format!("range {v:?} goes past 65535"))?,
        )
    } else {
        let p = num(v)?;
        (p, p)
    };
    if lo == 0 || lo > hi {
        return Err(format!("invalid range {v:?}: LOW must be in 1..=HIGH"));
    }
    Ok((lo, hi))
}

/// kube-proxy's `--proxy-port-range` (`portRange`): `LOW-HIGH`, `BASE+SIZE` or one port; empty,
/// `0` or `0-0` mean "unspecified" (kube-proxy: any free port; svcc: [`DEFAULT_PROXY_PORT_RANGE`]).
pub fn parse_proxy_port_range(v: &str) -> Result<(u16, u16), String> {
    match v.trim() {
        "" | "0" | "0-0" => Ok(DEFAULT_PROXY_PORT_RANGE),
        other => parse_port_range(other),
    }
}

/// The `ipvs:` section of a KubeProxyConfiguration and kube-proxy's `--ipvs-*` flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvsSettings {
    /// `scheduler` (`--ipvs-scheduler`; empty = rr).
    pub scheduler: Scheduler,
    /// `tcpTimeout`, `tcpFinTimeout`, `udpTimeout` (`--ipvs-tcp-timeout` …), whole seconds;
    /// zero (the default) keeps the system's value, as kube-proxy.
    pub tcp_timeout: Duration,
    pub tcp_fin_timeout: Duration,
    pub udp_timeout: Duration,
    /// `strictARP`: the runtime sets `arp_ignore=1`, `arp_announce=2`.
    pub strict_arp: bool,
    /// `excludeCIDRs`: IPVS services with an address there are never deleted by a sync or
    /// cleanup (kube-proxy's exemption from `cleanLegacyService`; svcc touches only its own
    /// virtual servers anyway, this also protects those).
    pub exclude_cidrs: Vec<IpNet>,
}

impl IpvsSettings {
    /// The global IPVS timeouts to set (`ipvsadm --set`); None keeps the system's value.
    pub fn timeouts(&self) -> Timeouts {
        let secs = |d: Duration| (!d.is_zero()).then_some(d.as_secs() as u32);
        Timeouts {
            tcp: secs(self.tcp_timeout),
            tcp_fin: secs(self.tcp_fin_timeout),
            udp: secs(self.udp_timeout),
        }
    }
}

/// Parses an IPVS scheduler name (`ipvs.scheduler`, `--ipvs-scheduler`).
pub fn parse_scheduler(v: &str) -> Result<Scheduler, String> {
    Scheduler::parse(v.trim()).ok_or_else(|| {
        let names: Vec<&str> = Scheduler::ALL.iter().map(|s| s.name()).collect();
        format!("unknown IPVS scheduler {v:?} (one of {})", names.join(", "))
    })
}

/// Parses an IPVS timeout (`ipvs.tcpTimeout` …, `--ipvs-tcp-timeout` …): a duration of whole
/// seconds as IPVS takes them (kube-proxy drops the fraction; svcc refuses one that would
/// silently become 0 = "keep"), at most u32::MAX seconds.
pub fn parse_ipvs_timeout(v: &str) -> Result<Duration, String> {
    if v.trim_start().starts_with('-') {
        return Err(format!("negative timeout {v:?}"));
    }
    let d = parse_duration(v)?;
    if !d.is_zero() && d.as_secs() == 0 {
        return Err(format!(
            "timeout {v:?} is under 1s (IPVS counts whole seconds; 0 keeps the system's value)"
        ));
    }
    if d.as_secs() > u64::from(u32::MAX) {
        return Err(format!("timeout {v:?} is too long for IPVS (u32 seconds)"));
    }
    Ok(Duration::from_secs(d.as_secs()))
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
    /// The cluster's `--service-node-port-range` (kube-apiserver's flag): nodePorts outside
    /// it are served (as kube-proxy does) with a warning.
    pub service_node_port_range: (u16, u16),
    /// `conntrack.tcpBeLiberal`: kube-proxy then sets `nf_conntrack_tcp_be_liberal` and its
    /// iptables mode does not drop INVALID conntrack packets in KUBE-FORWARD.
    pub conntrack_tcp_be_liberal: bool,
    /// Userspace mode: the listener ports (`--proxy-port-range`, `portRange`).
    pub proxy_port_range: (u16, u16),
    /// Userspace mode: idle time after which a UDP client session ends (`--udp-timeout`,
    /// `udpIdleTimeout`).
    pub udp_idle_timeout: Duration,
    /// IPVS mode's settings.
    pub ipvs: IpvsSettings,
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
            service_node_port_range: DEFAULT_NODE_PORT_RANGE,
            conntrack_tcp_be_liberal: false,
            proxy_port_range: DEFAULT_PROXY_PORT_RANGE,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            ipvs: IpvsSettings::default(),
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
    ipvs: Option<IpvsConfig>,
    conntrack: Option<Conntrack>,
    /// Userspace mode: `portRange` (kube-proxy's `--proxy-port-range`).
    port_range: Option<String>,
    /// Userspace mode: `udpIdleTimeout`.
    udp_idle_timeout: Option<String>,
}

/// `ipvs:` (KubeProxyIPVSConfiguration).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpvsConfig {
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    strict_arp: Option<bool>,
    tcp_timeout: Option<String>,
    tcp_fin_timeout: Option<String>,
    udp_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conntrack {
    tcp_be_liberal: Option<bool>,
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
    /// iptables only.
    localhost_node_ports: Option<bool>,
}

/// Settings read from a config file; `None` = not set there.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileSettings {
    pub hostname: Option<String>,
    pub cluster_cidrs: Option<Vec<IpNet>>,
    pub nodeport_addresses: Option<NodePortAddresses>,
    /// `mode` (None: unset; kube-proxy then runs iptables mode, svcc compiles nftables mode).
    pub backend: Option<Backend>,
    /// The `nftables:` and `iptables:` sections: each mode reads only its own (kube-proxy's
    /// v1alpha1 conversion), see [`FileSettings::section`].
    pub nftables: ModeSettings,
    pub iptables: ModeSettings,
    /// What IPVS mode reads: `ipvs.syncPeriod`/`minSyncPeriod`, and `iptables.masqueradeAll`/
    /// `masqueradeBit` (kube-proxy's IPVS mode takes its mark bit and masqueradeAll there).
    pub ipvs: ModeSettings,
    /// The rest of `ipvs:`; None = not set there.
    pub ipvs_scheduler: Option<Scheduler>,
    pub ipvs_tcp_timeout: Option<Duration>,
    pub ipvs_tcp_fin_timeout: Option<Duration>,
    pub ipvs_udp_timeout: Option<Duration>,
    pub ipvs_strict_arp: Option<bool>,
    pub ipvs_exclude_cidrs: Option<Vec<IpNet>>,
    /// `iptables.localhostNodePorts` (svcc never has localhost NodePorts).
    pub localhost_node_ports: Option<bool>,
    /// `conntrack.tcpBeLiberal`.
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// `portRange` (userspace mode).
    pub proxy_port_range: Option<(u16, u16)>,
    /// `udpIdleTimeout` (userspace mode).
    pub udp_idle_timeout: Option<Duration>,
}

/// One mode's section of a config file; `None` = not set there.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModeSettings {
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<u8>,
    pub min_sync_period: Option<Duration>,
    pub sync_period: Option<Duration>,
}

impl ModeSettings {
    /// The fields set in this section (their v1alpha1 names).
    fn set_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (set, name) in [
            (self.masquerade_all.is_some(), "masqueradeAll"),
            (self.masquerade_bit.is_some(), "masqueradeBit"),
            (self.min_sync_period.is_some(), "minSyncPeriod"),
            (self.sync_period.is_some(), "syncPeriod"),
        ] {
            if set {
                v.push(name);
            }
        }
        v
    }
}

impl FileSettings {
    /// Copies what `ipvs:` sets into `s` (the rest stays as it was).
    pub fn apply_ipvs(&self, s: &mut IpvsSettings) {
        if let Some(x) = self.ipvs_scheduler {
            s.scheduler = x;
        }
        for (v, dst) in [
            (self.ipvs_tcp_timeout, &mut s.tcp_timeout),
            (self.ipvs_tcp_fin_timeout, &mut s.tcp_fin_timeout),
            (self.ipvs_udp_timeout, &mut s.udp_timeout),
        ] {
            if let Some(d) = v {
                *dst = d;
            }
        }
        if let Some(b) = self.ipvs_strict_arp {
            s.strict_arp = b;
        }
        if let Some(c) = &self.ipvs_exclude_cidrs {
            s.exclude_cidrs = c.clone();
        }
    }

    /// The section the given mode reads: `nftables:` in nftables mode, `iptables:` in
    /// iptables mode, like kube-proxy (`Convert_v1alpha1_KubeProxyConfiguration_To_config_…`
    /// for masqueradeAll and the sync periods; `NewProxier` gets `NFTables.MasqueradeBit` or
    /// `IPTables.MasqueradeBit`). The other section is ignored, never used as a fallback.
    pub fn section(&self, mode: Backend) -> &ModeSettings {
        match mode {
            Backend::Nftables => &self.nftables,
            // kube-proxy's userspace mode ran on `iptables.syncPeriod`/`minSyncPeriod`.
            Backend::Iptables | Backend::Userspace => &self.iptables,
            Backend::Ipvs => &self.ipvs,
        }
    }

    /// Warnings about fields the given mode ignores: set in the other mode's section only.
    pub fn ignored_fields(&self, file: &str, mode: Backend) -> Vec<Diagnostic> {
        // (the section read, the other sections with what they set that this mode ignores)
        let is_period = |f: &&str| *f == "syncPeriod" || *f == "minSyncPeriod";
        let (used, others): (&ModeSettings, Vec<(&ModeSettings, &str)>) = match mode {
            Backend::Nftables => (&self.nftables, vec![(&self.iptables, "iptables")]),
            Backend::Iptables | Backend::Userspace => {
                (&self.iptables, vec![(&self.nftables, "nftables")])
            }
            Backend::Ipvs => (
                &self.ipvs,
                vec![(&self.nftables, "nftables"), (&self.iptables, "iptables")],
            ),
        };
        // Where this mode reads a field (IPVS: periods in `ipvs:`, the mark in `iptables:`).
        let used_key = |f: &str| match mode {
            Backend::Nftables => "nftables",
            Backend::Iptables | Backend::Userspace => "iptables",
            Backend::Ipvs if is_period(&f) => "ipvs",
            Backend::Ipvs => "iptables",
        };
        let mode_name = mode.name();
        let origin = Origin {
            file: file.into(),
            doc: 0,
            base: Vec::new(),
        };
        let used_fields = used.set_fields();
        let mut out = Vec::new();
        for (other, other_key) in others {
            for f in other.set_fields() {
                // `iptables:`'s mark fields are what IPVS mode reads.
                let read_there = mode == Backend::Ipvs && other_key == "iptables" && !is_period(&f);
                if used_fields.contains(&f) || read_there {
                    continue;
                }
                out.push(Diagnostic::at_field(
                    Severity::Warning,
                    &origin,
                    Some("KubeProxyConfiguration".into()),
                    &[PathSeg::Key(other_key.into()), PathSeg::Key(f.into())],
                    format!(
                        "ignored: svcc compiles {mode_name} mode, which reads {}.{f} (default used), like kube-proxy",
                        used_key(f)
                    ),
                ));
            }
        }
        out
    }
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
        Some("userspace") => Some(Backend::Userspace),
        Some("ipvs") => Some(Backend::Ipvs),
        Some(m) => {
            errs.push(err(
                &["mode"],
                format!(
                    "mode {m:?} is unsupported by svcc (nftables, iptables, ipvs or userspace)"
                ),
            ));
            None
        }
    };
    // Both sections are read and checked; each mode uses only its own (`section`).
    for (key, section, slot) in [
        ("nftables", &cfg.nftables, &mut out.nftables),
        ("iptables", &cfg.iptables, &mut out.iptables),
    ] {
        let Some(m) = section else { continue };
        slot.masquerade_all = m.masquerade_all;
        if let Some(b) = m.masquerade_bit {
            if (0..=31).contains(&b) {
                slot.masquerade_bit = Some(b as u8);
            } else {
                errs.push(err(
                    &[key, "masqueradeBit"],
                    format!("masqueradeBit {b} out of range 0-31"),
                ));
            }
        }
        for (val, field, dst) in [
            (&m.sync_period, "syncPeriod", &mut slot.sync_period),
            (
                &m.min_sync_period,
                "minSyncPeriod",
                &mut slot.min_sync_period,
            ),
        ] {
            if let Some(s) = val {
                match parse_duration(s) {
                    Ok(d) => *dst = Some(d),
                    Err(e) => errs.push(err(&[key, field], e)),
                }
            }
        }
    }
    // IPVS mode: the mark bit and masqueradeAll come from `iptables:`, the periods from `ipvs:`.
    out.ipvs.masquerade_all = out.iptables.masquerade_all;
    out.ipvs.masquerade_bit = out.iptables.masquerade_bit;
    if let Some(v) = &cfg.ipvs {
        for (val, field, dst) in [
            (&v.sync_period, "syncPeriod", &mut out.ipvs.sync_period),
            (
                &v.min_sync_period,
                "minSyncPeriod",
                &mut out.ipvs.min_sync_period,
            ),
        ] {
            if let Some(s) = val {
                match parse_duration(s) {
                    Ok(d) => *dst = Some(d),
                    Err(e) => errs.push(err(&["ipvs", field], e)),
                }
            }
        }
        if let Some(s) = &v.scheduler {
            match parse_scheduler(s) {
                Ok(x) => out.ipvs_scheduler = Some(x),
                Err(e) => errs.push(err(&["ipvs", "scheduler"], e)),
            }
        }
        for (val, field, dst) in [
            (&v.tcp_timeout, "tcpTimeout", &mut out.ipvs_tcp_timeout),
            (
                &v.tcp_fin_timeout,
                "tcpFinTimeout",
                &mut out.ipvs_tcp_fin_timeout,
            ),
            (&v.udp_timeout, "udpTimeout", &mut out.ipvs_udp_timeout),
        ] {
            if let Some(s) = val {
                match parse_ipvs_timeout(s) {
                    Ok(d) => *dst = Some(d),
                    Err(e) => errs.push(err(&["ipvs", field], e)),
                }
            }
        }
        out.ipvs_strict_arp = v.strict_arp;
        if let Some(c) = &v.exclude_cidrs {
            match parse_cidrs(c) {
                Ok(c) => out.ipvs_exclude_cidrs = Some(c),
                Err(e) => errs.push(err(&["ipvs", "excludeCIDRs"], e)),
            }
        }
    }
    out.localhost_node_ports = cfg.iptables.as_ref().and_then(|m| m.localhost_node_ports);
    out.conntrack_tcp_be_liberal = cfg.conntrack.as_ref().and_then(|c| c.tcp_be_liberal);
    if let Some(r) = &cfg.port_range {
        match parse_proxy_port_range(r) {
            Ok(v) => out.proxy_port_range = Some(v),
            Err(m) => errs.push(err(&["portRange"], m)),
        }
    }
    if let Some(d) = &cfg.udp_idle_timeout {
        match parse_duration(d) {
            Ok(v) => out.udp_idle_timeout = Some(v),
            Err(m) => errs.push(err(&["udpIdleTimeout"], m)),
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
        let m = f.section(Backend::Nftables);
        assert_eq!(m.masquerade_all, Some(true));
        assert_eq!(m.masquerade_bit, Some(15));
        assert_eq!(f.nodeport_addresses, Some(NodePortAddresses::Primary));
        assert_eq!(m.min_sync_period, Some(Duration::from_secs(2)));
        assert_eq!(f.section(Backend::Iptables), &ModeSettings::default());
    }

    /// Each mode reads its own section, never the other's (kube-proxy's v1alpha1 conversion);
    /// what the other section sets alone is reported as ignored.
    #[test]
    fn each_mode_reads_its_own_section() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\niptables:\n  masqueradeAll: true\n  masqueradeBit: 3\n  syncPeriod: 10s\n  localhostNodePorts: false\nnftables:\n  syncPeriod: 20s\nconntrack:\n  tcpBeLiberal: true\n";
        let f = parse_kube_proxy_config("kp.yaml", text).unwrap();
        assert_eq!(f.backend, Some(Backend::Nftables));
        let n = f.section(Backend::Nftables);
        assert_eq!(n.masquerade_all, None);
        assert_eq!(n.masquerade_bit, None);
        assert_eq!(n.sync_period, Some(Duration::from_secs(20)));
        let i = f.section(Backend::Iptables);
        assert_eq!(i.masquerade_all, Some(true));
        assert_eq!(i.masquerade_bit, Some(3));
        assert_eq!(f.localhost_node_ports, Some(false));
        assert_eq!(f.conntrack_tcp_be_liberal, Some(true));
        let w: Vec<String> = f
            .ignored_fields("kp.yaml", Backend::Nftables)
            .iter()
            .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or(""), d.message))
            .collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("iptables.masqueradeAll: ignored"), "{w:?}");
        assert!(w[1].starts_with("iptables.masqueradeBit: ignored"), "{w:?}");
        assert!(f.ignored_fields("kp.yaml", Backend::Iptables).is_empty());
    }

    /// `mode: userspace` reads `iptables:` (kube-proxy's userspace proxier ran on
    /// `iptables.syncPeriod`), `portRange` and `udpIdleTimeout`; empty ranges mean the default.
    #[test]
    fn userspace_mode_settings() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: userspace\nportRange: 40000+100\nudpIdleTimeout: 1s\niptables:\n  syncPeriod: 10s\n";
        let f = parse_kube_proxy_config("kp.yaml", text).unwrap();
        assert_eq!(f.backend, Some(Backend::Userspace));
        assert_eq!(f.proxy_port_range, Some((40000, 40099)));
        assert_eq!(f.udp_idle_timeout, Some(Duration::from_secs(1)));
        assert_eq!(
            f.section(Backend::Userspace).sync_period,
            Some(Duration::from_secs(10))
        );
        for unset in ["", "0", "0-0"] {
            assert_eq!(parse_proxy_port_range(unset), Ok(DEFAULT_PROXY_PORT_RANGE));
        }
        assert!(parse_proxy_port_range("70000").is_err());
        let d = NodeSettings::default();
        assert_eq!(d.udp_idle_timeout, Duration::from_millis(250));
    }

    /// kube-proxy's per-mode defaults (v1alpha1 `SetDefaults_KubeProxyConfiguration`): both
    /// modes default to masqueradeBit 14, syncPeriod 30s, minSyncPeriod 1s; svcc's default
    /// mode is nftables (kube-proxy's is iptables).
    #[test]
    fn defaults_of_both_modes() {
        let d = NodeSettings::default();
        assert_eq!(d.backend, Backend::Nftables);
        assert_eq!(d.masquerade_bit, 14);
        assert_eq!(d.masquerade_mark(), 0x4000);
        assert_eq!(d.sync_period, Duration::from_secs(30));
        assert_eq!(d.min_sync_period, Duration::from_secs(1));
        assert_eq!(d.nodeport_addresses, NodePortAddresses::Unset);
        assert!(!d.conntrack_tcp_be_liberal);
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
        let f = parse_kube_proxy_config("kp.yaml", text).unwrap();
        assert_eq!(f.backend, None);
        assert_eq!(f.section(Backend::Nftables), &ModeSettings::default());
        assert_eq!(f.section(Backend::Iptables), &ModeSettings::default());
    }

    /// `mode: ipvs` reads `ipvs:` (scheduler, timeouts, strictARP, excludeCIDRs, periods) and
    /// the mark bit and masqueradeAll of `iptables:`, as kube-proxy.
    #[test]
    fn ipvs_mode_settings() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\niptables:\n  masqueradeAll: true\n  masqueradeBit: 12\nipvs:\n  scheduler: mh\n  syncPeriod: 10s\n  minSyncPeriod: 0s\n  tcpTimeout: 900s\n  tcpFinTimeout: 2m\n  udpTimeout: 0s\n  strictARP: true\n  excludeCIDRs: [10.99.0.0/16]\n";
        let f = parse_kube_proxy_config("kp.yaml", text).unwrap();
        assert_eq!(f.backend, Some(Backend::Ipvs));
        let m = f.section(Backend::Ipvs);
        assert_eq!(m.masquerade_all, Some(true));
        assert_eq!(m.masquerade_bit, Some(12));
        assert_eq!(m.sync_period, Some(Duration::from_secs(10)));
        assert_eq!(m.min_sync_period, Some(Duration::ZERO));
        let mut s = IpvsSettings::default();
        assert_eq!(s.scheduler, Scheduler::Rr);
        f.apply_ipvs(&mut s);
        assert_eq!(s.scheduler, Scheduler::Mh);
        assert!(s.strict_arp);
        assert_eq!(
            s.exclude_cidrs,
            vec!["10.99.0.0/16".parse::<IpNet>().unwrap()]
        );
        let t = s.timeouts();
        assert_eq!((t.tcp, t.tcp_fin, t.udp), (Some(900), Some(120), None));
        assert!(f.ignored_fields("kp.yaml", Backend::Ipvs).is_empty());
        // What IPVS mode ignores: the nftables section, iptables' periods.
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\niptables:\n  masqueradeBit: 12\n  syncPeriod: 5s\nnftables:\n  masqueradeAll: true\n";
        let f = parse_kube_proxy_config("kp.yaml", text).unwrap();
        let w: Vec<String> = f
            .ignored_fields("kp.yaml", Backend::Ipvs)
            .iter()
            .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or(""), d.message))
            .collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("nftables.masqueradeAll: ignored")
                && w[0].contains("reads iptables.masqueradeAll"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("iptables.syncPeriod: ignored")
                && w[1].contains("reads ipvs.syncPeriod"),
            "{w:?}"
        );
        assert_eq!(f.section(Backend::Ipvs).masquerade_bit, Some(12));
        assert_eq!(f.section(Backend::Ipvs).sync_period, None);
    }

    /// Bad IPVS settings: errors naming the field.
    #[test]
    fn ipvs_bad_settings() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\nipvs:\n  scheduler: fastest\n  tcpTimeout: -5s\n  udpTimeout: 500ms\n  tcpFinTimeout: soon\n  excludeCIDRs: [nope]\n";
        let e = parse_kube_proxy_config("kp.yaml", text).unwrap_err();
        let got: Vec<String> = e
            .iter()
            .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or(""), d.message))
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        for (field, what) in [
            ("ipvs.scheduler", "unknown IPVS scheduler \"fastest\""),
            ("ipvs.tcpTimeout", "negative"),
            ("ipvs.udpTimeout", "under 1s"),
            ("ipvs.tcpFinTimeout", "invalid duration"),
            ("ipvs.excludeCIDRs", "invalid CIDR"),
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(field) && g.contains(what)),
                "{field}: {what} not in {got:?}"
            );
        }
        assert_eq!(parse_scheduler(""), Ok(Scheduler::Rr));
        for s in Scheduler::ALL {
            assert_eq!(parse_scheduler(s.name()), Ok(s));
        }
        assert_eq!(parse_ipvs_timeout("1500ms"), Ok(Duration::from_secs(1)));
        assert!(parse_ipvs_timeout("200000000000s").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("30000-32767"), Ok((30000, 32767)));
        assert_eq!(parse_port_range("30000+768"), Ok((30000, 30767)));
        assert_eq!(parse_port_range(" 8080 "), Ok((8080, 8080)));
        for bad in ["", "0-10", "10-5", "a-b", "65535+2", "1+0", "1-2-3"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unsupported_detect_local_mode() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\ndetectLocalMode: NodeCIDR\n";
        let e = parse_kube_proxy_config("kp.yaml", text).unwrap_err();
        assert!(e[0].message.contains("NodeCIDR"), "{e:?}");
    }
}
