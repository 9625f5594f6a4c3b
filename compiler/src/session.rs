//! A compile session for the long-running applier: inputs are kept per file, and only files
//! whose text changed are parsed again. Invalid objects never stop the rest (keep-going is
//! the only mode here): they come back as diagnostics, each located in its file.
//!
//! Two ways to compile:
//! - [`Session::compile`]: lower and build everything (a full model);
//! - [`Session::compile_delta`]: when, since the last compile, only Services and their
//!   endpoint objects (EndpointSlices, legacy Endpoints) changed, re-lower just those Services
//!   and return the [`Delta`] of their service ports' parts. Its cost is that of the changed
//!   Services, not of the cluster. It declines (the caller compiles in full) when a Node or
//!   ServiceCIDR changed, or when a changed Service is or would be in a conflict with another
//!   (a duplicate, a nodePort or frontend served twice): which one wins depends on the input
//!   order, so only a full lowering decides.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::NodeSettings;
use crate::diag::{Diagnostic, Origin};
use crate::family::L4Proto;
use crate::ir::{FamilyIr, FrontendKind, Ir, ServicePort, ServicePortName};
use crate::lower::{self, Note, SvcKey};
use crate::manifest::{self, Object, Parsed, Skipped, Source};
use crate::nft::build::{self, EndpointIds};
use crate::nft::delta::{Delta, NotIncremental, TableDeltaBuilder};
use crate::nft::model::{Element, Value};
use crate::{names, Output};

/// Where a file's Services and endpoint objects are, by Service (object indexes).
#[derive(Default)]
struct ServiceIndex {
    services: HashMap<SvcKey, Vec<usize>>,
    slices: HashMap<SvcKey, Vec<usize>>,
    legacy: HashMap<SvcKey, usize>,
}

impl ServiceIndex {
    /// The objects of one Service, in file order.
    fn objects(&self, k: &SvcKey) -> Vec<usize> {
        let mut l = self.services.get(k).cloned().unwrap_or_default();
        l.extend(self.slices.get(k).into_iter().flatten());
        l.extend(self.legacy.get(k));
        l.sort_unstable();
        l
    }
}

struct FileState {
    name: String,
    text: PackedText,
    parsed: Parsed,
    /// Parse diagnostics, already located.
    diags: Vec<Diagnostic>,
    index: ServiceIndex,
}

/// A file's text, LZ4-compressed. The session reads it again only to locate diagnostics (a
/// replay of the YAML, `manifest::locate`) and to tell whether a new version differs. At 10k
/// Services the text is 17.6 MB that `svcc run` would otherwise keep for as long as it runs;
/// compressed, 1.6 MB (docs/PERFORMANCE.md, memory).
#[derive(PartialEq, Eq)]
struct PackedText(Box<[u8]>);

impl PackedText {
    fn new(text: &str) -> PackedText {
        PackedText(lz4_flex::compress_prepend_size(text.as_bytes()).into_boxed_slice())
    }

    fn source(&self, name: &str) -> Source {
        let bytes = lz4_flex::decompress_size_prepended(&self.0)
            .expect("the session's own compressed text decompresses");
        Source {
            name: name.to_string(),
            text: String::from_utf8(bytes).expect("it was a str"),
        }
    }
}

/// What changed since the last compile.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dirty {
    Clean,
    /// Only these Services and their endpoint objects.
    Services(BTreeSet<SvcKey>),
    Full,
}

/// A frontend a Service serves in a family: (address — None for a NodePort —, protocol, port).
type Claim = (Option<IpAddr>, L4Proto, u16);

/// The state of the last compile that [`Session::compile_delta`] updates in place.
struct Compiled {
    ir: Ir,
    /// Per family (as `ir.families`).
    ids: Vec<EndpointIds>,
    /// Per family: how many service ports have each endpoint address (`hairpin` elements).
    hairpin: Vec<HashMap<IpAddr, u32>>,
    /// Per family: how many service ports have each ClusterIP (`cluster-ips` elements).
    cluster_ips: Vec<HashMap<IpAddr, u32>>,
    /// Per family: which Service serves each frontend.
    frontends: Vec<HashMap<Claim, SvcKey>>,
    node_ports: HashMap<(L4Proto, u16), SvcKey>,
    conflicted: HashSet<SvcKey>,
    zone: Option<String>,
    /// Lowering diagnostics and notes, located: those about each Service, and the rest.
    service_diags: BTreeMap<SvcKey, Vec<Diagnostic>>,
    other_diags: Vec<Diagnostic>,
    service_notes: BTreeMap<SvcKey, Vec<Note>>,
    other_notes: Vec<Note>,
}

/// What [`Session::compile_delta`] gives. The state it leads to (IR, diagnostics) is read
/// from the session afterwards ([`Session::ir`], [`Session::diagnostics`]): nothing here is
/// proportional to the size of the cluster.
#[derive(Debug)]
pub struct Incremental {
    pub delta: Delta,
    /// Service ports whose backends changed.
    pub changed_ports: usize,
}

pub struct Session {
    settings: NodeSettings,
    files: BTreeMap<String, FileState>,
    /// The files holding objects of each Service (so that a delta visits those files only:
    /// `svcc run` fed by the API has one source per object, tens of thousands of them).
    holders: HashMap<SvcKey, BTreeSet<String>>,
    dirty: Dirty,
    compiled: Option<Compiled>,
}

