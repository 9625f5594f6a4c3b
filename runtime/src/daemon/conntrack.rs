//! Stale UDP conntrack entries: after every sync, entries of UDP Service traffic whose backend
//! (the reply source, i.e. the DNAT target) is no longer a serving endpoint are deleted, so the
//! next datagram is load-balanced again instead of following the old entry to a dead endpoint.
//!
//! Level-triggered, like the reconciler kube-proxy users ask for (kubernetes issue 126130): the
//! [`Reconciler`] lists the UDP entries and checks them against the current IR after every sync
//! that changed a UDP service's frontends or serving endpoints, after every periodic
//! verification (syncPeriod), and again one second after a check failed — never from a memory of
//! "what changed", so a missed or failed cleanup is simply done at the next check. It runs on its
//! own thread: a conntrack dump walks the kernel's whole hash table (262,144 buckets by default,
//! ~5 ms even when empty), which must not delay rule programming. Nothing else is ever deleted:
//! - an entry counts as Service traffic only if its original destination is a frontend of a UDP
//!   service port (ClusterIP, external IP, LoadBalancer IP, with its port), or a NodePort of one
//!   *on an address that accepts NodePorts* (kube-proxy matches the port alone, which also hits
//!   unrelated flows to other hosts that happen to use that port number);
//! - it is stale only if its reply source `IP:port` is not a serving endpoint of that port
//!   (kube-proxy compares the IP only; the port also catches a changed targetPort).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use svcc_compiler::ir::{FrontendKind, Ir, NodePortAddrs};
use svcc_compiler::nft::model::L4Proto;

use super::ctnl::{CtSocket, Entry, AF_INET, AF_INET6, IPPROTO_UDP};
use super::http::Shared;

type Serving = HashSet<(IpAddr, u16)>;

/// Where NodePorts are accepted, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum NodePortOn {
    #[default]
    Nowhere,
    /// Every local non-loopback address.
    AllLocal,
    Addrs(HashSet<IpAddr>),
}

/// The UDP service frontends of an IR and their serving endpoints.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StaleIndex {
    frontends: HashMap<(IpAddr, u16), Serving>,
    /// (IPv6?, node port) -> serving endpoints.
    nodeports: HashMap<(bool, u16), Serving>,
    on_v4: NodePortOn,
    on_v6: NodePortOn,
    /// The node's local addresses, when some NodePort is accepted on all of them.
    local: HashSet<IpAddr>,
}

impl StaleIndex {
    /// `local_addrs` is called only if a UDP NodePort is accepted on every local address.
    pub fn new(ir: &Ir, local_addrs: impl FnOnce() -> Vec<IpAddr>) -> StaleIndex {
        let mut ix = StaleIndex::default();
        let mut need_local = false;
        for fam in &ir.families {
            let v6 = fam.family == svcc_compiler::nft::model::Family::Ip6;
            let on = match &fam.node_ports_on {
                NodePortAddrs::AllLocal => NodePortOn::AllLocal,
                NodePortAddrs::Addrs(a) => NodePortOn::Addrs(a.iter().copied().collect()),
            };
            let mut has_nodeport = false;
            for sp in &fam.service_ports {
                if sp.protocol != L4Proto::Udp {
                    continue;
                }
                let serving: Vec<(IpAddr, u16)> = sp
                    .backends
                    .serving
                    .iter()
                    .map(|b| (b.addr, b.port))
                    .collect();
                for f in &sp.frontends {
                    // Two service ports on one frontend would be a conflict; if it happens, the
                    // union keeps both ports' entries (never delete a live flow).
                    let slot = match (f.kind, f.addr) {
                        (FrontendKind::NodePort, _) => {
                            has_nodeport = true;
                            ix.nodeports.entry((v6, f.port)).or_default()
                        }
                        (_, Some(a)) => ix.frontends.entry((a, f.port)).or_default(),
                        (_, None) => continue,
                    };
                    slot.extend(serving.iter().copied());
                }
            }
            if has_nodeport {
                need_local |= matches!(on, NodePortOn::AllLocal);
                if v6 {
                    ix.on_v6 = on;
                } else {
                    ix.on_v4 = on;
                }
            }
        }
        if need_local {
            ix.local = local_addrs()
                .into_iter()
                .filter(|a| !a.is_loopback())
                .collect();
        }
        ix
    }

