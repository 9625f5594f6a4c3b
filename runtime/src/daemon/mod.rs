//! `svcc run`: the long-running applier. Keeps the kernel in step with the manifests under the
//! watched paths, for weeks, whatever goes wrong around it. See docs/RUN.md.
//!
//! One thread owns everything that changes state (the compile [`Session`], the [`Applier`]) and
//! runs the loop below; the other threads only feed it events (inotify via `notify`,
//! SIGTERM/SIGINT) or act on what it publishes (the HTTP thread: metrics, health,
//! healthCheckNodePorts; the conntrack reconciler: the IR of each successful sync).
//!
//! A **sync** = re-read the files that changed → compile (if anything changed) → apply (the
//! applier sends only the difference when the kernel provably still holds what it applied, else
//! replaces svcc's tables in one transaction) → healthCheckNodePort answers → metrics, health,
//! one log line → the stale UDP conntrack reconciler (its own thread, see [`conntrack`]). Syncs
//! happen:
//! - when files changed, at most once per minSyncPeriod (changes arriving meanwhile are batched);
//! - every syncPeriod, as a **verification**: every watched path is checked again, and the applier
//!   is asked for the same ruleset. Its event monitor and table markers tell whether anyone
//!   touched svcc's tables since its last commit: if not, nothing is sent or listed (a few
//!   netlink round trips); if so, it replaces the tables (drift repaired). Every other sync checks
//!   the same way, so drift is repaired within syncPeriod at worst;
//! - after a failed sync, again after max(minSyncPeriod, 1 s), as a full replace. (A refused
//!   incremental transaction is redone at once as a full replace, within the same sync.)
//!
//! Bad input never stops the loop: invalid objects and unreadable files are logged once (file,
//! line, object, field), counted, and left out; everything else is applied.

pub mod api;
pub mod conntrack;
pub mod ctnl;
pub mod health;
pub mod http;
pub mod inputs;
pub mod metrics;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use svcc_compiler::ir::Ir;
use svcc_compiler::nft::model::Stats;
use svcc_compiler::session::Session;
use svcc_compiler::{Diagnostic, NodeSettings, Output};

use crate::{Applier, ApplyOptions, ApplyReport};
use http::{HcService, HttpServer, Shared};
use inputs::Inputs;
use metrics::{Metrics, Phases, SyncKind};

/// What `svcc run` was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Files and directories of manifests (the source when `api` is None).
    pub watch: Vec<PathBuf>,
    /// The Kubernetes API as the source instead of files.
    pub api: Option<api::ApiConfig>,
    /// Node settings; `min_sync_period` and `sync_period` pace the loop.
    pub settings: NodeSettings,
    /// `/metrics` (None: off).
    pub metrics_addr: Option<SocketAddr>,
    /// `/healthz`, `/livez` (None: off).
    pub healthz_addr: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Start(String),
}

enum Ev {
    Fs(notify::Result<notify::Event>),
    Api(api::ApiEvent),
    Signal(Signal),
}