impl Session {
    pub fn new(settings: NodeSettings) -> Session {
        Session {
            settings,
            files: BTreeMap::new(),
            holders: HashMap::new(),
            dirty: Dirty::Full,
            compiled: None,
        }
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Replaces the node settings (`svcc run` fed by the API learns the node IPs from the
    /// Node object); returns false when they are unchanged. A change means a full compile.
    pub fn set_settings(&mut self, settings: NodeSettings) -> bool {
        if self.settings == settings {
            return false;
        }
        self.settings = settings;
        self.dirty = Dirty::Full;
        true
    }

    /// Adds or replaces a file; returns false (and does nothing) when its text is unchanged.
    pub fn set_file(&mut self, source: Source) -> bool {
        // LZ4 is deterministic: equal compressed bytes are equal texts.
        let text = PackedText::new(&source.text);
        if self.files.get(&source.name).is_some_and(|f| f.text == text) {
            return false;
        }
        let mut diags = Vec::new();
        let parsed = manifest::parse_sources(std::slice::from_ref(&source), &mut diags);
        manifest::locate(&mut diags, std::slice::from_ref(&source));
        let index = index_services(&parsed);
        let state = FileState {
            name: source.name,
            text,
            parsed,
            diags,
            index,
        };
        let change = object_change(self.files.get(&state.name), Some(&state));
        self.mark(change);
        if let Some(old) = self.files.get(&state.name) {
            unhold(&mut self.holders, &old.index, &state.name);
        }
        for k in service_keys(&state.index) {
            self.holders
                .entry(k.clone())
                .or_default()
                .insert(state.name.clone());
        }
        self.files.insert(state.name.clone(), state);
        true
    }

    /// Forgets a file; returns whether it was known.
    pub fn remove_file(&mut self, name: &str) -> bool {
        match self.files.remove(name) {
            Some(old) => {
                unhold(&mut self.holders, &old.index, name);
                let change = object_change(Some(&old), None);
                self.mark(change);
                true
            }
            None => false,
        }
    }

    fn mark(&mut self, change: Option<BTreeSet<SvcKey>>) {
        self.dirty = match (std::mem::replace(&mut self.dirty, Dirty::Full), change) {
            (Dirty::Full, _) | (_, None) => Dirty::Full,
            (Dirty::Clean, Some(s)) => Dirty::Services(s),
            (Dirty::Services(mut a), Some(b)) => {
                a.extend(b);
                Dirty::Services(a)
            }
        };
    }

    /// Names of the files in the session.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Lowers and builds everything the session holds; every diagnostic comes back located.
    pub fn compile(&mut self) -> Output {
        // The last compile's state is replaced, not consulted: freeing it first lowers the
        // high-water mark of `svcc run`'s periodic full compile (see `examples/heap`).
        self.compiled = None;
        let mut notes = Vec::new();
        let mut lower_diags = Vec::new();
        let (ir, tracking) = lower::lower_tracked(
            self.files.values().flat_map(|f| f.parsed.objects.iter()),
            &self.settings,
            &mut lower_diags,
            &mut notes,
        );
        self.locate(&mut lower_diags);
        // Split the lowering diagnostics and notes: per Service, and the rest.
        let (service_diags, other_diags) = split(lower_diags, &tracking.service_diags);
        let (service_notes, other_notes) = split(notes, &tracking.service_notes);
        let ids: Vec<EndpointIds> = ir.families.iter().map(build::endpoint_ids).collect();
        let ruleset = build::build_with_ids(&ir, &ids);
        let claims = |f: &FamilyIr| -> HashMap<Claim, SvcKey> {
            f.service_ports
                .iter()
                .flat_map(|sp| {
                    let k = (sp.name.namespace.clone(), sp.name.name.clone());
                    sp.frontends
                        .iter()
                        .map(move |fe| ((fe.addr, sp.protocol, fe.port), k.clone()))
                })
                .collect()
        };
        let compiled = Compiled {
            ids,
            hairpin: ir
                .families
                .iter()
                .map(|f| counts(f, endpoint_addrs))
                .collect(),
            cluster_ips: ir.families.iter().map(|f| counts(f, cluster_ips)).collect(),
            frontends: ir.families.iter().map(claims).collect(),
            ir,
            node_ports: tracking.node_ports,
            conflicted: tracking.conflicted,
            zone: tracking.zone,
            service_diags,
            other_diags,
            service_notes,
            other_notes,
        };
        let out = Output {
            ir: compiled.ir.clone(),
            ruleset,
            diagnostics: self.all_diagnostics(&compiled),
            notes: all_notes(&compiled),
            skipped: self.skipped(),
        };
        self.compiled = Some(compiled);
        self.dirty = Dirty::Clean;
        out
    }

    /// The change since the last compile as a delta, when only Services and their endpoint
    /// objects changed and no conflict between Services is involved (see the module doc);
    /// else why a full [`compile`](Self::compile) is needed.
    pub fn compile_delta(&mut self) -> Result<Incremental, NotIncremental> {
        let changed = match (&self.dirty, &self.compiled) {
            (_, None) => return Err(NotIncremental("nothing compiled yet".into())),
            (Dirty::Full, _) => {
                return Err(NotIncremental(
                    "the node settings, a Node, a ServiceCIDR or an unlabelled slice changed"
                        .into(),
                ))
            }
            (Dirty::Clean, Some(_)) => BTreeSet::new(),
            (Dirty::Services(s), Some(_)) => s.clone(),
        };
        match self.relower(&changed) {
            Ok((changed_ports, delta)) => {
                self.dirty = Dirty::Clean;
                Ok(Incremental {
                    delta,
                    changed_ports,
                })
            }
            Err(why) => {
                self.dirty = Dirty::Full;
                Err(why)
            }
        }
    }

    /// Re-lowers the `changed` Services; updates the compiled state only if the whole change
    /// can be expressed as a delta.
    fn relower(&mut self, changed: &BTreeSet<SvcKey>) -> Result<(usize, Delta), NotIncremental> {
        // Taken, not cloned (a changed id table would be copied whole): on any error the
        // caller marks the session for a full compile, which makes them anew.
        let mut ids: Vec<EndpointIds> =
            std::mem::take(&mut self.compiled.as_mut().expect("compiled").ids);
        let c = self.compiled.as_ref().expect("compiled");
        let no = |why: String| Err(NotIncremental(why));
        if self.settings.node_ips.is_empty() {
            // The families then follow the Services' ClusterIPs.
            return no("no node IP: the families depend on the Services".into());
        }
        let families: Vec<&FamilyIr> = c.ir.families.iter().collect();
        let mut new_diags: BTreeMap<SvcKey, Vec<Diagnostic>> = BTreeMap::new();
        let mut new_notes: BTreeMap<SvcKey, Vec<Note>> = BTreeMap::new();
        // Per changed Service: its new service ports per family, its nodePorts.
        let mut lowered: Vec<(SvcKey, lower::LoweredService)> = Vec::new();
        for k in changed {
            if c.conflicted.contains(k) {
                return no(format!("{}/{} was in a conflict", k.0, k.1));
            }
            let mut service = Vec::new();
            let mut slices = Vec::new();
            let mut legacy = None;
            let holders = self.holders.get(k).into_iter().flatten();
            for f in holders.filter_map(|n| self.files.get(n)) {
                for &i in f.index.services.get(k).into_iter().flatten() {
                    if let (o, Object::Service(s)) = &f.parsed.objects[i] {
                        service.push((o, s.as_ref()));
                    }
                }
                for &i in f.index.slices.get(k).into_iter().flatten() {
                    if let (o, Object::EndpointSlice(es)) = &f.parsed.objects[i] {
                        slices.push((o, es.as_ref()));
                    }
                }
                if let Some(&i) = f.index.legacy.get(k) {
                    if let (o, Object::Endpoints(ep)) = &f.parsed.objects[i] {
                        legacy = Some((o, ep.as_ref()));
                    }
                }
            }
            if service.len() > 1 {
                return no(format!("{}/{} is defined more than once", k.0, k.1));
            }
            let (mut diags, mut notes) = (Vec::new(), Vec::new());
            let l = lower::lower_service(
                service.first().copied(),
                k,
                &slices,
                legacy,
                &families,
                &self.settings,
                c.zone.as_deref(),
                &mut diags,
                &mut notes,
            );
            // Claims another Service holds: a conflict only a full lowering can decide.
            for np in &l.node_ports {
                if c.node_ports.get(np).is_some_and(|o| o != k) {
                    return no(format!("nodePort {} of {}/{} is taken", np.1, k.0, k.1));
                }
            }
            for (fi, ports) in l.ports.iter().enumerate() {
                for sp in ports {
                    for fe in &sp.frontends {
                        let claim = (fe.addr, sp.protocol, fe.port);
                        if c.frontends[fi].get(&claim).is_some_and(|o| o != k) {
                            return no(format!("a frontend of {}/{} is taken", k.0, k.1));
                        }
                    }
                }
            }
            new_diags.insert(k.clone(), diags);
            new_notes.insert(k.clone(), notes);
            lowered.push((k.clone(), l));
        }
        // Claims inside the changed set, against each other.
        {
            let mut seen_np = HashSet::new();
            let mut seen_fe = HashSet::new();
            for (_, l) in &lowered {
                for np in &l.node_ports {
                    if !seen_np.insert(*np) {
                        return no("two changed Services share a nodePort".into());
                    }
                }
                for (fi, ports) in l.ports.iter().enumerate() {
                    let mut mine = HashSet::new();
                    for sp in ports {
                        for fe in &sp.frontends {
                            mine.insert((fi, fe.addr, sp.protocol, fe.port));
                        }
                    }
                    for m in mine {
                        if !seen_fe.insert(m) {
                            return no("two changed Services share a frontend".into());
                        }
                    }
                }
            }
        }
        // The delta, table by table; nothing is changed yet.
        let mut delta = Delta::default();
        let mut changed_ports = 0;
        for (fi, f) in c.ir.families.iter().enumerate() {
            let mut b = TableDeltaBuilder::new(f.family, names::TABLE);
            let mut moved = Vec::new();
            let mut old_parts = Vec::new();
            for (k, _) in &lowered {
                for (_, sp) in service_ports_of(f, k) {
                    old_parts.push((sp, build::service_port_parts(f, sp, &ids[fi])));
                }
            }
            // Ids of removed service ports first, then of new ones, as a full build gives
            // them. Where a collision makes that move the id of a service port that did not
            // change (a few in a thousand added service ports at 10k), the ids are made anew as
            // a full build does and the moved service ports join the delta.
            let new_ports: Vec<&Arc<ServicePort>> =
                lowered.iter().flat_map(|(_, l)| &l.ports[fi]).collect();
            let removed: Vec<&ServicePortName> = old_parts
                .iter()
                .map(|(o, _)| &o.name)
                .filter(|o| !new_ports.iter().any(|n| n.name == **o))
                .collect();
            let added: Vec<&ServicePortName> = new_ports
                .iter()
                .map(|n| &n.name)
                .filter(|n| !old_parts.iter().any(|(o, _)| o.name == **n))
                .collect();
            // The hairpin set's declared size follows its number of addresses.
            let hairpin_len = {
                let mut d: HashMap<IpAddr, i64> = HashMap::new();
                for (sp, _) in &old_parts {
                    for a in endpoint_addrs(sp) {
                        *d.entry(a).or_default() -= 1;
                    }
                }
                for n in &new_ports {
                    for a in endpoint_addrs(n) {
                        *d.entry(a).or_default() += 1;
                    }
                }
                let h = &c.hairpin[fi];
                d.into_iter().fold(h.len(), |len, (a, d)| {
                    let was = i64::from(h.get(&a).copied().unwrap_or(0));
                    match (was > 0, was + d > 0) {
                        (false, true) => len + 1,
                        (true, false) => len - 1,
                        _ => len,
                    }
                })
            };
            if build::hairpin_size(hairpin_len) != build::hairpin_size(c.hairpin[fi].len()) {
                return no("the hairpin set's declared size changes".into());
            }
            let before = ids[fi].clone();
            let in_place = removed.iter().all(|n| ids[fi].remove(n))
                && added.iter().all(|n| ids[fi].insert(n));
            if !in_place {
                let fresh = build::endpoint_ids_of(
                    before
                        .names()
                        .filter(|n| !removed.contains(n))
                        .chain(added.iter().copied()),
                );
                if fresh.shards() != before.shards() {
                    return no("the number of endpoint maps changes".into());
                }
                for name in fresh.moved_from(&before) {
                    let k = (name.namespace.clone(), name.name.clone());
                    if lowered.iter().any(|(l, _)| *l == k) {
                        continue;
                    }
                    let (_, sp) = service_ports_of(f, &k)
                        .find(|(_, sp)| sp.name == name)
                        .expect("a service port with an id is in the IR");
                    moved.push((
                        build::service_port_parts(f, sp, &before),
                        build::service_port_parts(f, sp, &fresh),
                    ));
                }
                ids[fi] = fresh;
            }
            let empty = build::ServicePortParts {
                chains: Vec::new(),
                elements: Vec::new(),
                extra_sets: Vec::new(),
            };
            for (o, op) in &old_parts {
                match new_ports.iter().find(|n| n.name == o.name) {
                    Some(n) if ***n == **o => {}
                    Some(n) => {
                        changed_ports += 1;
                        b.service_port(op, &build::service_port_parts(f, n, &ids[fi]))?;
                    }
                    None => {
                        changed_ports += 1;
                        b.service_port(op, &empty)?;
                    }
                }
            }
            for n in &new_ports {
                if !old_parts.iter().any(|(o, _)| o.name == n.name) {
                    changed_ports += 1;
                    b.service_port(&empty, &build::service_port_parts(f, n, &ids[fi]))?;
                }
            }
            for (old, new) in moved {
                changed_ports += 1;
                b.service_port(&old, &new)?;
            }
            let (hairpin, cips) = (&c.hairpin[fi], &c.cluster_ips[fi]);
            let td = b.finish(|set, e: &Element| {
                let count = |m: &HashMap<IpAddr, u32>| {
                    first_addr(e).map_or(0, |a| m.get(&a).copied().unwrap_or(0))
                };
                match set {
                    names::HAIRPIN => Some(count(hairpin)),
                    names::CLUSTER_IPS => Some(count(cips)),
                    _ => None,
                }
            })?;
            if let Some(td) = td {
                delta.tables.push(td);
            }
        }
        // Commit to the new state.
        let sources: Vec<Source> = {
            let files: BTreeSet<&str> = new_diags
                .values()
                .flatten()
                .map(|d| d.file.as_str())
                .collect();
            files
                .iter()
                .filter_map(|n| self.files.get(*n))
                .map(|f| f.text.source(&f.name))
                .collect()
        };
        let c = self.compiled.as_mut().expect("compiled");
        c.ids = ids;
        for (k, l) in lowered {
            for (fi, new) in l.ports.into_iter().enumerate() {
                let f = &mut c.ir.families[fi];
                let range = service_port_range(f, &k);
                for sp in &f.service_ports[range.clone()] {
                    count(&mut c.hairpin[fi], endpoint_addrs(sp), -1);
                    count(&mut c.cluster_ips[fi], cluster_ips(sp), -1);
                    for fe in &sp.frontends {
                        c.frontends[fi].remove(&(fe.addr, sp.protocol, fe.port));
                    }
                }
                for sp in &new {
                    count(&mut c.hairpin[fi], endpoint_addrs(sp), 1);
                    count(&mut c.cluster_ips[fi], cluster_ips(sp), 1);
                    for fe in &sp.frontends {
                        c.frontends[fi].insert((fe.addr, sp.protocol, fe.port), k.clone());
                    }
                }
                f.service_ports.splice(range, new);
            }
            c.node_ports.retain(|_, o| *o != k);
            for np in l.node_ports {
                c.node_ports.insert(np, k.clone());
            }
        }
        for (k, mut d) in new_diags {
            manifest::locate(&mut d, &sources);
            if d.is_empty() {
                c.service_diags.remove(&k);
            } else {
                c.service_diags.insert(k, d);
            }
        }
        for (k, n) in new_notes {
            if n.is_empty() {
                c.service_notes.remove(&k);
            } else {
                c.service_notes.insert(k, n);
            }
        }
        Ok((changed_ports, delta))
    }

    fn locate(&self, diags: &mut [Diagnostic]) {
        let with_diags: BTreeSet<&str> = diags.iter().map(|d| d.file.as_str()).collect();
        let sources: Vec<Source> = self
            .files
            .values()
            .filter(|f| with_diags.contains(f.name.as_str()))
            .map(|f| f.text.source(&f.name))
            .collect();
        manifest::locate(diags, &sources);
    }

    /// The IR as of the last compile or delta (None before the first compile).
    pub fn ir(&self) -> Option<&Ir> {
        self.compiled.as_ref().map(|c| &c.ir)
    }

    /// Every diagnostic as of the last compile or delta, located.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        self.compiled
            .as_ref()
            .map(|c| self.all_diagnostics(c))
            .unwrap_or_default()
    }

    /// Notes as of the last compile or delta.
    pub fn notes(&self) -> Vec<Note> {
        self.compiled.as_ref().map(all_notes).unwrap_or_default()
    }

    /// Every diagnostic: parsing (per file), then lowering.
    fn all_diagnostics(&self, c: &Compiled) -> Vec<Diagnostic> {
        self.files
            .values()
            .flat_map(|f| f.diags.iter())
            .chain(&c.other_diags)
            .chain(c.service_diags.values().flatten())
            .cloned()
            .collect()
    }

    fn skipped(&self) -> Vec<Skipped> {
        self.files
            .values()
            .flat_map(|f| f.parsed.skipped.iter().cloned())
            .collect()
    }
}

/// The Services a file has objects of.
fn service_keys(ix: &ServiceIndex) -> impl Iterator<Item = &SvcKey> {
    ix.services
        .keys()
        .chain(ix.slices.keys())
        .chain(ix.legacy.keys())
}

fn unhold(holders: &mut HashMap<SvcKey, BTreeSet<String>>, ix: &ServiceIndex, name: &str) {
    for k in service_keys(ix) {
        if let Some(h) = holders.get_mut(k) {
            h.remove(name);
            if h.is_empty() {
                holders.remove(k);
            }
        }
    }
}

fn index_services(parsed: &Parsed) -> ServiceIndex {
    let mut ix = ServiceIndex::default();
    for (i, (_, obj)) in parsed.objects.iter().enumerate() {
        match obj {
            Object::Service(s) => ix
                .services
                .entry(lower::service_key(s))
                .or_default()
                .push(i),
            Object::EndpointSlice(_) => {
                if let Some(k) = lower::endpoint_owner(obj) {
                    ix.slices.entry(k).or_default().push(i);
                }
            }
            Object::Endpoints(_) => {
                if let Some(k) = lower::endpoint_owner(obj) {
                    // The last one wins, as in a full lowering.
                    ix.legacy.insert(k, i);
                }
            }
            _ => {}
        }
    }
    ix
}

/// The Services whose objects (the Service, its slices, its legacy Endpoints) differ between
/// two versions of a file, if nothing else differs (None: a Node, a ServiceCIDR or an
/// unlabelled slice changed).
fn object_change(old: Option<&FileState>, new: Option<&FileState>) -> Option<BTreeSet<SvcKey>> {
    fn objs(f: Option<&FileState>) -> &[(Origin, Object)] {
        f.map_or(&[], |f| f.parsed.objects.as_slice())
    }
    let (a, b) = (objs(old), objs(new));
    let owned = |o: &Object| match o {
        Object::Service(_) => true,
        _ => lower::endpoint_owner(o).is_some(),
    };
    let rest = |v: &[(Origin, Object)]| -> Vec<usize> {
        (0..v.len()).filter(|&i| !owned(&v[i].1)).collect()
    };
    let same = |la: &[usize], lb: &[usize]| {
        la.len() == lb.len()
            && la
                .iter()
                .zip(lb)
                .all(|(&i, &j)| a[i].0 == b[j].0 && same_object(&a[i].1, &b[j].1))
    };
    if !same(&rest(a), &rest(b)) {
        return None;
    }
    let empty = ServiceIndex::default();
    let (ia, ib) = (
        old.map_or(&empty, |f| &f.index),
        new.map_or(&empty, |f| &f.index),
    );
    let mut changed = BTreeSet::new();
    for ix in [ia, ib] {
        let keys = ix
            .services
            .keys()
            .chain(ix.slices.keys())
            .chain(ix.legacy.keys());
        for k in keys {
            if !changed.contains(k) && !same(&ia.objects(k), &ib.objects(k)) {
                changed.insert(k.clone());
            }
        }
    }
    Some(changed)
}

fn same_object(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Service(x), Object::Service(y)) => x == y,
        (Object::EndpointSlice(x), Object::EndpointSlice(y)) => x == y,
        (Object::Endpoints(x), Object::Endpoints(y)) => x == y,
        (Object::ServiceCidr(x), Object::ServiceCidr(y)) => x == y,
        (Object::Node(x), Object::Node(y)) => x == y,
        _ => false,
    }
}

