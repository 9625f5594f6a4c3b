//! A compile session for the long-running applier: inputs are kept per file, and only files
//! whose text changed are parsed again. Invalid objects never stop the rest (keep-going is
//! the only mode here): they come back as diagnostics, each located in its file.
//!
//! Two ways to compile:
//! - [`Session::compile`]: lower and build everything (a full model);
//! - [`Session::compile_delta`]: when, since the last compile, only endpoint objects
//!   (EndpointSlices, legacy Endpoints) changed, re-lower just the Services they belong to and
//!   return the [`Delta`] of their service ports' parts. Its cost is that of the changed
//!   Services, not of the cluster. Anything else (a Service, Node or ServiceCIDR changed,
//!   a slice of an unknown Service) needs the full compile: conflicts between Services are
//!   resolved across all of them, in input order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::NodeSettings;
use crate::diag::{Diagnostic, Origin};
use crate::ir::{FamilyIr, Ir, ServicePort};
use crate::lower::{self, Note, SvcKey};
use crate::manifest::{self, Object, Parsed, Skipped, Source};
use crate::nft::build::{self, EndpointIds};
use crate::nft::delta::{Delta, NotIncremental, TableDeltaBuilder};
use crate::nft::model::{Element, Value};
use crate::{names, nft, Output};

/// Where a file's endpoint objects are, by the Service they belong to (object indexes).
#[derive(Default)]
struct EndpointIndex {
    slices: HashMap<SvcKey, Vec<usize>>,
    legacy: HashMap<SvcKey, usize>,
}

struct FileState {
    source: Source,
    parsed: Parsed,
    /// Parse diagnostics, already located.
    diags: Vec<Diagnostic>,
    index: EndpointIndex,
}

/// What changed since the last compile.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dirty {
    Clean,
    /// Only the endpoint objects of these Services.
    Endpoints(BTreeSet<SvcKey>),
    Full,
}

/// The state of the last compile that [`Session::compile_delta`] updates in place.
struct Compiled {
    ir: Ir,
    /// Per family (as `ir.families`).
    ids: Vec<EndpointIds>,
    /// Per family: how many service ports have each endpoint address (`hairpin` elements).
    hairpin: Vec<HashMap<IpAddr, u32>>,
    services: std::collections::HashSet<SvcKey>,
    zone: Option<String>,
    /// Lowering diagnostics, located: those about each Service's endpoints, and the rest.
    endpoint_diags: BTreeMap<SvcKey, Vec<Diagnostic>>,
    other_diags: Vec<Diagnostic>,
    notes: Vec<Note>,
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
    dirty: Dirty,
    compiled: Option<Compiled>,
}