/// Runs until SIGTERM or SIGINT; returns Ok then, leaving svcc's rules in place. Errors only
/// at start (addresses that cannot be bound, paths that do not exist, no netlink).
///
/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread it starts): call it
/// before starting other threads that should not receive them.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    let start = |e: String| DaemonError::Start(e);
    let (tx, rx) = mpsc::channel::<Ev>();

    // Signals: blocked everywhere, taken by one thread with sigwait.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block()
        .map_err(|e| start(format!("blocking signals: {e}")))?;
    let sig_tx = tx.clone();
    std::thread::Builder::new()
        .name("svcc-signals".into())
        .spawn(move || {
            let mut seen = false;
            while let Ok(sig) = sigs.wait() {
                if seen {
                    // A second signal while shutting down: go now.
                    std::process::exit(128 + sig as i32);
                }
                seen = true;
                let _ = sig_tx.send(Ev::Signal(sig));
            }
        })
        .map_err(|e| start(format!("starting the signal thread: {e}")))?;

    let s = &cfg.settings;
    let shared = Arc::new(Shared {
        metrics: Mutex::new(Metrics::default()),
        health: Mutex::new(health::ProxyHealth::new(s.sync_period)),
    });
    let http = HttpServer::start(shared.clone(), cfg.metrics_addr, cfg.healthz_addr)
        .map_err(|e| start(format!("cannot listen: {e}")))?;
    let applier =
        Applier::new().map_err(|e| start(format!("cannot open the netlink socket: {e}")))?;
    let ct = conntrack::Reconciler::start(shared.clone())
        .map_err(|e| start(format!("starting the conntrack thread: {e}")))?;
    // Userspace mode: the proxy's runtime and listeners (created after the signals are blocked,
    // so its threads do not take them).
    let proxy = match s.backend {
        svcc_compiler::Backend::Userspace => Some(
            crate::userspace::Proxy::new(s.proxy_port_range, s.udp_idle_timeout)
                .map_err(|e| start(format!("starting the userspace proxy: {e}")))?,
        ),
        _ => None,
    };
    // IPVS mode: its applier (IPVS over generic netlink, svcc-ipvs0, the glue table).
    let ipvs = match s.backend {
        svcc_compiler::Backend::Ipvs => Some(
            crate::ipvs::IpvsApplier::new()
                .map_err(|e| start(format!("starting IPVS mode: {e}")))?,
        ),
        _ => None,
    };
    if let (Some(p), Ok(mut m)) = (&proxy, shared.metrics.lock()) {
        m.userspace = Some(p.counters.clone());
    }
    let inputs = match &cfg.api {
        None => {
            let fs_tx = tx.clone();
            Feed::Files(
                Inputs::new(&cfg.watch, move |ev| {
                    let _ = fs_tx.send(Ev::Fs(ev));
                })
                .map_err(start)?,
            )
        }
        Some(a) => {
            // The sender is shared by the API thread's tasks: a Mutex makes it Sync.
            let api_tx = Mutex::new(tx.clone());
            let bad = api::start(a.clone(), move |ev| {
                if let Ok(t) = api_tx.lock() {
                    let _ = t.send(Ev::Api(ev));
                }
            })
            .map_err(|e| start(e.to_string()))?;
            let mut feed = api::feed::ApiInputs::new(cfg.settings.clone());
            feed.bad_objects = Some(bad);
            Feed::Api(Box::new(feed))
        }
    };
    drop(tx);

    tracing::info!(
        paths = ?cfg.watch,
        api = cfg.api.is_some(),
        min_sync_period = ?s.min_sync_period,
        sync_period = ?s.sync_period,
        metrics = ?cfg.metrics_addr,
        healthz = ?cfg.healthz_addr,
        node = %s.hostname,
        "svcc run: starting"
    );
    let now = Instant::now();
    let mut d = Daemon {
        min_sync: s.min_sync_period,
        sync_period: s.sync_period.max(Duration::from_millis(100)),
        session: Session::new(cfg.settings.clone()),
        inputs,
        applier,
        ct,
        shared,
        http,
        ir: None,
        logged: HashSet::new(),
        hc: BTreeMap::new(),
        last_sync: None,
        next_verify: now,
        retry_at: None,
        full_next: false,
        stats: Stats::default(),
        verifies_since_full: 0,
        proxy,
        ipvs,
    };
    let sig = d.run(&rx);
    match sig {
        Some(sig) => tracing::info!(
            signal = %sig,
            "svcc run: stopping; svcc's rules stay in place (a restart takes them over without disturbing established connections)"
        ),
        None => tracing::info!("svcc run: stopping"),
    }
    Ok(())
}