/// Where the service ports of one Service are (contiguous: sorted by namespace, name, port);
/// empty, at its sorted place, if it has none.
fn service_port_range(f: &FamilyIr, k: &SvcKey) -> std::ops::Range<usize> {
    fn key(sp: &Arc<ServicePort>) -> (&str, &str) {
        (sp.name.namespace.as_str(), sp.name.name.as_str())
    }
    let k = (k.0.as_str(), k.1.as_str());
    let start = f.service_ports.partition_point(|sp| key(sp) < k);
    let end = start + f.service_ports[start..].partition_point(|sp| key(sp) == k);
    start..end
}

/// The service ports of one Service.
fn service_ports_of<'a>(
    f: &'a FamilyIr,
    k: &SvcKey,
) -> impl Iterator<Item = (usize, &'a ServicePort)> + 'a {
    let r = service_port_range(f, k);
    f.service_ports[r.clone()]
        .iter()
        .enumerate()
        .map(move |(j, sp)| (r.start + j, sp.as_ref()))
}

/// The endpoint addresses a service port puts in the `hairpin` set (as the nft build does),
/// each once.
fn endpoint_addrs(sp: &ServicePort) -> BTreeSet<IpAddr> {
    sp.backends
        .cluster
        .iter()
        .chain(&sp.backends.local)
        .map(|b| b.addr)
        .collect()
}

/// The ClusterIPs a service port puts in the `cluster-ips` set, each once.
fn cluster_ips(sp: &ServicePort) -> BTreeSet<IpAddr> {
    sp.frontends
        .iter()
        .filter(|fe| fe.kind == FrontendKind::ClusterIp)
        .filter_map(|fe| fe.addr)
        .collect()
}

fn count(m: &mut HashMap<IpAddr, u32>, addrs: BTreeSet<IpAddr>, d: i64) {
    for a in addrs {
        let e = m.entry(a).or_default();
        *e = (i64::from(*e) + d).max(0) as u32;
        if *e == 0 {
            m.remove(&a);
        }
    }
}

/// How many service ports of a family have each address (`endpoint_addrs`, `cluster_ips`).
fn counts(f: &FamilyIr, addrs: fn(&ServicePort) -> BTreeSet<IpAddr>) -> HashMap<IpAddr, u32> {
    let mut m = HashMap::new();
    for sp in &f.service_ports {
        count(&mut m, addrs(sp), 1);
    }
    m
}

/// The address an element of `hairpin` or `cluster-ips` starts with.
fn first_addr(e: &Element) -> Option<IpAddr> {
    match e.key.first() {
        Some(Value::Addr(a)) => Some(*a),
        _ => None,
    }
}

/// Items split by the ranges that belong to each Service; the rest in order.
fn split<T: Clone>(
    items: Vec<T>,
    ranges: &[(SvcKey, std::ops::Range<usize>)],
) -> (BTreeMap<SvcKey, Vec<T>>, Vec<T>) {
    let mut per: BTreeMap<SvcKey, Vec<T>> = BTreeMap::new();
    let mut taken = vec![false; items.len()];
    for (k, r) in ranges.iter().filter(|(_, r)| !r.is_empty()) {
        per.entry(k.clone())
            .or_default()
            .extend(items[r.clone()].iter().cloned());
        taken[r.clone()].iter_mut().for_each(|t| *t = true);
    }
    let rest = items
        .into_iter()
        .zip(taken)
        .filter(|(_, t)| !t)
        .map(|(x, _)| x)
        .collect();
    (per, rest)
}

fn all_notes(c: &Compiled) -> Vec<Note> {
    c.other_notes
        .iter()
        .chain(c.service_notes.values().flatten())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::EndpointSet;
    use crate::nft::model::{Ruleset, Table};

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: d}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n";
    const BAD: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: d}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n";

    fn node() -> NodeSettings {
        NodeSettings {
            hostname: "n".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            cluster_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            ..Default::default()
        }
    }

    fn src(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn bad_files_are_reported_and_the_rest_compiles() {
        let mut s = Session::new(NodeSettings {
            hostname: "n".into(),
            ..Default::default()
        });
        assert!(s.set_file(src("a.yaml", SVC)));
        assert!(
            !s.set_file(src("a.yaml", SVC)),
            "unchanged text is not re-read"
        );
        s.set_file(src("b.yaml", BAD));
        let out = s.compile();
        assert_eq!(out.ir.families[0].service_ports.len(), 1);
        let e = out
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .expect("an error for b.yaml");
        assert_eq!((e.file.as_str(), e.line), ("b.yaml", Some(5)));
        s.remove_file("a.yaml");
        assert_eq!(s.compile().ir.families[0].service_ports.len(), 0);
    }

    /// Services: `web` (two ports, NodePort, externalTrafficPolicy Local, a LoadBalancer IP),
    /// `api` (ClientIP affinity) and `db` (sharing an endpoint address with `web`).
    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: https, port: 443, targetPort: 8443, nodePort: 30443}
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.10}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  ports: [{name: pg, port: 5432}]
"#;

    /// A slice for `svc` with endpoints (address, node, ready) on `ports`.
    fn slice(svc: &str, name: &str, eps: &[(&str, &str, bool)], ports: &[(&str, u16)]) -> String {
        let mut s = format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nendpoints:\n"
        );
        for (a, n, r) in eps {
            s += &format!("- addresses: [{a}]\n  nodeName: {n}\n  conditions: {{ready: {r}}}\n");
        }
        if eps.is_empty() {
            s += "[]\n";
            s = s.replace("endpoints:\n[]", "endpoints: []");
        }
        s += "ports:\n";
        for (pn, p) in ports {
            s += &format!("- {{name: {pn}, port: {p}, protocol: TCP}}\n");
        }
        s
    }

    fn endpoints_file(step: usize) -> String {
        let web = match step {
            0 => vec![("10.0.1.1", "n", true), ("10.0.2.1", "m", true)],
            1 => vec![("10.0.1.2", "n", true), ("10.0.2.1", "m", true)],
            2 => vec![("10.0.1.2", "n", false), ("10.0.2.1", "m", true)],
            3 => vec![("10.0.2.1", "m", true)],
            4 => vec![],
            _ => vec![
                ("10.0.1.1", "n", true),
                ("10.0.1.3", "n", true),
                ("10.0.2.1", "m", true),
            ],
        };
        let api = match step % 3 {
            0 => vec![("10.0.3.1", "m", true)],
            1 => vec![("10.0.3.1", "m", true), ("10.0.3.2", "m", true)],
            _ => vec![("10.0.3.2", "m", true)],
        };
        let db = match step % 2 {
            0 => vec![("10.0.2.1", "m", true)],
            _ => vec![("10.0.2.1", "m", false), ("10.0.4.1", "m", true)],
        };
        slice("web", "web-1", &web, &[("http", 8080), ("https", 8443)])
            + &slice("api", "api-1", &api, &[("http", 9000)])
            + &slice("db", "db-1", &db, &[("pg", 5432)])
    }

    /// A table as sets of elements and chains, whatever their order.
    fn normal(r: &Ruleset) -> Vec<(String, Vec<String>, Vec<String>)> {
        r.tables
            .iter()
            .map(|t: &Table| {
                let mut sets: Vec<String> = t
                    .sets
                    .iter()
                    .flat_map(|s| s.elements.iter().map(move |e| format!("{} {e:?}", s.name)))
                    .collect();
                sets.sort();
                let mut chains: Vec<String> = t.chains.iter().map(|c| format!("{c:?}")).collect();
                chains.sort();
                (t.name.clone(), sets, chains)
            })
            .collect()
    }

    /// Applies a delta to the model and checks that `Delta::stats_change` (what `svcc run`'s
    /// object-count metrics follow) moves the counts as the model moved.
    fn apply_counted(model: &mut Ruleset, delta: &Delta) {
        let before = model.stats();
        let (add, del) = delta.stats_change();
        model.apply_delta(delta).expect("delta fits the model");
        let after = model.stats();
        assert_eq!(
            after.chains,
            before.chains + add.chains - del.chains,
            "chains"
        );
        assert_eq!(after.rules, before.rules + add.rules - del.rules, "rules");
        assert_eq!(
            after.elements,
            before.elements + add.elements - del.elements,
            "elements"
        );
    }

    #[test]
    fn endpoint_changes_are_deltas_that_match_a_full_compile() {
        let mut s = Session::new(node());
        s.set_file(src("services.yaml", SERVICES));
        s.set_file(src("endpoints.yaml", &endpoints_file(0)));
        let mut model = s.compile().ruleset;
        assert!(s.compile_delta().expect("clean").delta.is_empty());
        for step in 1..=6 {
            assert!(s.set_file(src("endpoints.yaml", &endpoints_file(step))));
            let inc = s.compile_delta().expect("endpoint-only change");
            assert!(!inc.delta.is_empty(), "step {step}");
            apply_counted(&mut model, &inc.delta);
            let mut fresh = Session::new(node());
            fresh.set_file(src("services.yaml", SERVICES));
            fresh.set_file(src("endpoints.yaml", &endpoints_file(step)));
            let full = fresh.compile();
            assert_eq!(normal(&model), normal(&full.ruleset), "step {step}");
            assert_eq!(s.ir(), Some(&full.ir), "step {step}");
            assert_eq!(s.diagnostics(), full.diagnostics, "step {step}");
        }
    }

    /// Applies file changes one by one; each must (or must not) be a delta, and the model
    /// after it must equal a fresh full compile of the same files.
    fn steps(steps: &[(&str, Option<&str>, bool)]) {
        let mut s = Session::new(node());
        s.set_file(src("services.yaml", SERVICES));
        s.set_file(src("endpoints.yaml", &endpoints_file(0)));
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        files.insert("services.yaml".into(), SERVICES.into());
        files.insert("endpoints.yaml".into(), endpoints_file(0));
        let mut model = s.compile().ruleset;
        for (i, (name, text, want_delta)) in steps.iter().enumerate() {
            match text {
                Some(t) => {
                    s.set_file(src(name, t));
                    files.insert(name.to_string(), t.to_string());
                }
                None => {
                    s.remove_file(name);
                    files.remove(*name);
                }
            }
            match s.compile_delta() {
                Ok(inc) => {
                    assert!(want_delta, "step {i}: a delta, expected a full compile");
                    apply_counted(&mut model, &inc.delta);
                }
                Err(why) => {
                    assert!(!want_delta, "step {i}: expected a delta: {why}");
                    model = s.compile().ruleset;
                }
            }
            let mut fresh = Session::new(node());
            for (n, t) in &files {
                fresh.set_file(src(n, t));
            }
            let full = fresh.compile();
            assert_eq!(normal(&model), normal(&full.ruleset), "step {i}");
            assert_eq!(s.ir(), Some(&full.ir), "step {i}");
            let sorted = |mut v: Vec<String>| {
                v.sort();
                v
            };
            assert_eq!(
                sorted(s.diagnostics().iter().map(|d| d.to_string()).collect()),
                sorted(full.diagnostics.iter().map(|d| d.to_string()).collect()),
                "step {i}"
            );
            assert_eq!(sorted(s.notes()), sorted(full.notes), "step {i}");
        }
    }

    const EXTRA: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: cache, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.13
  ports: [{name: redis, port: 6379, nodePort: 30379}]