    /// No UDP service at all: nothing to check (no dump needed).
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.nodeports.is_empty()
    }

    /// The families that have UDP services (AF_INET / AF_INET6).
    pub fn families(&self) -> Vec<u8> {
        let mut v4 = false;
        let mut v6 = false;
        for (a, _) in self.frontends.keys() {
            if a.is_ipv6() {
                v6 = true
            } else {
                v4 = true
            }
        }
        for (is6, _) in self.nodeports.keys() {
            if *is6 {
                v6 = true
            } else {
                v4 = true
            }
        }
        let mut f = Vec::new();
        if v4 {
            f.push(AF_INET);
        }
        if v6 {
            f.push(AF_INET6);
        }
        f
    }

    fn accepts_nodeports(&self, a: &IpAddr) -> bool {
        let on = if a.is_ipv6() {
            &self.on_v6
        } else {
            &self.on_v4
        };
        match on {
            NodePortOn::Nowhere => false,
            NodePortOn::AllLocal => self.local.contains(a),
            NodePortOn::Addrs(s) => s.contains(a),
        }
    }

    /// Whether this entry is Service traffic whose backend is not serving any more.
    pub fn is_stale(&self, e: &Entry) -> bool {
        if e.orig.proto != IPPROTO_UDP {
            return false;
        }
        let backend = (e.reply.src, e.reply.sport);
        if let Some(s) = self.frontends.get(&(e.orig.dst, e.orig.dport)) {
            return !s.contains(&backend);
        }
        if let Some(s) = self.nodeports.get(&(e.orig.dst.is_ipv6(), e.orig.dport)) {
            if self.accepts_nodeports(&e.orig.dst) {
                return !s.contains(&backend);
            }
        }
        false
    }
}

/// How long after a failed check the next one runs.
pub const RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Work {
    /// The IR of the last successful sync, not yet checked.
    ir: Option<Arc<Ir>>,
    /// Check even if the UDP services look unchanged (periodic verification, or an IR was
    /// replaced before the thread saw it: its state may have created entries the next does not
    /// allow).
    force: bool,
    stop: bool,
}