struct Daemon {
    min_sync: Duration,
    sync_period: Duration,
    session: Session,
    inputs: Feed,
    applier: Applier,
    ct: conntrack::Reconciler,
    shared: Arc<Shared>,
    http: HttpServer,
    /// The IR last applied (shared with the conntrack thread); None before the first sync.
    ir: Option<Arc<Ir>>,
    /// Diagnostics currently reported (their text), so each is logged once.
    logged: HashSet<String>,
    /// healthCheckNodePort answers last handed to the HTTP thread.
    hc: BTreeMap<u16, HcService>,
    last_sync: Option<Instant>,
    next_verify: Instant,
    retry_at: Option<Instant>,
    /// The last sync failed: the next one replaces svcc's tables.
    full_next: bool,
    /// Object counts of the ruleset last applied.
    stats: Stats,
    /// Verifications done as (empty) deltas since the last full compile.
    verifies_since_full: u32,
    /// Userspace mode: the proxy. Every sync then compiles in full, binds the listeners of
    /// the new IR, then applies the redirect rules to them.
    proxy: Option<crate::userspace::Proxy>,
    /// IPVS mode: every sync compiles in full and the IPVS applier sends only the difference
    /// (its messages are proportional to the change; see docs/ARCHITECTURE.md).
    ipvs: Option<crate::ipvs::IpvsApplier>,
}

/// Where the objects come from: files or the Kubernetes API.
enum Feed {
    Files(Inputs),
    Api(Box<api::feed::ApiInputs>),
}

impl Feed {
    fn ready(&self, now: Instant) -> bool {
        match self {
            Feed::Files(i) => i.ready(now),
            Feed::Api(a) => a.ready(),
        }
    }

    fn next_due(&self) -> Option<Instant> {
        match self {
            Feed::Files(i) => i.next_due(),
            Feed::Api(_) => None,
        }
    }

    /// Whether the first sync may happen (the API: every initial list is in).
    fn can_start(&self) -> bool {
        match self {
            Feed::Files(_) => true,
            Feed::Api(a) => a.synced(),
        }
    }

    fn refresh(&mut self, session: &mut Session, now: Instant, verify: bool) -> inputs::Change {
        match self {
            Feed::Files(i) => i.refresh(session, now, verify),
            Feed::Api(a) => a.refresh(session),
        }
    }

    /// (objects or files in, unreadable files)
    fn counts(&self) -> (usize, usize) {
        match self {
            Feed::Files(i) => (i.files(), i.unreadable()),
            Feed::Api(a) => (a.objects(), 0),
        }
    }

    fn unreadable(&self) -> usize {
        self.counts().1
    }

    fn diagnostics(&self) -> Box<dyn Iterator<Item = &Diagnostic> + '_> {
        match self {
            Feed::Files(i) => Box::new(i.diagnostics()),
            Feed::Api(_) => Box::new(std::iter::empty()),
        }
    }
}

/// Every this many verifications (syncPeriod), one compiles and compares everything.
const FULL_VERIFY_EVERY: u32 = 120;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