"#;

    #[test]
    fn service_changes_are_deltas_unless_they_conflict() {
        let db_slice = slice("db", "db-2", &[("10.0.5.5", "m", true)], &[("pg", 5432)]);
        let bad = SERVICES.replace("clusterIP: 10.96.0.12", "clusterIP: 10.96.0.300");
        let clash = EXTRA.replace("30379", "30080");
        let headless = EXTRA.replace("type: NodePort\n  clusterIP: 10.96.0.13", "clusterIP: None");
        steps(&[
            // A Service's port changes; then another file adds a Service.
            ("services.yaml", Some(&SERVICES.replace("5432", "5433")), true),
            ("more.yaml", Some(EXTRA), true),
            // Its slice arrives in yet another file; the Service goes away (the slice is
            // then an orphan, with a warning); it comes back.
            ("more-eps.yaml", Some(&slice("cache", "cache-1", &[("10.0.6.6", "n", true)], &[("redis", 6379)])), true),
            ("more.yaml", None, true),
            ("more.yaml", Some(EXTRA), true),
            // Headless: no service ports, a note.
            ("more.yaml", Some(&headless), true),
            ("more.yaml", Some(EXTRA), true),
            // An invalid Service (an error), then fixed.
            ("services.yaml", Some(&bad), true),
            ("services.yaml", Some(SERVICES), true),
            // A nodePort another Service has: only a full compile decides who wins; and
            // the loser stays in a conflict until a full compile.
            ("more.yaml", Some(&clash), false),
            ("more.yaml", Some(EXTRA), false),
            ("more.yaml", Some(EXTRA.replace("6379", "6380").as_str()), true),
            // A new file with only endpoints of a known Service.
            ("db.yaml", Some(&db_slice), true),
            // A Node changes: full.
            ("node.yaml", Some("apiVersion: v1\nkind: Node\nmetadata:\n  name: n\n  labels: {topology.kubernetes.io/zone: z1}\n"), false),
        ]);
    }

    #[test]
    fn a_delta_never_changes_the_hairpin_sets_size() {
        // 43,691 endpoint addresses fit the smallest declared size (2^16, with half as much
        // again as headroom); one more needs the next: only a full compile declares it.
        let limit = 43_691;
        assert_eq!(build::hairpin_size(limit), 1 << 16);
        assert_eq!(build::hairpin_size(limit + 1), 1 << 17);
        // (slices hold at most 1,000 endpoints each)
        let big = |n: usize| {
            let mut s = String::from("apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: shop}\nspec:\n  clusterIP: 10.96.9.9\n  ports: [{name: p, port: 80}]\n");
            for i in 0..n {
                if i % 1000 == 0 {
                    s += &format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-{i}\n  namespace: shop\n  labels: {{kubernetes.io/service-name: big}}\naddressType: IPv4\nports: [{{name: p, port: 80}}]\nendpoints:\n");
                }
                s += &format!("- addresses: [10.100.{}.{}]\n", i / 256, i % 256);
            }
            s
        };
        // The addresses the other Services put in the set (steps' starting files).
        let mut base = Session::new(node());
        base.set_file(src("services.yaml", SERVICES));
        base.set_file(src("endpoints.yaml", &endpoints_file(0)));
        let hairpin = |out: &Output| {
            let set = out.ruleset.tables[0].sets.iter();
            let set = set.clone().find(|s| s.name == names::HAIRPIN).unwrap();
            (set.elements.len(), set.size)
        };
        let (others, size) = hairpin(&base.compile());
        assert_eq!(size, Some(1 << 16));
        let at = limit - others;
        steps(&[
            ("big.yaml", Some(&big(at)), true),
            ("big.yaml", Some(&big(at + 1)), false),
            ("big.yaml", Some(&big(at + 2)), true),
            ("big.yaml", Some(&big(at)), false),
        ]);
        let mut s = Session::new(node());
        s.set_file(src("big.yaml", &big(at + 1)));
        s.set_file(src("services.yaml", SERVICES));
        s.set_file(src("endpoints.yaml", &endpoints_file(0)));
        assert_eq!(hairpin(&s.compile()), (limit + 1, Some(1 << 17)));
    }

    #[test]
    fn endpoint_id_collisions_stay_deltas() {
        // Two Services whose cluster ids seed to the same id (one endpoint map here): the
        // first sorted takes it in a full build, and the other probes past it. Adding the
        // first moves the other's id; removing it moves that id back: both are deltas that
        // carry the moved service port too.
        let spn = |n: &str| ServicePortName {
            namespace: "shop".into(),
            name: n.into(),
            port: "p".into(),
            protocol: L4Proto::Tcp,
        };
        let mask = build::ENDPOINT_SLOTS - 1;
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (first, second) = (0..)
            .find_map(|i| {
                let n = format!("s{i}");
                let seed = names::endpoint_id_seed(&spn(&n), EndpointSet::Cluster) & mask;
                match seen.insert(seed, n.clone()) {
                    Some(o) => Some(if o < n { (o, n) } else { (n, o) }),
                    None => None,
                }
            })
            .expect("a collision");
        let service = |n: &str, ip: u8| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: shop}}\nspec:\n  clusterIP: 10.96.1.{ip}\n  ports: [{{name: p, port: 80}}]\n{}",
                slice(n, &format!("{n}-1"), &[("10.0.9.1", "n", true)], &[("p", 80)])
            )
        };
        let (a, b) = (service(&first, 1), service(&second, 2));
        steps(&[
            ("second.yaml", Some(&b), true),
            ("first.yaml", Some(&a), true),
            ("first.yaml", None, true),
            // Both at once, in one file, then the first alone again.
            ("second.yaml", None, true),
            ("both.yaml", Some(&format!("{a}---\n{b}")), true),
            ("both.yaml", Some(&b), true),
        ]);
        // The second's id really moved (else this test proves nothing).
        let mut s = Session::new(node());
        s.set_file(src("both.yaml", &format!("{a}---\n{b}")));
        s.compile();
        let ids = &s.compiled.as_ref().unwrap().ids[0];
        assert_eq!(
            ids.get(&spn(&second), EndpointSet::Cluster),
            Some((ids.get(&spn(&first), EndpointSet::Cluster).unwrap() + 1) & mask)
        );
    }
}
