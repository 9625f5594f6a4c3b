//! The IPVS applier: makes the kernel hold a [`Desired`] state — virtual servers, real
//! servers, addresses on svcc-ipvs0, the nft glue table — changing only what differs and only
//! svcc's own objects, in an order that never lets a frontend be served by a half-written
//! virtual server (IPVS has no transactions). The order and the ownership rule are described
//! in docs/ARCHITECTURE.md, "Applying IPVS".

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use svcc_compiler::nft::model::Ruleset;

use super::genl::{GenlError, Ipvs, Listed, SvcKey, SvcParams, Timeouts};
use super::link::{LinkError, Links, DUMMY};
use super::sysctl;
use crate::{Applier, ApplyError, ApplyOptions};

/// A real server: (address, port).
pub type DestKey = (IpAddr, u16);

/// One wanted virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedService {
    pub params: SvcParams,
    /// Real servers and their weights.
    pub dests: BTreeMap<DestKey, u32>,
    /// Where it comes from (e.g. "default/web:http ClusterIP"), for errors.
    pub origin: String,
}

/// What the kernel should hold after an apply.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub services: BTreeMap<SvcKey, WantedService>,
    /// Addresses for svcc-ipvs0 (ClusterIPs, externalIPs, LB IPs that are not node addresses).
    pub bind: BTreeSet<IpAddr>,
    pub timeouts: Timeouts,
    pub strict_arp: bool,
    /// The nft glue (masquerade, source ranges, REJECT, eTP Local): one transaction.
    pub glue: Ruleset,
}

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("IPVS: {0}")]
    Genl(#[from] GenlError),
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("glue table: {0}")]
    Glue(#[from] ApplyError),
    /// Bad input found before anything was changed.
    #[error("{0} (nothing applied)")]
    Refused(String),
    #[error("{what}: {err} (the changes listed before it were applied; the next apply repairs the rest)")]
    Partial { what: String, err: String },
    #[error("sysctl {path}: {err}")]
    Sysctl { path: String, err: std::io::Error },
    #[error("ownership record {path}: {err}")]
    State { path: String, err: std::io::Error },
}

/// What one apply did, counted in kernel requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsReport {
    pub services_added: usize,
    pub services_changed: usize,
    pub services_deleted: usize,
    pub dests_added: usize,
    pub dests_changed: usize,
    /// Set to weight 0 (graceful termination), deleted later when drained.
    pub dests_quiesced: usize,
    pub dests_deleted: usize,
    pub addrs_added: usize,
    pub addrs_deleted: usize,
    /// IPVS generic-netlink requests sent (changes and dumps).
    pub ipvs_messages: u64,
    /// rtnetlink requests sent.
    pub link_messages: u64,
    /// nf_tables messages of the glue transaction (0 if the glue did not change).
    pub glue_messages: usize,
    /// Real servers left at weight 0 with connections.
    pub draining: usize,
}

impl std::fmt::Display for IpvsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "virtual servers +{} ~{} -{}, real servers +{} ~{} quiesced {} -{} (draining {}), addresses +{} -{}; {} IPVS, {} rtnetlink, {} nft messages",
            self.services_added,
            self.services_changed,
            self.services_deleted,
            self.dests_added,
            self.dests_changed,
            self.dests_quiesced,
            self.dests_deleted,
            self.draining,
            self.addrs_added,
            self.addrs_deleted,
            self.ipvs_messages,
            self.link_messages,
            self.glue_messages
        )
    }
}

impl IpvsReport {
    pub fn changed(&self) -> bool {
        self.services_added
            + self.services_changed
            + self.services_deleted
            + self.dests_added
            + self.dests_changed
            + self.dests_quiesced
            + self.dests_deleted
            + self.addrs_added
            + self.addrs_deleted
            + self.glue_messages
            > 0
    }
}

/// What svcc last programmed for one virtual server (dests with the weights it set).
type Applied = BTreeMap<SvcKey, (SvcParams, BTreeMap<DestKey, u32>)>;

