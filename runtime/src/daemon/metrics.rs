//! The daemon's metrics, rendered in the Prometheus text format (0.0.4), with kube-proxy's names
//! where kube-proxy has one, so its dashboards and alerts work unchanged.
//!
//! Rendered here rather than with a metrics crate: the set is small and fixed, and kube-proxy
//! compatibility needs things the crates make awkward — a *gauge* named `…_total`
//! (`kubeproxy_sync_proxy_rules_no_local_endpoints_total`), counters whose names already end in
//! `_total` (prometheus-client appends the suffix itself and speaks OpenMetrics, with `# EOF`),
//! kube-proxy's histogram buckets. One struct behind one mutex, updated once per sync.

use std::collections::BTreeMap;
use std::fmt::Write;

/// kube-proxy's buckets (`ExponentialBuckets(0.001, 2, 15)`: 1 ms .. 16.4 s), with 0.25 ms and
/// 0.5 ms in front: svcc's incremental syncs are mostly below kube-proxy's first bucket.
pub const SYNC_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192, 16.384,
];

#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: &'static [f64],
    /// Per bucket, not cumulative (rendering accumulates).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(buckets: &'static [f64]) -> Histogram {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.buckets.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Kinds of sync, for `svcc_syncs_total{type}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncKind {
    /// svcc's tables replaced in one transaction.
    Full,
    /// Only the difference sent.
    Partial,
    /// Nothing to send: the kernel already held the ruleset.
    Unchanged,
}

impl SyncKind {
    pub fn label(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
            SyncKind::Unchanged => "unchanged",
        }
    }
}

/// Phases of the last sync, for `svcc_last_sync_phase_seconds{phase}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Reading changed files (and parsing them: the session parses on `set_file`).
    pub read: f64,
    /// Lowering and building the ruleset (O(all services)).
    pub compile: f64,
    /// The applier's planning and encoding.
    pub plan: f64,
    /// From sendmsg to the kernel's answer.
    pub kernel: f64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub sync_duration: Histogram,
    pub full_sync_duration: Histogram,
    pub partial_sync_duration: Histogram,
    pub last_sync_timestamp: f64,
    pub last_queued_timestamp: f64,
    pub sync_failures: u64,
    pub no_local_internal: u64,
    pub no_local_external: u64,
    pub conntrack_deleted: u64,
    pub conntrack_duration: Histogram,
    pub conntrack_failures: u64,
    pub healthz: BTreeMap<u16, u64>,
    pub livez: BTreeMap<u16, u64>,

    pub syncs: BTreeMap<SyncKind, u64>,
    pub drift_repairs: u64,
    pub invalid_objects: u64,
    pub input_warnings: u64,
    pub input_errors_total: u64,
    pub input_files: u64,
    pub unreadable_files: u64,
    /// API source: objects in the session, failed list/watch requests.
    pub api_objects: u64,
    pub api_errors_total: u64,
    pub service_ports: u64,
    pub nft: svcc_compiler::nft::model::Stats,
    pub last_tx_messages: u64,
    pub last_tx_bytes: u64,
    pub phases: Phases,
    pub hc_listening: u64,
    pub hc_failed: u64,
    /// Userspace mode: the proxy's counters (read live) and its listeners.
    pub userspace: Option<std::sync::Arc<crate::userspace::Counters>>,
    pub userspace_listeners: u64,
    /// Userspace mode: each listener's labels and counters.
    pub userspace_per_listener: Vec<(String, std::sync::Arc<crate::userspace::Counters>)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sync_duration: Histogram::new(SYNC_BUCKETS),
            full_sync_duration: Histogram::new(SYNC_BUCKETS),
            partial_sync_duration: Histogram::new(SYNC_BUCKETS),
            last_sync_timestamp: 0.0,
            last_queued_timestamp: 0.0,
            sync_failures: 0,
            no_local_internal: 0,
            no_local_external: 0,
            conntrack_deleted: 0,
            conntrack_duration: Histogram::new(SYNC_BUCKETS),
            conntrack_failures: 0,
            healthz: BTreeMap::new(),
            livez: BTreeMap::new(),
            syncs: BTreeMap::new(),
            drift_repairs: 0,
            invalid_objects: 0,
            input_warnings: 0,
            input_errors_total: 0,
            input_files: 0,
            unreadable_files: 0,
            api_objects: 0,
            api_errors_total: 0,
            service_ports: 0,
            nft: Default::default(),
            last_tx_messages: 0,
            last_tx_bytes: 0,
            phases: Phases::default(),
            hc_listening: 0,
            hc_failed: 0,
            userspace: None,
            userspace_listeners: 0,
            userspace_per_listener: Vec::new(),
        }
    }
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, ty: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {ty}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        let _ = if labels.is_empty() {
            writeln!(self.0, "{name} {}", num(v))
        } else {
            writeln!(self.0, "{name}{{{labels}}} {}", num(v))
        };
    }
    fn scalar(&mut self, name: &str, ty: &str, help: &str, v: f64) {
        self.head(name, ty, help);
        self.sample(name, "", v);
    }
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, "histogram", help);
        let mut acc = 0;
        for (b, c) in h.buckets.iter().zip(&h.counts) {
            acc += c;
            self.sample(
                &format!("{name}_bucket"),
                &format!("le=\"{}\"", num(*b)),
                acc as f64,
            );
        }
        self.sample(&format!("{name}_bucket"), "le=\"+Inf\"", h.count as f64);
        self.sample(&format!("{name}_sum"), "", h.sum);
        self.sample(&format!("{name}_count"), "", h.count as f64);
    }
}