impl Daemon {
    /// The loop; returns the signal that stopped it.
    fn run(&mut self, rx: &mpsc::Receiver<Ev>) -> Option<Signal> {
        loop {
            let now = Instant::now();
            if now >= self.next_verify {
                self.sync(true);
                // Fixed cadence, never in a burst after a long sync.
                self.next_verify = (self.next_verify + self.sync_period).max(Instant::now());
                continue;
            }
            let allowed = self.last_sync.map_or(now, |t| t + self.min_sync);
            let due_changes = self.inputs.ready(now) && now >= allowed;
            let due_retry = self.retry_at.is_some_and(|r| now >= r);
            if due_changes || due_retry {
                self.sync(false);
                continue;
            }
            let mut wake = self.next_verify;
            if self.inputs.ready(now) {
                wake = wake.min(allowed);
            }
            if let Some(t) = self.inputs.next_due() {
                wake = wake.min(t.max(allowed));
            }
            if let Some(r) = self.retry_at {
                wake = wake.min(r);
            }
            let first = match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(ev) => ev,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            };
            // Take everything already queued: one sync for a burst of events.
            for ev in std::iter::once(first).chain(rx.try_iter()) {
                match ev {
                    Ev::Signal(sig) => return Some(sig),
                    Ev::Fs(e) => {
                        let Feed::Files(i) = &mut self.inputs else {
                            continue;
                        };
                        if i.on_event(e, Instant::now()) {
                            self.metrics(|m| m.last_queued_timestamp = unix_now());
                        }
                    }
                    Ev::Api(e) => {
                        let Feed::Api(a) = &mut self.inputs else {
                            continue;
                        };
                        let queued = a.on_event(e);
                        let (n, errors) = (a.objects() as u64, a.errors);
                        self.metrics(|m| {
                            if queued {
                                m.last_queued_timestamp = unix_now();
                            }
                            m.api_objects = n;
                            m.api_errors_total = errors;
                        });
                    }
                }
            }
        }
    }

    fn metrics(&self, f: impl FnOnce(&mut Metrics)) {
        if let Ok(mut m) = self.shared.metrics.lock() {
            f(&mut m);
        }
    }

    fn retry_delay(&self) -> Duration {
        self.min_sync
            .max(Duration::from_secs(1))
            .min(self.sync_period)
    }

    /// One sync; `verify`: also re-check every watched path (the periodic verification).
    fn sync(&mut self, verify: bool) {
        if self.ir.is_none() && !self.inputs.can_start() {
            // Before the initial lists: no rules are touched (healthz stays 503).
            tracing::debug!(target: "svcc::sync", "waiting for the initial lists");
            return;
        }
        let t0 = Instant::now();
        self.last_sync = Some(t0);
        let retrying = self.retry_at.take().is_some();
        let first = self.ir.is_none();

        let ch = self.inputs.refresh(&mut self.session, t0, verify);
        let read = t0.elapsed();
        if !(ch.changed || verify || retrying || self.ir.is_none()) {
            // Files were touched but their content is what the kernel already has.
            tracing::debug!(target: "svcc::sync", "files touched, nothing changed");
            return;
        }
        // Only endpoints changed since the last compile: the session gives the delta of the
        // service ports they belong to and the applier sends just that (no whole-model work).
        // Anything else is compiled afresh (deterministic, so a verification with unchanged
        // inputs gives the same ruleset) and handed to the applier by value: it keeps it as
        // the state it diffs against next time, without a copy.
        // A verification goes the same way: with nothing changed the delta is empty, and the
        // applier sends nothing once it has checked that the kernel still holds what it
        // applied (else it declines and the full path below repairs). One verification in
        // FULL_VERIFY_EVERY compiles and compares everything anyway, as kube-proxy's hourly
        // full sync does.
        let t1 = Instant::now();
        let mut applied = None;
        let full_verify = verify && self.verifies_since_full + 1 >= FULL_VERIFY_EVERY;
        if !(full_verify
            || retrying
            || first
            || self.full_next
            || self.proxy.is_some()
            || self.ipvs.is_some())
        {
            match self.session.compile_delta() {
                Err(why) => {
                    tracing::info!(target: "svcc::sync", reason = %why, "not a delta: compiling in full");
                }
                Ok(inc) => {
                    let compile = t1.elapsed();
                    match self
                        .applier
                        .apply_delta(&inc.delta, &ApplyOptions::default())
                    {
                        Ok(Some(r)) => {
                            self.verifies_since_full += u32::from(verify);
                            // The rules are in; the rest is bookkeeping (the IR snapshot for health
                            // checks and the conntrack thread is the one part that grows with the
                            // cluster, and it comes after the commit).
                            let diags = self.session.diagnostics();
                            let notes = self.session.notes();
                            self.report_diagnostics(&diags, &notes);
                            let (add, del) = inc.delta.stats_change();
                            let st = &mut self.stats;
                            st.chains = (st.chains + add.chains).saturating_sub(del.chains);
                            st.rules = (st.rules + add.rules).saturating_sub(del.rules);
                            st.elements = (st.elements + add.elements).saturating_sub(del.elements);
                            let ir = Arc::new(self.session.ir().expect("compiled").clone());
                            applied = Some((Ok(r), ir, compile));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.metrics(|m| m.sync_failures += 1);
                            tracing::warn!(target: "svcc::sync", error = %e, "transaction refused; replacing svcc's tables instead");
                            self.full_next = true;
                        }
                    }
                }
            }
        }
        let (result, ir, compile) = match applied {
            Some(a) => a,
            None => {
                self.verifies_since_full = 0;
                let t1 = Instant::now();
                let out = self.session.compile();
                let compile = t1.elapsed();
                self.report_diagnostics(&out.diagnostics, &out.notes);
                let ipvs_model = self
                    .ipvs
                    .is_some()
                    .then(|| ipvs_model(&out, self.session.settings()));
                let Output {
                    ir, mut ruleset, ..
                } = out;
                if let Some(p) = &mut self.proxy {
                    // Listeners first (bound before any rule sends traffic to them).
                    p.sync(&ir);
                    ruleset = p.ruleset(&ir);
                    let n = p.ports().len() as u64;
                    let per = p.listener_counters();
                    self.metrics(|m| {
                        m.userspace_listeners = n;
                        m.userspace_per_listener = per;
                    });
                }
                self.stats = ruleset.stats();
                let ir = Arc::new(ir);
                if first {
                    tracing::info!("first sync: svcc's tables are replaced in one transaction; established connections keep their conntrack entries");
                }
                // A refused transaction is redone at once as a full replace (as kube-proxy
                // forces a full sync after a failure): the replace is right whatever the
                // kernel holds.
                let full_first = std::mem::take(&mut self.full_next);
                let opts = |force_full| ApplyOptions {
                    force_full,
                    ..Default::default()
                };
                let mut result = match &ipvs_model {
                    Some(m) => {
                        self.stats = m.glue.stats();
                        self.ipvs_apply(m, first)
                    }
                    None => self.applier.apply_owned(ruleset, &opts(full_first)),
                };
                if let (Err(e), false, None) = (&result, full_first, &ipvs_model) {
                    self.metrics(|m| m.sync_failures += 1);
                    tracing::warn!(target: "svcc::sync", error = %e, "transaction refused; replacing svcc's tables instead");
                    let again = match &self.proxy {
                        Some(p) => p.ruleset(&ir),
                        None => self.session.compile().ruleset,
                    };
                    result = self.applier.apply_owned(again, &opts(true));
                }
                (result, ir, compile)
            }
        };
        let stats = self.stats;
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                let total = t0.elapsed();
                let retry = self.retry_delay();
                self.retry_at = Some(Instant::now() + retry);
                self.full_next = true;
                self.metrics(|m| {
                    m.sync_failures += 1;
                    m.sync_duration.observe(total.as_secs_f64());
                });
                tracing::error!(
                    target: "svcc::sync",
                    error = %e,
                    duration_ms = %ms(total),
                    retry_in = ?retry,
                    "sync failed; the kernel keeps the previous ruleset"
                );
                return;
            }
        };
        self.ir = Some(ir.clone());

        // Health-check node ports (answers follow the IR just applied).
        let hc = health_checks(&ir);
        if hc != self.hc {
            self.http.set_health_checks(hc.clone());
            self.hc = hc;
        }
        let total = t0.elapsed();

        let kind = if r.full {
            SyncKind::Full
        } else if r.messages > 0 {
            SyncKind::Partial
        } else {
            SyncKind::Unchanged
        };
        let drift = !first && is_drift(&r);
        let ports: usize = ir.families.iter().map(|f| f.service_ports.len()).sum();
        let (no_local_int, no_local_ext) = no_local_endpoints(&ir);
        let (files, unreadable) = self.inputs.counts();
        self.metrics(|m| {
            let secs = total.as_secs_f64();
            m.sync_duration.observe(secs);
            if r.full {
                m.full_sync_duration.observe(secs);
            } else {
                m.partial_sync_duration.observe(secs);
            }
            m.last_sync_timestamp = unix_now();
            *m.syncs.entry(kind).or_default() += 1;
            if drift {
                m.drift_repairs += 1;
            }
            if r.messages > 0 {
                m.last_tx_messages = r.messages as u64;
                m.last_tx_bytes = r.bytes as u64;
            }
            m.nft = stats;
            m.service_ports = ports as u64;
            m.no_local_internal = no_local_int;
            m.no_local_external = no_local_ext;
            m.input_files = files as u64;
            m.unreadable_files = unreadable as u64;
            m.phases = Phases {
                read: read.as_secs_f64(),
                compile: compile.as_secs_f64(),
                plan: r.encode_time.as_secs_f64(),
                kernel: r.kernel_time.as_secs_f64(),
            };
        });
        if let Ok(mut h) = self.shared.health.lock() {
            h.updated();
        }
        // Stale UDP conntrack entries: after the rules are in, on the reconciler's thread.
        // (Userspace mode: conntrack entries point at the proxy, never at an endpoint.)
        if self.proxy.is_none() {
            self.ct.submit(ir, verify);
        }
        if drift {
            tracing::warn!(target: "svcc::sync", reason = %r.reason, "svcc's tables were changed by another program: replaced them");
        }
        tracing::info!(
            target: "svcc::sync",
            kind = kind.label(),
            verify,
            duration_ms = %ms(total),
            read_ms = %ms(read),
            compile_ms = %ms(compile),
            plan_ms = %ms(r.encode_time),
            kernel_ms = %ms(r.kernel_time),
            files_read = ch.files_read,
            files_removed = ch.files_removed,
            service_ports = ports,
            chains = stats.chains,
            elements = stats.elements,
            messages = r.messages,
            bytes = r.bytes,
            reason = %r.reason,
            "sync"
        );
    }

    /// Logs each diagnostic once (when it appears; its disappearance at info), updates counts.
    fn report_diagnostics(&mut self, diagnostics: &[Diagnostic], notes: &[String]) {
        // Files that cannot be read are input errors like the others.
        let all: Vec<Diagnostic>;
        let diagnostics = if self.inputs.unreadable() == 0 {
            diagnostics
        } else {
            all = self
                .inputs
                .diagnostics()
                .chain(diagnostics)
                .cloned()
                .collect();
            &all
        };
        let now: HashSet<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        let mut new_errors = 0u64;
        for d in diagnostics {
            let text = d.to_string();
            if self.logged.contains(&text) {
                continue;
            }
            if d.is_error() {
                new_errors += 1;
                tracing::error!(target: "svcc::input", file = %d.file, line = ?d.line, object = ?d.object, field = ?d.field, "{text} (left out; everything else is applied)");
                if let Feed::Api(a) = &self.inputs {
                    if let Some(b) = &a.bad_objects {
                        b.report(&d.file, &text);
                    }
                }
            } else {
                tracing::warn!(target: "svcc::input", file = %d.file, line = ?d.line, "{text}");
            }
        }
        for gone in self.logged.difference(&now) {
            tracing::info!(target: "svcc::input", "resolved: {gone}");
        }
        for n in notes {
            tracing::debug!(target: "svcc::input", "note: {n}");
        }
        self.logged = now;
        // Distinct invalid objects (several errors of one object count once).
        let invalid: HashSet<(&str, String)> = diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                let what = match (&d.object, d.line) {
                    (Some(o), _) => o.clone(),
                    (None, Some(l)) => format!("line {l}"),
                    (None, None) => d.message.clone(),
                };
                (d.file.as_str(), what)
            })
            .collect();
        let warnings = diagnostics.iter().filter(|d| !d.is_error()).count();
        self.metrics(|m| {
            m.invalid_objects = invalid.len() as u64;
            m.input_warnings = warnings as u64;
            m.input_errors_total += new_errors;
        });
    }
}