impl Session {
    pub fn new(settings: NodeSettings) -> Session {
        Session {
            settings,
            files: BTreeMap::new(),
            dirty: Dirty::Full,
            compiled: None,
        }
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Adds or replaces a file; returns false (and does nothing) when its text is unchanged.
    pub fn set_file(&mut self, source: Source) -> bool {
        if self
            .files
            .get(&source.name)
            .is_some_and(|f| f.source.text == source.text)
        {
            return false;
        }
        let mut diags = Vec::new();
        let parsed = manifest::parse_sources(std::slice::from_ref(&source), &mut diags);
        manifest::locate(&mut diags, std::slice::from_ref(&source));
        let index = index_endpoints(&parsed);
        let state = FileState {
            source,
            parsed,
            diags,
            index,
        };
        let change = endpoint_change(self.files.get(&state.source.name), Some(&state));
        self.mark(change);
        self.files.insert(state.source.name.clone(), state);
        true
    }

    /// Forgets a file; returns whether it was known.
    pub fn remove_file(&mut self, name: &str) -> bool {
        match self.files.remove(name) {
            Some(old) => {
                let change = endpoint_change(Some(&old), None);
                self.mark(change);
                true
            }
            None => false,
        }
    }

    fn mark(&mut self, change: Option<BTreeSet<SvcKey>>) {
        self.dirty = match (std::mem::replace(&mut self.dirty, Dirty::Full), change) {
            (Dirty::Full, _) | (_, None) => Dirty::Full,
            (Dirty::Clean, Some(s)) => Dirty::Endpoints(s),
            (Dirty::Endpoints(mut a), Some(b)) => {
                a.extend(b);
                Dirty::Endpoints(a)
            }
        };
    }

    /// Names of the files in the session.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Lowers and builds everything the session holds; every diagnostic comes back located.
    pub fn compile(&mut self) -> Output {
        let mut notes = Vec::new();
        let mut lower_diags = Vec::new();
        let (ir, tracking) = lower::lower_tracked(
            self.files.values().flat_map(|f| f.parsed.objects.iter()),
            &self.settings,
            &mut lower_diags,
            &mut notes,
        );
        self.locate(&mut lower_diags);
        // Split the lowering diagnostics: per Service's endpoints, and the rest.
        let mut endpoint_diags: BTreeMap<SvcKey, Vec<Diagnostic>> = BTreeMap::new();
        let mut taken = vec![false; lower_diags.len()];
        for (k, r) in &tracking.endpoint_diags {
            endpoint_diags
                .entry(k.clone())
                .or_default()
                .extend(lower_diags[r.clone()].iter().cloned());
            taken[r.clone()].iter_mut().for_each(|t| *t = true);
        }
        let other_diags: Vec<Diagnostic> = lower_diags
            .into_iter()
            .zip(taken)
            .filter(|(_, t)| !t)
            .map(|(d, _)| d)
            .collect();
        let ruleset = nft::build::build(&ir);
        let compiled = Compiled {
            ids: ir.families.iter().map(build::endpoint_ids).collect(),
            hairpin: ir.families.iter().map(hairpin_counts).collect(),
            ir,
            services: tracking.services,
            zone: tracking.zone,
            endpoint_diags,
            other_diags,
            notes,
        };
        let out = Output {
            ir: compiled.ir.clone(),
            ruleset,
            diagnostics: self.all_diagnostics(&compiled),
            notes: compiled.notes.clone(),
            skipped: self.skipped(),
        };
        self.compiled = Some(compiled);
        self.dirty = Dirty::Clean;
        out
    }

    /// The change since the last compile as a delta, when only endpoints changed (see the
    /// module doc); None when a full [`compile`](Self::compile) is needed.
    pub fn compile_delta(&mut self) -> Option<Incremental> {
        let changed = match (&self.dirty, &self.compiled) {
            (_, None) | (Dirty::Full, _) => return None,
            (Dirty::Clean, Some(_)) => BTreeSet::new(),
            (Dirty::Endpoints(s), Some(_)) => s.clone(),
        };
        match self.relower(&changed) {
            Ok((changed_ports, delta)) => {
                self.dirty = Dirty::Clean;
                Some(Incremental {
                    delta,
                    changed_ports,
                })
            }
            Err(_) => {
                self.dirty = Dirty::Full;
                None
            }
        }
    }

    /// Re-lowers the endpoints of `changed` Services; updates the compiled state only if the
    /// whole change can be expressed as a delta.
    fn relower(&mut self, changed: &BTreeSet<SvcKey>) -> Result<(usize, Delta), NotIncremental> {
        let c = self.compiled.as_ref().expect("compiled");
        let mut new_diags: BTreeMap<SvcKey, Vec<Diagnostic>> = BTreeMap::new();
        // (family index, service port index, new service port)
        let mut replaced: Vec<(usize, usize, ServicePort)> = Vec::new();
        for k in changed {
            if !c.services.contains(k) {
                return Err(NotIncremental(format!(
                    "endpoints of {}/{}, which is not a valid Service",
                    k.0, k.1
                )));
            }
            let mut slices = Vec::new();
            let mut legacy = None;
            for f in self.files.values() {
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
            let mut diags = Vec::new();
            let eps = lower::service_endpoints(&slices, legacy, &mut diags);
            new_diags.insert(k.clone(), diags);
            for (fi, f) in c.ir.families.iter().enumerate() {
                for (i, sp) in service_ports_of(f, k) {
                    let backends = lower::port_backends(
                        &eps,
                        &sp.name.port,
                        sp.protocol,
                        f.family,
                        &sp.policy,
                        sp.frontends.len() > 1,
                        &self.settings.hostname,
                        c.zone.as_deref(),
                    );
                    if backends != sp.backends {
                        let mut n = ServicePort::clone(sp);
                        n.backends = backends;
                        replaced.push((fi, i, n));
                    }
                }
            }
        }
        // The delta, table by table; nothing is changed yet.
        let mut delta = Delta::default();
        let mut hairpin_updates: Vec<(usize, IpAddr, i64)> = Vec::new();
        for (fi, f) in c.ir.families.iter().enumerate() {
            let mut b = TableDeltaBuilder::new(f.family, names::TABLE);
            let mut any = false;
            for (_, i, n) in replaced.iter().filter(|r| r.0 == fi) {
                let old = build::service_port_parts(f, &f.service_ports[*i], &c.ids[fi]);
                let new = build::service_port_parts(f, n, &c.ids[fi]);
                b.service_port(&old, &new)?;
                any = true;
            }
            if !any {
                continue;
            }
            let counts = &c.hairpin[fi];
            let td = b.finish(|set, e: &Element| match set {
                names::HAIRPIN => {
                    Some(hairpin_addr(e).map_or(0, |a| counts.get(&a).copied().unwrap_or(0)))
                }
                // ClusterIPs come from frontends, which do not change here (checked below).
                _ => None,
            })?;
            for (_, i, n) in replaced.iter().filter(|r| r.0 == fi) {
                for a in endpoint_addrs(&f.service_ports[*i]) {
                    hairpin_updates.push((fi, a, -1));
                }
                for a in endpoint_addrs(n) {
                    hairpin_updates.push((fi, a, 1));
                }
            }
            if let Some(td) = td {
                if td.sets.iter().any(|s| s.set == names::CLUSTER_IPS) {
                    return Err(NotIncremental("ClusterIPs changed".into()));
                }
                delta.tables.push(td);
            }
        }
        // Commit to the new state.
        let n = replaced.len();
        let sources: Vec<Source> = {
            let files: BTreeSet<&str> = new_diags
                .values()
                .flatten()
                .map(|d| d.file.as_str())
                .collect();
            self.files
                .values()
                .filter(|f| files.contains(f.source.name.as_str()))
                .map(|f| f.source.clone())
                .collect()
        };
        let c = self.compiled.as_mut().expect("compiled");
        for (fi, i, sp) in replaced {
            c.ir.families[fi].service_ports[i] = Arc::new(sp);
        }
        for (fi, a, d) in hairpin_updates {
            let e = c.hairpin[fi].entry(a).or_default();
            *e = (i64::from(*e) + d).max(0) as u32;
            if *e == 0 {
                c.hairpin[fi].remove(&a);
            }
        }
        for (k, mut d) in new_diags {
            manifest::locate(&mut d, &sources);
            if d.is_empty() {
                c.endpoint_diags.remove(&k);
            } else {
                c.endpoint_diags.insert(k, d);
            }
        }
        Ok((n, delta))
    }

    fn locate(&self, diags: &mut [Diagnostic]) {
        let with_diags: BTreeSet<&str> = diags.iter().map(|d| d.file.as_str()).collect();
        let sources: Vec<Source> = self
            .files
            .values()
            .filter(|f| with_diags.contains(f.source.name.as_str()))
            .map(|f| f.source.clone())
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

    /// Notes of the last compile.
    pub fn notes(&self) -> &[Note] {
        self.compiled.as_ref().map_or(&[], |c| &c.notes)
    }

    /// Every diagnostic: parsing (per file), then lowering.
    fn all_diagnostics(&self, c: &Compiled) -> Vec<Diagnostic> {
        self.files
            .values()
            .flat_map(|f| f.diags.iter())
            .chain(&c.other_diags)
            .chain(c.endpoint_diags.values().flatten())
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

fn index_endpoints(parsed: &Parsed) -> EndpointIndex {
    let mut ix = EndpointIndex::default();
    for (i, (_, obj)) in parsed.objects.iter().enumerate() {
        if let Some(k) = lower::endpoint_owner(obj) {
            match obj {
                Object::EndpointSlice(_) => ix.slices.entry(k).or_default().push(i),
                // The last one wins, as in a full lowering.
                _ => {
                    ix.legacy.insert(k, i);
                }
            }
        }
    }
    ix
}

/// The Services whose endpoint objects differ between two versions of a file, if nothing
/// else differs (None: something else changed).
fn endpoint_change(old: Option<&FileState>, new: Option<&FileState>) -> Option<BTreeSet<SvcKey>> {
    fn objs(f: Option<&FileState>) -> &[(Origin, Object)] {
        f.map_or(&[], |f| f.parsed.objects.as_slice())
    }
    let (a, b) = (objs(old), objs(new));
    // Services, Nodes, ServiceCIDRs and unlabelled slices: exactly the same, in the same places.
    let rest = |v: &[(Origin, Object)]| -> Vec<usize> {
        (0..v.len())
            .filter(|&i| lower::endpoint_owner(&v[i].1).is_none())
            .collect()
    };
    let (ra, rb) = (rest(a), rest(b));
    if ra.len() != rb.len()
        || ra
            .iter()
            .zip(&rb)
            .any(|(&i, &j)| a[i].0 != b[j].0 || !same_object(&a[i].1, &b[j].1))
    {
        return None;
    }
    let empty = EndpointIndex::default();
    let (ia, ib) = (
        old.map_or(&empty, |f| &f.index),
        new.map_or(&empty, |f| &f.index),
    );
    let mut changed = BTreeSet::new();
    let keys = ia
        .slices
        .keys()
        .chain(ib.slices.keys())
        .chain(ia.legacy.keys())
        .chain(ib.legacy.keys());
    for k in keys {
        if changed.contains(k) {
            continue;
        }
        let list = |ix: &EndpointIndex| -> Vec<usize> {
            let mut l = ix.slices.get(k).cloned().unwrap_or_default();
            l.extend(ix.legacy.get(k));
            l.sort_unstable();
            l
        };
        let (la, lb) = (list(ia), list(ib));
        let differs = la.len() != lb.len()
            || la
                .iter()
                .zip(&lb)
                .any(|(&i, &j)| a[i].0 != b[j].0 || !same_object(&a[i].1, &b[j].1));
        if differs {
            changed.insert(k.clone());
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

/// The service ports of one Service (contiguous: sorted by namespace, name, port).
fn service_ports_of<'a>(
    f: &'a FamilyIr,
    k: &SvcKey,
) -> impl Iterator<Item = (usize, &'a ServicePort)> + 'a {
    let start = f
        .service_ports
        .partition_point(|sp| (&sp.name.namespace, &sp.name.name) < (&k.0, &k.1));
    let (ns, name) = (k.0.clone(), k.1.clone());
    f.service_ports[start..]
        .iter()
        .take_while(move |sp| sp.name.namespace == ns && sp.name.name == name)
        .enumerate()
        .map(move |(j, sp)| (start + j, sp.as_ref()))
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

fn hairpin_counts(f: &FamilyIr) -> HashMap<IpAddr, u32> {
    let mut m = HashMap::new();
    for sp in &f.service_ports {
        for a in endpoint_addrs(sp) {
            *m.entry(a).or_default() += 1;
        }
    }
    m
}

fn hairpin_addr(e: &Element) -> Option<IpAddr> {
    match e.key.first() {
        Some(Value::Addr(a)) => Some(*a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            model.apply_delta(&inc.delta).expect("delta fits the model");
            let mut fresh = Session::new(node());
            fresh.set_file(src("services.yaml", SERVICES));
            fresh.set_file(src("endpoints.yaml", &endpoints_file(step)));
            let full = fresh.compile();
            assert_eq!(normal(&model), normal(&full.ruleset), "step {step}");
            assert_eq!(s.ir(), Some(&full.ir), "step {step}");
            assert_eq!(s.diagnostics(), full.diagnostics, "step {step}");
        }
    }

    #[test]
    fn other_changes_need_a_full_compile() {
        let mut s = Session::new(node());
        s.set_file(src("services.yaml", SERVICES));
        s.set_file(src("endpoints.yaml", &endpoints_file(0)));
        s.compile();
        // A Service changed.
        s.set_file(src("services.yaml", &SERVICES.replace("5432", "5433")));
        assert!(s.compile_delta().is_none());
        s.compile();
        // A slice of a Service that does not exist.
        s.set_file(src(
            "more.yaml",
            &slice("nope", "nope-1", &[("10.0.9.9", "n", true)], &[("x", 1)]),
        ));
        assert!(s.compile_delta().is_none());
        s.compile();
        // Removing that file touches only endpoints of an unknown Service: full again.
        s.remove_file("more.yaml");
        assert!(s.compile_delta().is_none());
        s.compile();
        // A new file with only endpoints of a known Service is a delta.
        s.set_file(src(
            "more.yaml",
            &slice("db", "db-2", &[("10.0.5.5", "m", true)], &[("pg", 5432)]),
        ));
        let inc = s.compile_delta().expect("delta");
        assert_eq!(inc.changed_ports, 1);
    }
}