/// Prometheus number formatting: integers without a fraction, others in full precision.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut o = Out(String::with_capacity(8 << 10));
        o.histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "[ALPHA] SyncProxyRules latency in seconds",
            &self.sync_duration,
        );
        o.histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "[ALPHA] SyncProxyRules latency in seconds for full resyncs",
            &self.full_sync_duration,
        );
        o.histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "[ALPHA] SyncProxyRules latency in seconds for partial resyncs",
            &self.partial_sync_duration,
        );
        o.scalar(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "gauge",
            "[ALPHA] The last time proxy rules were successfully synced",
            self.last_sync_timestamp,
        );
        o.scalar(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "gauge",
            "[ALPHA] The last time a sync of proxy rules was queued",
            self.last_queued_timestamp,
        );
        o.scalar(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "counter",
            "[ALPHA] Total number of nftables sync failures",
            self.sync_failures as f64,
        );
        let n = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
        o.head(
            n,
            "gauge",
            "[ALPHA] Number of services with a Local traffic policy and no endpoints",
        );
        o.sample(
            n,
            "traffic_policy=\"external\"",
            self.no_local_external as f64,
        );
        o.sample(
            n,
            "traffic_policy=\"internal\"",
            self.no_local_internal as f64,
        );
        o.scalar(
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "counter",
            "[ALPHA] Cumulative conntrack flows deleted by conntrack reconciler",
            self.conntrack_deleted as f64,
        );
        o.histogram(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "[ALPHA] ReconcileConntrackFlowsLatency latency in seconds",
            &self.conntrack_duration,
        );
        for (name, map, what) in [
            ("kubeproxy_healthz_total", &self.healthz, "/healthz"),
            ("kubeproxy_livez_total", &self.livez, "/livez"),
        ] {
            o.head(
                name,
                "counter",
                &format!("[ALPHA] Cumulative proxy {what} HTTP status"),
            );
            for (code, v) in map {
                o.sample(name, &format!("code=\"{code}\""), *v as f64);
            }
        }

        o.head(
            "svcc_syncs_total",
            "counter",
            "Syncs by outcome: full (tables replaced), partial (difference sent), unchanged (nothing to send)",
        );
        for k in [SyncKind::Full, SyncKind::Partial, SyncKind::Unchanged] {
            let v = self.syncs.get(&k).copied().unwrap_or(0);
            o.sample(
                "svcc_syncs_total",
                &format!("type=\"{}\"", k.label()),
                v as f64,
            );
        }
        o.scalar(
            "svcc_drift_repairs_total",
            "counter",
            "Syncs that found svcc's tables changed by another program and replaced them",
            self.drift_repairs as f64,
        );
        o.scalar(
            "svcc_invalid_objects",
            "gauge",
            "Objects (or documents) of the current input left out because they are invalid",
            self.invalid_objects as f64,
        );
        o.scalar(
            "svcc_input_warnings",
            "gauge",
            "Warnings about the current input",
            self.input_warnings as f64,
        );
        o.scalar(
            "svcc_input_errors_total",
            "counter",
            "Input errors reported (each distinct error is counted when it first appears)",
            self.input_errors_total as f64,
        );
        o.scalar(
            "svcc_input_files",
            "gauge",
            "Manifest files read from the watched paths",
            self.input_files as f64,
        );
        o.scalar(
            "svcc_input_unreadable_files",
            "gauge",
            "Watched files that cannot be read (permissions, not UTF-8)",
            self.unreadable_files as f64,
        );
        o.scalar(
            "svcc_api_objects",
            "gauge",
            "Objects from the Kubernetes API in the compile session (API source)",
            self.api_objects as f64,
        );
        o.scalar(
            "svcc_api_errors_total",
            "counter",
            "Failed list, watch or discovery requests to the Kubernetes API (each retried with backoff)",
            self.api_errors_total as f64,
        );
        o.scalar(
            "svcc_service_ports",
            "gauge",
            "Service ports (per IP family) in the ruleset",
            self.service_ports as f64,
        );
        for (name, v, help) in [
            ("svcc_nftables_tables", self.nft.tables, "Tables"),
            ("svcc_nftables_sets", self.nft.sets, "Sets and maps"),
            (
                "svcc_nftables_elements",
                self.nft.elements,
                "Set and map elements",
            ),
            ("svcc_nftables_chains", self.nft.chains, "Chains"),
            ("svcc_nftables_rules", self.nft.rules, "Rules"),
        ] {
            o.scalar(
                name,
                "gauge",
                &format!("{help} in svcc's ruleset, as last applied"),
                v as f64,
            );
        }
        o.scalar(
            "svcc_last_transaction_messages",
            "gauge",
            "nf_tables messages in the last transaction sent to the kernel",
            self.last_tx_messages as f64,
        );
        o.scalar(
            "svcc_last_transaction_bytes",
            "gauge",
            "Bytes of the last transaction sent to the kernel",
            self.last_tx_bytes as f64,
        );
        let p = "svcc_last_sync_phase_seconds";
        o.head(p, "gauge", "Time spent in each phase of the last sync");
        for (ph, v) in [
            ("read", self.phases.read),
            ("compile", self.phases.compile),
            ("plan", self.phases.plan),
            ("kernel", self.phases.kernel),
        ] {
            o.sample(p, &format!("phase=\"{ph}\""), v);
        }
        o.scalar(
            "svcc_conntrack_cleanup_failures_total",
            "counter",
            "Stale-conntrack checks that failed (retried at the next sync)",
            self.conntrack_failures as f64,
        );
        let h = "svcc_health_check_node_ports";
        o.head(
            h,
            "gauge",
            "healthCheckNodePort responders: listening, or failed to bind (retried)",
        );
        o.sample(h, "state=\"listening\"", self.hc_listening as f64);
        o.sample(h, "state=\"failed\"", self.hc_failed as f64);
        if let Some(c) = &self.userspace {
            use std::sync::atomic::Ordering::Relaxed;
            o.scalar(
                "svcc_userspace_listeners",
                "gauge",
                "Userspace mode: proxy listeners bound (one per service port and role)",
                self.userspace_listeners as f64,
            );
            for (name, ty, help, v) in [
                ("svcc_userspace_connections_accepted_total", "counter", "Userspace mode: TCP connections accepted", &c.accepted),
                ("svcc_userspace_connections_active", "gauge", "Userspace mode: TCP connections being proxied", &c.active),
                ("svcc_userspace_connect_failures_total", "counter", "Userspace mode: failed connects to endpoints (each is retried on the next endpoint, up to 4 attempts)", &c.failed_connects),
                ("svcc_userspace_connect_retries_total", "counter", "Userspace mode: connects after a failed one", &c.retries),
                ("svcc_userspace_bytes_total", "counter", "Userspace mode: bytes copied, both directions, TCP and UDP", &c.bytes),
                ("svcc_userspace_udp_sessions_total", "counter", "Userspace mode: UDP client sessions started", &c.udp_sessions),
            ] {
                o.scalar(name, ty, help, v.load(Relaxed) as f64);
            }
            type Pick = fn(&crate::userspace::Counters) -> &std::sync::atomic::AtomicU64;
            let per: [(&str, &str, &str, Pick); 4] = [
                (
                    "svcc_userspace_service_port_connections_accepted_total",
                    "counter",
                    "Userspace mode: TCP connections accepted, per listener",
                    |c| &c.accepted,
                ),
                (
                    "svcc_userspace_service_port_connections_active",
                    "gauge",
                    "Userspace mode: TCP connections being proxied, per listener",
                    |c| &c.active,
                ),
                (
                    "svcc_userspace_service_port_connect_failures_total",
                    "counter",
                    "Userspace mode: failed connects to endpoints, per listener",
                    |c| &c.failed_connects,
                ),
                (
                    "svcc_userspace_service_port_bytes_total",
                    "counter",
                    "Userspace mode: bytes copied, per listener",
                    |c| &c.bytes,
                ),
            ];
            for (name, ty, help, pick) in per {
                o.head(name, ty, help);
                for (labels, c) in &self.userspace_per_listener {
                    o.sample(name, labels, pick(c).load(Relaxed) as f64);
                }
            }
        }
        o.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut m = Metrics::default();
        m.sync_duration.observe(0.0003);
        m.sync_duration.observe(0.003);
        m.sync_duration.observe(100.0);
        let t = m.render();
        assert!(
            t.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.00025\"} 0\n")
        );
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 2\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\"} 2\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 3\n"));
        assert!(t.contains(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"} 0\n"
        ));
        // Every sample line belongs to a family declared by a TYPE line.
        let mut declared = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(r) = l.strip_prefix("# TYPE ") {
                declared.insert(r.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(*b)))
                    .unwrap_or(name);
                assert!(declared.contains(base), "undeclared sample {l}");
            }
        }
    }
}