impl Daemon {
    /// One IPVS apply, reported as the nft applier's report (for metrics and logs). A failure
    /// makes the next sync re-read the kernel.
    fn ipvs_apply(
        &mut self,
        m: &svcc_compiler::ipvs::model::IpvsModel,
        first: bool,
    ) -> Result<ApplyReport, crate::ApplyError> {
        let a = self.ipvs.as_mut().expect("IPVS mode");
        let strict_arp = self.session.settings().ipvs.strict_arp;
        match a.apply(&crate::ipvs::desired(m, strict_arp)) {
            Ok(r) => Ok(ApplyReport {
                full: first,
                reason: format!("ipvs: {r}"),
                messages: (r.ipvs_messages + r.link_messages) as usize + r.glue_messages,
                committed: r.changed(),
                ..Default::default()
            }),
            Err(e) => {
                a.forget();
                Err(crate::ApplyError::Ipvs(Box::new(e)))
            }
        }
    }
}

/// The IPVS model of a compile, NodePort servers on the node's current addresses.
fn ipvs_model(out: &Output, s: &NodeSettings) -> svcc_compiler::ipvs::model::IpvsModel {
    let mut o = svcc_compiler::ipvs::build::IpvsOptions::from_settings(&s.ipvs);
    match crate::ipvs::local_addrs() {
        Ok(a) => o.local_addrs = Some(a),
        Err(e) => {
            tracing::warn!(target: "svcc::sync", error = %e, "cannot list local addresses; NodePorts on the --node-ip addresses only")
        }
    }
    out.ipvs(&o)
}