pub struct IpvsApplier {
    ipvs: Ipvs,
    links: Links,
    nft: Applier,
    /// What this applier last made the kernel hold; None = dump the kernel (first apply).
    applied: Option<Applied>,
    /// Addresses last bound (valid with `applied`).
    bound: BTreeSet<IpAddr>,
    /// Real servers at weight 0 waiting for their connections to end.
    draining: BTreeSet<(SvcKey, DestKey)>,
    state_dir: PathBuf,
    sysctls_done: bool,
    /// The ownership record as last read or written (None: not read yet).
    owned: Option<BTreeSet<SvcKey>>,
}

/// IANA protocol numbers of the L4 protocols IPVS serves.
fn graceful(proto: u16) -> bool {
    // kube-proxy's graceful termination applies to TCP only: UDP/SCTP real servers are
    // deleted at once (expire_nodest_conn=1 ends their flows on the next packet).
    proto == libc::IPPROTO_TCP as u16
}

impl IpvsApplier {
    /// Opens the IPVS (loading `ip_vs` if needed), rtnetlink and nf_tables sockets in the
    /// caller's network namespace.
    pub fn new() -> Result<IpvsApplier, IpvsError> {
        Ok(IpvsApplier {
            ipvs: Ipvs::open()?,
            links: Links::open().map_err(LinkError::Io)?,
            nft: Applier::new()?,
            applied: None,
            bound: BTreeSet::new(),
            draining: BTreeSet::new(),
            state_dir: std::env::var_os("SVCC_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/run/svcc")),
            sysctls_done: false,
            owned: None,
        })
    }

    /// The IPVS client (tests read the kernel's state through it).
    pub fn ipvs(&mut self) -> &mut Ipvs {
        &mut self.ipvs
    }

    /// Forgets what was applied: the next apply dumps the kernel.
    pub fn forget(&mut self) {
        self.applied = None;
        self.nft.forget();
    }

    /// The ownership record: virtual servers svcc made (NodePort ones live on node addresses,
    /// which nothing else marks as svcc's). Keyed by the network namespace.
    fn state_path(&self) -> PathBuf {
        let ns = std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        self.state_dir.join(format!("ipvs-owned-netns-{ns}"))
    }

    fn read_owned(&mut self) -> BTreeSet<SvcKey> {
        let owned: BTreeSet<SvcKey> = match std::fs::read_to_string(self.state_path()) {
            Ok(s) => s.lines().filter_map(parse_key_line).collect(),
            Err(_) => BTreeSet::new(),
        };
        self.owned = Some(owned.clone());
        owned
    }

    fn write_owned(&mut self, keys: &BTreeSet<SvcKey>) -> Result<(), IpvsError> {
        let p = self.state_path();
        let err = |err| IpvsError::State {
            path: p.display().to_string(),
            err,
        };
        std::fs::create_dir_all(&self.state_dir).map_err(err)?;
        let mut s = String::new();
        for k in keys {
            s.push_str(&format!("{} {} {}\n", k.proto, k.addr, k.port));
        }
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, s).map_err(err)?;
        std::fs::rename(&tmp, &p).map_err(err)?;
        self.owned = Some(keys.clone());
        Ok(())
    }

    /// The kernel's virtual servers split into svcc's (with their dests and params) and the
    /// keys of foreign ones. Ownership: in the ownership record, or its address is on
    /// svcc-ipvs0 (kernel-side fact that survives a lost record).
    fn dump_owned(
        &mut self,
        on_dummy: &BTreeSet<IpAddr>,
        with_dests: impl Fn(&SvcKey) -> bool,
    ) -> Result<(Applied, BTreeSet<SvcKey>), IpvsError> {
        let owned = self.read_owned();
        let mut mine = Applied::new();
        let mut foreign = BTreeSet::new();
        for l in self.ipvs.services()? {
            let Listed::Addr { key, params, .. } = l else {
                continue; // fwmark services: never svcc's
            };
            if owned.contains(&key) || on_dummy.contains(&key.addr) {
                let dests = if with_dests(&key) {
                    self.ipvs
                        .dests(&key)?
                        .into_iter()
                        .map(|d| ((d.addr, d.port), d.weight))
                        .collect()
                } else {
                    BTreeMap::new()
                };
                mine.insert(key, (params, dests));
            } else {
                foreign.insert(key);
            }
        }
        Ok((mine, foreign))
    }

    /// Makes the kernel hold `want`. See the module doc and ARCHITECTURE.md for the order.
    pub fn apply(&mut self, want: &Desired) -> Result<IpvsReport, IpvsError> {
        let (ipvs0, links0) = (self.ipvs.sent(), self.links.sent());
        let mut rep = IpvsReport::default();

        // 1. Checks (no change yet). Addresses: one dump of every interface's.
        let dummy_index = self.links.index(DUMMY)?;
        let all = self.links.addresses()?;
        let on_dummy: BTreeSet<IpAddr> = all
            .iter()
            .filter(|a| Some(a.index) == dummy_index)
            .map(|a| a.addr)
            .collect();
        for a in &all {
            if Some(a.index) != dummy_index && want.bind.contains(&a.addr) {
                let owner = self
                    .links
                    .name(a.index)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| format!("#{}", a.index));
                let who = want
                    .services
                    .iter()
                    .find(|(k, _)| k.addr == a.addr)
                    .map(|(_, s)| format!(" (service {})", s.origin))
                    .unwrap_or_default();
                return Err(IpvsError::Refused(format!(
                    "address {} is already on interface {owner}; svcc binds its virtual \
                     addresses to {DUMMY} only{who}",
                    a.addr
                )));
            }
        }
        for s in want
            .services
            .values()
            .map(|s| s.params.sched.as_str())
            .collect::<BTreeSet<_>>()
        {
            ensure_scheduler(s)?;
        }

        // The kernel's state: from the last apply, or dumped (first apply / after forget).
        let (mut current, foreign) = match self.applied.take() {
            Some(a) if self.bound == on_dummy => {
                // Trusted: only services with draining real servers are re-read (connection
                // counts), so a small change costs a handful of requests at any scale.
                let mut a = a;
                let drain: BTreeSet<SvcKey> = self.draining.iter().map(|(k, _)| *k).collect();
                for k in drain {
                    if let Some(e) = a.get_mut(&k) {
                        e.1 = self.read_dests(&k)?;
                    }
                }
                (a, BTreeSet::new())
            }
            _ => {
                let (a, f) = self.dump_owned(&on_dummy, |_| true)?;
                (a, f)
            }
        };
        if let Some(k) = want.services.keys().find(|k| foreign.contains(k)) {
            return Err(IpvsError::Refused(format!(
                "virtual server {k} (service {}) already exists and is not svcc's (remove it \
                 with `ipvsadm -D` to hand it over)",
                want.services[k].origin
            )));
        }

        // 2. Namespace settings (a refused timeout stops here, before any object changes).
        if !self.sysctls_done {
            for s in sysctl::wanted(want.strict_arp, sysctl::kernel_version()) {
                if let Err(err) = sysctl::ensure(&s) {
                    if s.required {
                        return Err(IpvsError::Sysctl {
                            path: s.path.into(),
                            err,
                        });
                    }
                    tracing::warn!(target: "svcc::ipvs", sysctl = s.path, %err, "cannot set");
                }
            }
            self.sysctls_done = true;
        }
        if want.timeouts != Timeouts::default() {
            let now = self.ipvs.timeouts()?;
            let eff = |w: u32, n: u32| if w == 0 { n } else { w };
            let t = Timeouts {
                tcp: eff(want.timeouts.tcp, now.tcp),
                tcp_fin: eff(want.timeouts.tcp_fin, now.tcp_fin),
                udp: eff(want.timeouts.udp, now.udp),
            };
            if t != now {
                self.ipvs.set_timeouts(want.timeouts).map_err(|e| {
                    IpvsError::Refused(format!(
                        "ipvs.tcpTimeout/tcpFinTimeout/udpTimeout {}s/{}s/{}s: {e}",
                        want.timeouts.tcp, want.timeouts.tcp_fin, want.timeouts.udp
                    ))
                })?;
            }
        }
        // Record intent before creating anything: a crash mid-apply leaves no unowned VS.
        let owned_before: BTreeSet<SvcKey> = current.keys().copied().collect();
        let intent: BTreeSet<SvcKey> = owned_before
            .union(&want.services.keys().copied().collect())
            .copied()
            .collect();
        if Some(&intent) != self.owned.as_ref() {
            self.write_owned(&intent)?;
        }
        let partial = |what: String| {
            move |e: GenlError| IpvsError::Partial {
                what,
                err: e.to_string(),
            }
        };
        let index = self.links.ensure_dummy()?;

        // 3. Removals: first make removed frontends unreachable (unbind), then delete them.
        let keep_bound: BTreeSet<IpAddr> = want.bind.clone();
        for a in on_dummy.difference(&keep_bound) {
            self.links.del_addr(index, a)?;
            rep.addrs_deleted += 1;
        }
        let mut applied = Applied::new();
        for k in current.keys().filter(|k| !want.services.contains_key(k)) {
            self.ipvs
                .del_service(k)
                .map_err(partial(format!("deleting virtual server {k}")))?;
            self.draining.retain(|(s, _)| s != k);
            rep.services_deleted += 1;
        }

        // 4. The glue, one transaction, before any new frontend can take traffic.
        let r = self.nft.apply(&want.glue, &ApplyOptions::default())?;
        rep.glue_messages = if r.committed { r.messages } else { 0 };

        // 5. Virtual servers and real servers: new dests before old ones go.
        for (k, w) in &want.services {
            let cur = current.remove(k);
            if let Some((p, d)) = &cur {
                // Unchanged (the common case at scale): no work, no allocation.
                if p == &w.params && d == &w.dests && !w.dests.values().any(|wt| *wt == 0) {
                    applied.insert(*k, cur.unwrap());
                    continue;
                }
            }
            let (params, mut dests) = match cur {
                None => {
                    self.ipvs
                        .new_service(k, &w.params)
                        .map_err(|e| sched_hint(e, k, &w.params.sched, &w.origin))?;
                    rep.services_added += 1;
                    (w.params.clone(), BTreeMap::new())
                }
                Some((p, d)) => {
                    if p != w.params {
                        self.ipvs
                            .set_service(k, &w.params)
                            .map_err(|e| sched_hint(e, k, &w.params.sched, &w.origin))?;
                        rep.services_changed += 1;
                    }
                    (w.params.clone(), d)
                }
            };
            // Weight 0 = terminating: quiesced if present (below), never added.
            let live: BTreeMap<DestKey, u32> = w
                .dests
                .iter()
                .filter(|(_, wt)| **wt > 0)
                .map(|(d, wt)| (*d, *wt))
                .collect();
            for (d, weight) in &live {
                match dests.get(d) {
                    None => {
                        self.ipvs
                            .put_dest(k, &d.0, d.1, *weight, false)
                            .map_err(partial(format!(
                                "adding real server {}:{} to {k} ({})",
                                d.0, d.1, w.origin
                            )))?;
                        rep.dests_added += 1;
                    }
                    Some(cur) if cur != weight => {
                        self.ipvs
                            .put_dest(k, &d.0, d.1, *weight, true)
                            .map_err(partial(format!(
                                "re-weighting real server {}:{} of {k}",
                                d.0, d.1
                            )))?;
                        rep.dests_changed += 1;
                    }
                    Some(_) => {}
                }
                self.draining.remove(&(*k, *d));
                dests.insert(*d, *weight);
            }
            let stale: Vec<(DestKey, u32)> = dests
                .iter()
                .filter(|(d, _)| !live.contains_key(d))
                .map(|(d, wt)| (*d, *wt))
                .collect();
            for (d, wt) in stale {
                if graceful(k.proto) {
                    if wt != 0 {
                        self.ipvs
                            .put_dest(k, &d.0, d.1, 0, true)
                            .map_err(partial(format!(
                                "quiescing real server {}:{} of {k}",
                                d.0, d.1
                            )))?;
                        rep.dests_quiesced += 1;
                        dests.insert(d, 0);
                    }
                    self.draining.insert((*k, d));
                } else {
                    self.ipvs.del_dest(k, &d.0, d.1).map_err(partial(format!(
                        "deleting real server {}:{} of {k}",
                        d.0, d.1
                    )))?;
                    rep.dests_deleted += 1;
                    dests.remove(&d);
                }
            }
            applied.insert(*k, (params, dests));
        }

        // 6. New addresses last: a VIP answers only once its virtual servers are complete.
        for a in want.bind.difference(&on_dummy) {
            self.links.add_addr(index, a)?;
            rep.addrs_added += 1;
        }

        // 7. Drained real servers go (their counts were read in this apply).
        self.applied = Some(applied);
        self.bound = want.bind.clone();
        self.drain_read(&mut rep)?;

        let keys: BTreeSet<SvcKey> = want.services.keys().copied().collect();
        if Some(&keys) != self.owned.as_ref() {
            self.write_owned(&keys)?;
        }
        rep.draining = self.draining.len();
        rep.ipvs_messages = self.ipvs.sent() - ipvs0;
        rep.link_messages = self.links.sent() - links0;
        Ok(rep)
    }

    fn read_dests(&mut self, k: &SvcKey) -> Result<BTreeMap<DestKey, u32>, IpvsError> {
        Ok(self
            .ipvs
            .dests(k)?
            .into_iter()
            .map(|d| ((d.addr, d.port), d.weight))
            .collect())
    }

    /// Deletes the draining real servers whose connections are gone (active + inactive = 0,
    /// as kube-proxy's graceful_termination.go). A long-running caller calls this on a timer.
    pub fn drain(&mut self) -> Result<IpvsReport, IpvsError> {
        let (ipvs0, links0) = (self.ipvs.sent(), self.links.sent());
        let mut rep = IpvsReport::default();
        self.drain_read(&mut rep)?;
        rep.draining = self.draining.len();
        rep.ipvs_messages = self.ipvs.sent() - ipvs0;
        rep.link_messages = self.links.sent() - links0;
        Ok(rep)
    }

    fn drain_read(&mut self, rep: &mut IpvsReport) -> Result<(), IpvsError> {
        let svcs: BTreeSet<SvcKey> = self.draining.iter().map(|(k, _)| *k).collect();
        for k in svcs {
            let listed = self.ipvs.dests(&k)?;
            for d in listed {
                let dk = (d.addr, d.port);
                if !self.draining.contains(&(k, dk)) {
                    continue;
                }
                if d.weight == 0 && d.active + d.inactive == 0 {
                    self.ipvs.del_dest(&k, &d.addr, d.port)?;
                    rep.dests_deleted += 1;
                    self.draining.remove(&(k, dk));
                    if let Some(a) = self.applied.as_mut().and_then(|a| a.get_mut(&k)) {
                        a.1.remove(&dk);
                    }
                }
            }
            // Gone from the kernel meanwhile: nothing left to wait for.
            let still: BTreeSet<DestKey> = self
                .applied
                .as_ref()
                .and_then(|a| a.get(&k))
                .map(|a| a.1.keys().copied().collect())
                .unwrap_or_default();
            self.draining.retain(|(s, d)| *s != k || still.contains(d));
        }
        Ok(())
    }

    /// The addresses on svcc-ipvs0 now (none when the interface does not exist).
    fn dummy_addresses(&mut self) -> Result<BTreeSet<IpAddr>, IpvsError> {
        let Some(i) = self.links.index(DUMMY)? else {
            return Ok(BTreeSet::new());
        };
        Ok(self
            .links
            .addresses()?
            .into_iter()
            .filter(|a| a.index == i)
            .map(|a| a.addr)
            .collect())
    }

    /// What [`apply`](Self::apply) would change, one `ipvsadm`/`ip` command per line, read from
    /// the kernel (dumps everything svcc owns; changes nothing).
    pub fn diff(&mut self, want: &Desired) -> Result<Vec<String>, IpvsError> {
        let on_dummy = self.dummy_addresses()?;
        let (current, _) = self.dump_owned(&on_dummy, |_| true)?;
        let mut out = Vec::new();
        let host = |a: &IpAddr| match a {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        for a in on_dummy.difference(&want.bind) {
            out.push(format!("ip addr del {} dev {DUMMY}", host(a)));
        }
        for k in current.keys().filter(|k| !want.services.contains_key(k)) {
            out.push(format!("ipvsadm -D {}", svc_spec(k)));
        }
        for (k, w) in &want.services {
            let empty = BTreeMap::new();
            let (cur_p, cur_d) = match current.get(k) {
                Some((p, d)) => (Some(p), d),
                None => (None, &empty),
            };
            match cur_p {
                None => out.push(format!(
                    "ipvsadm -A {} {}",
                    svc_spec(k),
                    params_spec(&w.params)
                )),
                Some(p) if p != &w.params => out.push(format!(
                    "ipvsadm -E {} {}",
                    svc_spec(k),
                    params_spec(&w.params)
                )),
                Some(_) => {}
            }
            let rs = |d: &DestKey| match d.0 {
                IpAddr::V4(a) => format!("{a}:{}", d.1),
                IpAddr::V6(a) => format!("[{a}]:{}", d.1),
            };
            for (d, wt) in w.dests.iter().filter(|(_, wt)| **wt > 0) {
                match cur_d.get(d) {
                    None => out.push(format!(
                        "ipvsadm -a {} -r {} -m -w {wt}",
                        svc_spec(k),
                        rs(d)
                    )),
                    Some(c) if c != wt => out.push(format!(
                        "ipvsadm -e {} -r {} -m -w {wt}",
                        svc_spec(k),
                        rs(d)
                    )),
                    Some(_) => {}
                }
            }
            for (d, c) in cur_d {
                if w.dests.get(d).is_some_and(|wt| *wt > 0) {
                    continue;
                }
                if graceful(k.proto) {
                    if *c != 0 {
                        out.push(format!(
                            "ipvsadm -e {} -r {} -m -w 0   # terminating: deleted when drained",
                            svc_spec(k),
                            rs(d)
                        ));
                    }
                } else {
                    out.push(format!("ipvsadm -d {} -r {}", svc_spec(k), rs(d)));
                }
            }
        }
        for a in want.bind.difference(&on_dummy) {
            out.push(format!("ip addr add {} dev {DUMMY}", host(a)));
        }
        Ok(out)
    }

    /// Removes svcc's virtual servers (record + those on svcc-ipvs0), the dummy interface and
    /// the glue tables; nothing else. Returns the number of virtual servers deleted.
    pub fn cleanup(&mut self) -> Result<usize, IpvsError> {
        let on_dummy = self.dummy_addresses()?;
        let (mine, _) = self.dump_owned(&on_dummy, |_| false)?;
        // Unreachable first (the interface and its addresses), then the servers, then glue.
        self.links.delete_dummy()?;
        for k in mine.keys() {
            match self.ipvs.del_service(k) {
                Ok(()) => {}
                Err(GenlError::Kernel(e)) if e.errno == libc::ESRCH || e.errno == libc::ENOENT => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.nft.cleanup()?;
        let _ = std::fs::remove_file(self.state_path());
        self.owned = None;
        self.applied = None;
        self.bound.clear();
        self.draining.clear();
        Ok(mine.len())
    }
}

/// `-t 10.0.0.1:80` / `-u [fd00::1]:53` / `--sctp-service …`.
fn svc_spec(k: &SvcKey) -> String {
    let opt = match k.proto {
        6 => "-t",
        17 => "-u",
        _ => "--sctp-service",
    };
    match k.addr {
        IpAddr::V4(a) => format!("{opt} {a}:{}", k.port),
        IpAddr::V6(a) => format!("{opt} [{a}]:{}", k.port),
    }
}

/// `-s rr [-b flags] [-p timeout -M mask]` as ipvsadm takes them.
fn params_spec(p: &SvcParams) -> String {
    use super::genl::{F_PERSISTENT, F_SCHED1, F_SCHED2, F_SCHED3};
    let mut s = format!("-s {}", p.sched);
    let mut b = Vec::new();
    // ipvsadm's names: `sh-fallback`/`sh-port`, `mh-fallback`/`mh-port`, else `flag-N`.
    let hashing = p.sched == "sh" || p.sched == "mh";
    for (f, n, name) in [
        (F_SCHED1, 1, "fallback"),
        (F_SCHED2, 2, "port"),
        (F_SCHED3, 3, ""),
    ] {
        if p.flags & f != 0 {
            b.push(if hashing && !name.is_empty() {
                format!("{}-{name}", p.sched)
            } else {
                format!("flag-{n}")
            });
        }
    }
    if !b.is_empty() {
        s.push_str(&format!(" -b {}", b.join(",")));
    }
    if p.flags & F_PERSISTENT != 0 {
        s.push_str(&format!(" -p {} -M {}", p.timeout, p.netmask));
    }
    s
}

fn parse_key_line(l: &str) -> Option<SvcKey> {
    let mut it = l.split_whitespace();
    Some(SvcKey {
        proto: it.next()?.parse().ok()?,
        addr: it.next()?.parse().ok()?,
        port: it.next()?.parse().ok()?,
    })
}

/// Kernel module of scheduler `s`.
pub fn sched_module(s: &str) -> String {
    format!("ip_vs_{s}")
}

/// The error for an IPVS module that cannot be loaded.
pub fn missing_module_message(module: &str, what: &str) -> String {
    format!("{what}: kernel module {module} is not available; load it with `modprobe {module}`")
}

/// Loads scheduler `s`'s module if it is not loaded (the kernel would also try on
/// NEW_SERVICE; doing it first turns a missing module into an error before any change).
fn ensure_scheduler(s: &str) -> Result<(), IpvsError> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(IpvsError::Refused(format!(
            "ipvs.scheduler {s:?}: not a scheduler name"
        )));
    }
    let m = sched_module(s);
    let loaded = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    if loaded(&m) {
        return Ok(());
    }
    let _ = std::process::Command::new("modprobe")
        .arg(&m)
        .stderr(std::process::Stdio::null())
        .status();
    if loaded(&m) || !std::path::Path::new("/sys/module/ip_vs").exists() {
        // (no /sys/module: cannot tell; NEW_SERVICE will say)
        return Ok(());
    }
    Err(IpvsError::Refused(missing_module_message(
        &m,
        &format!("ipvs.scheduler {s:?}"),
    )))
}