/// The stale-UDP-conntrack reconciler thread; stopped on drop.
pub struct Reconciler {
    work: Arc<(Mutex<Work>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Reconciler {
    pub fn start(shared: Arc<Shared>) -> std::io::Result<Reconciler> {
        let work = Arc::new((Mutex::new(Work::default()), Condvar::new()));
        let w = work.clone();
        let thread = std::thread::Builder::new()
            .name("svcc-conntrack".into())
            .spawn(move || reconcile_loop(&w, &shared))?;
        Ok(Reconciler {
            work,
            thread: Some(thread),
        })
    }

    /// The IR now in the kernel: check against it (coalesced with checks not yet started).
    pub fn submit(&self, ir: Arc<Ir>, force: bool) {
        let (m, cv) = &*self.work;
        if let Ok(mut w) = m.lock() {
            let dropped = w.ir.replace(ir).is_some();
            w.force |= force || dropped;
            cv.notify_one();
        }
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        let (m, cv) = &*self.work;
        if let Ok(mut w) = m.lock() {
            w.stop = true;
            cv.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reconcile_loop(work: &(Mutex<Work>, Condvar), shared: &Shared) {
    let (m, cv) = work;
    let mut sock: Option<CtSocket> = None;
    // The index last checked successfully: an unchanged one needs no new check.
    let mut checked: Option<StaleIndex> = None;
    // After a failure: the IR to check again, and when.
    let mut retry: Option<(Arc<Ir>, Instant)> = None;
    loop {
        let (ir, force) = {
            let Ok(mut w) = m.lock() else { return };
            loop {
                if w.stop {
                    return;
                }
                if let Some(ir) = w.ir.take() {
                    let force = std::mem::take(&mut w.force);
                    break (ir, force);
                }
                match &retry {
                    Some((ir, at)) => {
                        let now = Instant::now();
                        if now >= *at {
                            break (ir.clone(), true);
                        }
                        let Ok((g, _)) = cv.wait_timeout(w, *at - now) else {
                            return;
                        };
                        w = g;
                    }
                    None => {
                        let Ok(g) = cv.wait(w) else { return };
                        w = g;
                    }
                }
            }
        };
        let ix = StaleIndex::new(&ir, local_addrs);
        if ix.is_empty() || (!force && checked.as_ref() == Some(&ix)) {
            retry = None;
            continue;
        }
        let t0 = Instant::now();
        let res = check(&mut sock, &ix);
        let took = t0.elapsed();
        let mut metrics = shared.metrics.lock().ok();
        if let Some(m) = metrics.as_mut() {
            m.conntrack_duration.observe(took.as_secs_f64());
        }
        match res {
            Ok(n) => {
                if let Some(m) = metrics.as_mut() {
                    m.conntrack_deleted += n as u64;
                }
                drop(metrics);
                if n > 0 {
                    tracing::info!(target: "svcc::conntrack", deleted = n, duration_ms = %format!("{:.3}", took.as_secs_f64() * 1e3), "deleted stale UDP conntrack entries (their endpoint is no longer serving)");
                } else {
                    tracing::debug!(target: "svcc::conntrack", duration_ms = %format!("{:.3}", took.as_secs_f64() * 1e3), "no stale UDP conntrack entries");
                }
                checked = Some(ix);
                retry = None;
            }
            Err(e) => {
                if let Some(m) = metrics.as_mut() {
                    m.conntrack_failures += 1;
                }
                drop(metrics);
                tracing::warn!(target: "svcc::conntrack", error = %e, "stale conntrack cleanup failed; retrying in 1s");
                sock = None;
                checked = None;
                retry = Some((ir, Instant::now() + RETRY));
            }
        }
    }
}

/// One check: dump each family's UDP entries, delete the stale ones; how many were deleted.
fn check(sock: &mut Option<CtSocket>, ix: &StaleIndex) -> std::io::Result<usize> {
    if sock.is_none() {
        *sock = Some(CtSocket::open()?);
    }
    let s = sock.as_mut().expect("opened");
    let mut deleted = 0;
    for fam in ix.families() {
        let entries = s.dump_udp(fam)?;
        let stale: Vec<&Entry> = entries.iter().filter(|e| ix.is_stale(e)).collect();
        for e in &stale {
            tracing::debug!(
                target: "svcc::conntrack",
                orig_src = %SocketAddr::new(e.orig.src, e.orig.sport),
                orig_dst = %SocketAddr::new(e.orig.dst, e.orig.dport),
                reply_src = %SocketAddr::new(e.reply.src, e.reply.sport),
                "stale UDP entry"
            );
        }
        if !stale.is_empty() {
            deleted += s.delete(&stale)?;
        }
    }
    Ok(deleted)
}

/// The node's addresses (for NodePorts accepted on every local address).
pub fn local_addrs() -> Vec<IpAddr> {
    let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifs.filter_map(|i| i.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::ctnl::Tuple;
    use super::*;
    use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};

    const M: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: d}
spec:
  type: NodePort
  clusterIP: 172.30.0.10
  externalIPs: [192.0.2.10]
  ports: [{name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: d, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, protocol: UDP, port: 5353}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: true}
- addresses: [10.0.1.2]
  conditions: {ready: false, serving: true, terminating: true}
"#;

    fn ir() -> Ir {
        let s = NodeSettings {
            hostname: "node-a".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            nodeport_addresses: svcc_compiler::NodePortAddresses::Primary,
            ..Default::default()
        };
        let src = Source {
            name: "m.yaml".into(),
            text: M.into(),
        };
        compile(&[src], &s, CompileOptions::default()).unwrap().ir
    }

    fn udp(dst: &str, dport: u16, reply_src: &str, sport: u16) -> Entry {
        Entry {
            family: AF_INET,
            orig: Tuple {
                src: "10.0.0.9".parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto: IPPROTO_UDP,
                sport: 40000,
                dport,
            },
            reply: Tuple {
                src: reply_src.parse().unwrap(),
                dst: "10.0.0.9".parse().unwrap(),
                proto: IPPROTO_UDP,
                sport,
                dport: 40000,
            },
            id: None,
            zone: None,
            status: 0,
        }
    }

    #[test]
    fn stale_entries_and_only_those() {
        let ix = StaleIndex::new(&ir(), || panic!("no AllLocal nodeports here"));
        assert_eq!(ix.families(), vec![AF_INET]);
        // Serving endpoints (ready, and serving-terminating) are kept.
        assert!(!ix.is_stale(&udp("172.30.0.10", 53, "10.0.1.1", 5353)));
        assert!(!ix.is_stale(&udp("172.30.0.10", 53, "10.0.1.2", 5353)));
        // A gone endpoint, a changed target port, an un-NATed entry: stale.
        assert!(ix.is_stale(&udp("172.30.0.10", 53, "10.0.1.9", 5353)));
        assert!(ix.is_stale(&udp("172.30.0.10", 53, "10.0.1.1", 53)));
        assert!(ix.is_stale(&udp("172.30.0.10", 53, "172.30.0.10", 53)));
        assert!(ix.is_stale(&udp("192.0.2.10", 53, "10.0.1.9", 5353)));
        // NodePort on the node's address: checked; the same port elsewhere: not service traffic.
        assert!(ix.is_stale(&udp("192.168.0.2", 30053, "10.0.1.9", 5353)));
        assert!(!ix.is_stale(&udp("192.168.0.2", 30053, "10.0.1.1", 5353)));
        assert!(!ix.is_stale(&udp("198.51.100.9", 30053, "198.51.100.9", 30053)));
        // Other ports of the ClusterIP, other destinations, TCP: untouched.
        assert!(!ix.is_stale(&udp("172.30.0.10", 54, "10.0.1.9", 5353)));
        assert!(!ix.is_stale(&udp("10.0.1.1", 5353, "10.0.1.1", 5353)));
        let mut tcp = udp("172.30.0.10", 53, "10.0.1.9", 5353);
        tcp.orig.proto = 6;
        assert!(!ix.is_stale(&tcp));
    }
}