/// Whether the applier replaced svcc's tables because someone else changed them.
fn is_drift(r: &ApplyReport) -> bool {
    r.full
        && (r.reason.contains("another program") || r.reason.contains("not the ones this applier"))
}

/// healthCheckNodePort -> the service and its local endpoints (distinct `IP:port` over all its
/// ports and families, as kube-proxy counts them).
pub fn health_checks(ir: &Ir) -> BTreeMap<u16, HcService> {
    type Local = HashSet<(IpAddr, u16)>;
    let mut eps: BTreeMap<u16, (String, String, Local)> = BTreeMap::new();
    for f in &ir.families {
        for sp in &f.service_ports {
            let Some(port) = sp.policy.health_check_node_port else {
                continue;
            };
            let e = eps.entry(port).or_insert_with(|| {
                (
                    sp.name.namespace.clone(),
                    sp.name.name.clone(),
                    HashSet::new(),
                )
            });
            if e.0 != sp.name.namespace || e.1 != sp.name.name {
                continue; // two services claim one port: the first keeps it
            }
            // Like kube-proxy, only ready local endpoints count: terminating ones drain.
            if !sp.backends.local_fallback {
                e.2.extend(sp.backends.local.iter().map(|b| (b.addr, b.port)));
            }
        }
    }
    eps.into_iter()
        .map(|(p, (namespace, name, l))| {
            (
                p,
                HcService {
                    namespace,
                    name,
                    local: l.len(),
                },
            )
        })
        .collect()
}