fn sched_hint(e: GenlError, k: &SvcKey, sched: &str, origin: &str) -> IpvsError {
    match &e {
        GenlError::Kernel(ke) if ke.errno == libc::ENOENT => IpvsError::Partial {
            what: missing_module_message(
                &sched_module(sched),
                &format!("virtual server {k} ({origin}) with scheduler {sched:?}"),
            ),
            err: e.to_string(),
        },
        _ => IpvsError::Partial {
            what: format!("virtual server {k} ({origin})"),
            err: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_module_says_which_modprobe() {
        let m = missing_module_message("ip_vs_mh", "ipvs.scheduler \"mh\"");
        assert_eq!(
            m,
            "ipvs.scheduler \"mh\": kernel module ip_vs_mh is not available; load it with `modprobe ip_vs_mh`"
        );
        assert!(GenlError::NoFamily.to_string().contains("`modprobe ip_vs`"));
    }

    #[test]
    fn diff_names_scheduler_flags_as_ipvsadm() {
        use super::super::genl::{F_PERSISTENT, F_SCHED1, F_SCHED2};
        let p = SvcParams {
            sched: "mh".into(),
            flags: F_SCHED1 | F_SCHED2 | F_PERSISTENT,
            timeout: 10800,
            netmask: 32,
        };
        assert_eq!(
            params_spec(&p),
            "-s mh -b mh-fallback,mh-port -p 10800 -M 32"
        );
    }

    #[test]
    fn ownership_record_lines_round_trip() {
        let k = SvcKey {
            addr: "fd00::1".parse().unwrap(),
            proto: 6,
            port: 80,
        };
        assert_eq!(parse_key_line("6 fd00::1 80"), Some(k));
        assert_eq!(parse_key_line("garbage"), None);
    }

    #[test]
    fn bad_scheduler_name_is_refused_before_modprobe() {
        let e = ensure_scheduler("rr; rm").unwrap_err().to_string();
        assert!(e.contains("ipvs.scheduler"), "{e}");
    }
}