/// kube-proxy's `kubeproxy_sync_proxy_rules_no_local_endpoints_total` (internal, external):
/// service ports with a Local policy, endpoints somewhere, but none on this node.
pub fn no_local_endpoints(ir: &Ir) -> (u64, u64) {
    let mut int = HashSet::new();
    let mut ext = HashSet::new();
    for f in &ir.families {
        for sp in &f.service_ports {
            if !sp.backends.has_any || !sp.backends.local.is_empty() {
                continue;
            }
            if sp.policy.internal_local {
                int.insert(&sp.name);
            }
            if sp.policy.external_local {
                ext.insert(&sp.name);
            }
        }
    }
    (int.len() as u64, ext.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use svcc_compiler::{compile, CompileOptions, Source};

    const M: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: d}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.60
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30060}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30061}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: d, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]
endpoints:
- {addresses: [10.0.1.1], conditions: {ready: true}, nodeName: node-a}
- {addresses: [10.0.1.2], conditions: {ready: true}, nodeName: node-b}
"#;

    fn ir(node: &str) -> Ir {
        let s = NodeSettings {
            hostname: node.into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            ..Default::default()
        };
        let src = Source {
            name: "m.yaml".into(),
            text: M.into(),
        };
        compile(&[src], &s, CompileOptions::default()).unwrap().ir
    }

    #[test]
    fn health_check_ports_count_local_endpoints_over_ports() {
        let hc = health_checks(&ir("node-a"));
        assert_eq!(hc.len(), 1);
        let s = &hc[&32000];
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("d", "web"));
        // 10.0.1.1:8080 and 10.0.1.1:5353, as kube-proxy counts `IP:port`s.
        assert_eq!(s.local, 2);
        assert_eq!(health_checks(&ir("node-c"))[&32000].local, 0);
        assert_eq!(
            no_local_endpoints(&ir("node-c")),
            (0, 2),
            "per service port"
        );
        assert_eq!(no_local_endpoints(&ir("node-a")), (0, 0));
    }
}
