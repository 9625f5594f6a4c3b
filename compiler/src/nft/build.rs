//! The optimizer: IR → nft object model.
//!
//! Layout (see docs/ARCHITECTURE.md, "The nftables layout"): a fixed list of named sets and
//! maps plus the endpoint maps (one per 128 service ports at most) and the affinity maps (one
//! per 4 endpoint maps) — never one per service or endpoint — so that loading stays linear in
//! the number of services and per-packet dispatch is one verdict-map lookup whatever their
//! number. Per service port there are at most three
//! chains (cluster, local, external); a cluster or local chain is one rule that DNATs to an
//! element `ID . random slot` of an endpoint map, so an endpoint replaced by another changes
//! map elements only (ClientIP affinity aside: per-endpoint rules). Hairpin and masquerade
//! decisions each live in one shared set, consulted from one place.
//!
//! [`build`] is [`skeleton`] plus the [`service_port_parts`] of every service port (what an
//! incremental writer can use piece by piece), with the ids of [`endpoint_ids`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::model::*;
use crate::family::{Family, L4Proto};
use crate::ir::*;
use crate::names::{self, EndpointSet};

/// Dynamic affinity entries per table (kube-proxy's per-endpoint sets default to 65535 each).
pub const AFFINITY_SIZE: u32 = 1 << 20;

/// The declared size of the `hairpin` set for `addrs` distinct endpoint addresses: half as
/// much again, rounded up to a power of two, at least 2^16 (the kernel's own hint).
///
/// Why declare one: without a size the kernel backs the set with a resizable rhashtable
/// sized for 2^16 elements, and a load of more (one per endpoint address: 300k at 30k
/// services) inserts on its slow path while it grows (`rhashtable_insert_slow`, ≈ 5 % of
/// that load). With a size it picks a hash table of fixed size. The size is a hard maximum
/// in the kernel, so a session declines a delta that would change it (a full compile then
/// declares the new one; the applier replaces the table).
pub fn hairpin_size(addrs: usize) -> u32 {
    let want = (addrs + addrs / 2).max(1 << 16).next_power_of_two();
    u32::try_from(want).unwrap_or(u32::MAX)
}

pub fn build(ir: &Ir) -> Ruleset {
    let ids: Vec<EndpointIds> = ir.families.iter().map(endpoint_ids).collect();
    build_with_ids(ir, &ids)
}

/// [`build`] with the endpoint-map ids of each family already made ([`endpoint_ids`]).
pub fn build_with_ids(ir: &Ir, ids: &[EndpointIds]) -> Ruleset {
    Ruleset {
        tables: ir
            .families
            .iter()
            .zip(ids)
            .map(|(f, ids)| build_table(f, ids))
            .collect(),
    }
}

fn comment(s: impl Into<String>) -> Option<String> {
    let mut s: String = s.into();
    if s.len() > super::render::MAX_COMMENT {
        let mut cut = super::render::MAX_COMMENT - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    Some(s)
}

/// An element's comment: built once per service port and shared by its elements.
type Comment = Option<Arc<str>>;

fn elem_comment(s: impl Into<String>) -> Comment {
    comment(s).map(Arc::from)
}

fn set(name: &str, key: Vec<DataType>, data: Option<SetData>, c: &str) -> Set {
    Set {
        name: name.into(),
        key,
        data,
        flags: SetFlags::default(),
        timeout: None,
        size: None,
        comment: comment(c),
        elements: Vec::new(),
    }
}

fn chain(name: &str, base: Option<(ChainType, Hook, i32)>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: base.map(|(kind, hook, priority)| BaseChain {
            kind,
            hook,
            priority,
        }),
        comment: None,
        rules,
    }
}

fn jump(c: &str) -> Verdict {
    Verdict::Jump(c.into())
}
fn goto(c: &str) -> Verdict {
    Verdict::Goto(c.into())
}

const DADDR_PROTO_PORT: [Field; 3] = [Field::Daddr, Field::L4Proto, Field::Dport];
const PROTO_PORT: [Field; 2] = [Field::L4Proto, Field::Dport];
const AFFINITY_KEY: [Field; 4] = [Field::Saddr, Field::L4Proto, Field::Daddr, Field::Dport];

/// Endpoint-map ids of the service ports of one family (stable: a function of the names).
///
/// Every service port has two ids, one for its cluster endpoints and one for its local
/// endpoints, whether or not the chain is used, so that they never change when only
/// endpoints change. Ids live in `0 .. shards x 2^16`: an id is [`names::endpoint_id_seed`]
/// (FNV-1a of the name) modulo that, or on a collision the next free value (linear probing,
/// service ports in sorted order, cluster before local): deterministic, and an unrelated
/// service changes an existing id only if it collides with it (about n / (shards x 2^16), a
/// two dozen in 10,000 with 128 service ports per map) or changes the number of maps (a
/// session then puts the moved service ports in its delta: `Session::compile_delta`).
///
/// The elements of id `i` live in endpoint map `i % shards` ([`EndpointIds::map`]), at the
/// keys `base(i) ..= base(i) + 2^16 - 1` with `base(i) = (i / shards) x 2^16`
/// ([`EndpointIds::base`]); the number of shards is [`endpoint_shards`] of the number of
/// service ports.
#[derive(Debug, Clone, Default)]
pub struct EndpointIds {
    /// Shared until changed: cloning is O(1), the first `insert`/`remove` of a clone copies.
    t: Arc<IdTable>,
}

#[derive(Debug, Clone, Default)]
struct IdTable {
    ids: HashMap<Arc<ServicePortName>, [u32; 2]>,
    /// Who holds each id.
    owner: HashMap<u32, Arc<ServicePortName>>,
    /// The ids that are not their seed (a collision moved them): id -> seed. Rare.
    moved: HashMap<u32, u32>,
    shards: usize,
}

impl IdTable {
    /// Ids live in `0 .. shards x ENDPOINT_SLOTS` (a power of two at most 2^32): this mask.
    fn mask(&self) -> u32 {
        (((self.shards.max(1) as u64) * u64::from(ENDPOINT_SLOTS)) - 1) as u32
    }
    fn seed(&self, spn: &ServicePortName, which: EndpointSet) -> u32 {
        names::endpoint_id_seed(spn, which) & self.mask()
    }
    fn next(&self, id: u32) -> u32 {
        id.wrapping_add(1) & self.mask()
    }
}

impl EndpointIds {
    /// The id of `spn`'s cluster or local endpoints, if `spn` is a service port of the family.
    pub fn get(&self, spn: &ServicePortName, which: EndpointSet) -> Option<u32> {
        self.t.ids.get(spn).map(|ids| ids[which as usize])
    }
    /// How many endpoint maps the family has (at least 1).
    pub fn shards(&self) -> usize {
        self.t.shards.max(1)
    }
    /// The endpoint map holding the elements of `id`.
    pub fn map(&self, id: u32) -> &'static str {
        let k = self.shards();
        names::endpoints_map(id as usize % k, k)
    }
    /// The first of the [`ENDPOINT_SLOTS`] keys of `id` in its endpoint map: ids of one map
    /// differ in `id / shards`, so their key ranges do not overlap.
    pub fn base(&self, id: u32) -> u32 {
        ((u64::from(id) / self.shards() as u64) * u64::from(ENDPOINT_SLOTS)) as u32
    }
    /// Every endpoint map, in declaration order.
    pub fn maps(&self) -> impl Iterator<Item = &'static str> + '_ {
        let k = self.shards();
        (0..k).map(move |i| names::endpoints_map(i, k))
    }
    /// How many affinity maps the family has: one per [`AFFINITY_SHARD_GROUP`] endpoint maps.
    pub fn affinity_shards(&self) -> usize {
        (self.shards() / AFFINITY_SHARD_GROUP).max(1)
    }
    /// The affinity map of the service port whose cluster id is `id` (a group of endpoint-map
    /// shards: ids of one endpoint map share their affinity map).
    pub fn affinity_map(&self, id: u32) -> &'static str {
        let k = self.affinity_shards();
        names::affinity_map(id as usize % k, k)
    }
    /// Every affinity map, in declaration order.
    pub fn affinity_maps(&self) -> impl Iterator<Item = &'static str> + '_ {
        let k = self.affinity_shards();
        (0..k).map(move |i| names::affinity_map(i, k))
    }
    /// The service ports that have ids, in no order.
    pub fn names(&self) -> impl Iterator<Item = &ServicePortName> {
        self.t.ids.keys().map(|n| &**n)
    }
    /// The service ports of both `self` and `old` whose ids differ between them.
    pub fn moved_from(&self, old: &EndpointIds) -> Vec<ServicePortName> {
        self.t
            .ids
            .iter()
            .filter(|(n, pair)| old.t.ids.get(*n).is_some_and(|o| o != *pair))
            .map(|(n, _)| ServicePortName::clone(n))
            .collect()
    }
    /// The number of service ports.
    pub fn len(&self) -> usize {
        self.t.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.t.ids.is_empty()
    }

    /// Adds the ids of a new service port, if that leaves the ids exactly as [`endpoint_ids`]
    /// of the family with it would be: its ids are the ones a full build gives it, no other
    /// id moves, the number of endpoint maps stays. Else returns false and changes nothing
    /// (the caller rebuilds the table). True for a service port already there.
    pub fn insert(&mut self, spn: &ServicePortName) -> bool {
        let t = &self.t;
        if t.ids.contains_key(spn) {
            return true;
        }
        if endpoint_shards(t.ids.len() + 1) != self.shards() {
            return false;
        }
        // In a full build, `spn` probes past the ids of the service ports sorted before it
        // (and its own cluster id); reaching an id held by one sorted after it means that one
        // would move.
        let mut pair = [0u32; 2];
        for which in [EndpointSet::Cluster, EndpointSet::Local] {
            let seed = t.seed(spn, which);
            let mut id = seed;
            loop {
                if which == EndpointSet::Local && id == pair[0] {
                    id = t.next(id);
                    continue;
                }
                match t.owner.get(&id) {
                    None => break,
                    Some(o) if **o < *spn => id = t.next(id),
                    Some(_) => return false,
                }
            }
            pair[which as usize] = id;
        }
        let t = Arc::make_mut(&mut self.t);
        let name = Arc::new(spn.clone());
        for which in [EndpointSet::Cluster, EndpointSet::Local] {
            let id = pair[which as usize];
            t.owner.insert(id, name.clone());
            let seed = t.seed(spn, which);
            if id != seed {
                t.moved.insert(id, seed);
            }
        }
        t.ids.insert(name, pair);
        true
    }

    /// Removes the ids of a service port, if that leaves the ids exactly as [`endpoint_ids`]
    /// of the family without it would be: no id that a collision moved past one of its ids
    /// would move back, the number of endpoint maps stays. Else returns false and changes
    /// nothing. True for a service port that is not there.
    pub fn remove(&mut self, spn: &ServicePortName) -> bool {
        let t = &self.t;
        let Some(pair) = t.ids.get(spn).copied() else {
            return true;
        };
        if endpoint_shards(t.ids.len() - 1) != self.shards() {
            return false;
        }
        // An id moved from its seed s to x passed over s..x: freeing one of those would let
        // a full build give it a smaller one.
        let m = t.mask();
        let on_path =
            |seed: u32, id: u32, f: u32| f.wrapping_sub(seed) & m < id.wrapping_sub(seed) & m;
        if t.moved
            .iter()
            .filter(|(id, _)| !pair.contains(id))
            .any(|(&id, &seed)| pair.iter().any(|&f| on_path(seed, id, f)))
        {
            return false;
        }
        let t = Arc::make_mut(&mut self.t);
        for id in pair {
            t.owner.remove(&id);
            t.moved.remove(&id);
        }
        t.ids.remove(spn);
        true
    }
}

/// Keys per endpoint-map id: a service chain draws `numgen random mod ENDPOINT_SLOTS offset
/// base`, and endpoint `i` of `n` owns the keys [`slot_range`]`(i, n)` above `base`. Each
/// endpoint is picked with probability within 1/2^16 of 1/n (relative error below n/2^16:
/// 0.015 % at 10 endpoints, 1.5 % at 1,000).
pub const ENDPOINT_SLOTS: u32 = 1 << 16;

/// The keys (first, last, from 0) of endpoint `i` of `n`: floor(i·S/n) ..= floor((i+1)·S/n) - 1
/// with S = [`ENDPOINT_SLOTS`]; contiguous, covering 0 ..= S - 1. `n` at most S.
pub fn slot_range(i: usize, n: usize) -> (u32, u32) {
    let s = u64::from(ENDPOINT_SLOTS);
    let at = |i: usize| (i as u64 * s / n as u64) as u32;
    (at(i), at(i + 1) - 1)
}

/// Service ports per endpoint map, at most (below the cap of
/// [`names::MAX_ENDPOINT_SHARDS`] maps).
pub const SERVICE_PORTS_PER_ENDPOINT_MAP: usize = 128;

/// Endpoint maps per affinity map (so ≤ 4 × 128 service ports bind each affinity map).
///
/// The rule `dnat … map @affinity…` that starts every ClientIP service chain binds its map, and
/// the kernel, at each such binding, walks the list of the map's bindings so far, the
/// `update @affinity…` of every endpoint rule included (`nf_tables_bind_set`): with one
/// affinity map that walk was quadratic in the cluster (8 % of the busy time of a 30k-service
/// load). More maps shorten it but cost every rule's set lookup by name, a walk of the
/// table's sets (`nft_set_lookup_global`), and each endpoint rule of a ClientIP service looks
/// one up: one affinity map per 512 service ports keeps both walks short (docs/PERFORMANCE.md).
pub const AFFINITY_SHARD_GROUP: usize = 4;

/// How many endpoint maps (shards) a family with `service_ports` service ports has: the
/// smallest power of two giving each at most [`SERVICE_PORTS_PER_ENDPOINT_MAP`] service
/// ports, between 1 and [`names::MAX_ENDPOINT_SHARDS`].
///
/// Why not one map: every service chain's rule binds the map it looks up; the kernel walks all
/// elements of a map each time a chain binds it (nf_tables_bind_set: the applier adds the
/// elements after the rules, but `nft -f` and a Service added later do not), and checks every
/// binding of a map each time an element is added (nft_add_set_elem): O(bindings x elements)
/// per map. One map for 10k services / 100k endpoints made `nft -f` take 186 s of kernel
/// time. Why not one map per service port: each rule finds its map by name on a walk of the
/// table's sets (nft_set_lookup_global), O(rules x sets) for a load. 128 service ports per
/// map balance the two (at 30k services the load's kernel time went 5.3 s -> 3.3 s from 16
/// to 64, and that walk from ≈ 0.3 to ≈ 0.17 s from 64 to 128, while the per-map binding
/// walks grew by less; docs/PERFORMANCE.md). A power of two, so that the count (and every
/// map name) changes only when the number of service ports crosses 128 x 2^k.
pub fn endpoint_shards(service_ports: usize) -> usize {
    service_ports
        .div_ceil(SERVICE_PORTS_PER_ENDPOINT_MAP)
        .next_power_of_two()
        .clamp(1, names::MAX_ENDPOINT_SHARDS)
}

pub fn endpoint_ids(f: &FamilyIr) -> EndpointIds {
    endpoint_ids_of(f.service_ports.iter().map(|sp| &sp.name))
}

/// The ids a full build gives a family with these service ports (any order, repeats allowed).
pub fn endpoint_ids_of<'a>(names: impl IntoIterator<Item = &'a ServicePortName>) -> EndpointIds {
    let mut names: Vec<&ServicePortName> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    let mut t = IdTable {
        ids: HashMap::with_capacity(names.len()),
        owner: HashMap::with_capacity(names.len() * 2),
        moved: HashMap::new(),
        shards: endpoint_shards(names.len()),
    };
    for spn in names {
        let name = Arc::new(spn.clone());
        let mut pair = [0; 2];
        for which in [EndpointSet::Cluster, EndpointSet::Local] {
            let seed = t.seed(spn, which);
            let mut id = seed;
            while t.owner.contains_key(&id) {
                id = t.next(id);
            }
            t.owner.insert(id, name.clone());
            if id != seed {
                t.moved.insert(id, seed);
            }
            pair[which as usize] = id;
        }
        t.ids.insert(name, pair);
    }
    EndpointIds { t: Arc::new(t) }
}

/// What one service port adds to its family's table.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePortParts {
    pub chains: Vec<Chain>,
    /// (set or map name, element), for the fixed sets/maps; CLUSTER_IPS and HAIRPIN elements are
    /// included once per service port (several service ports may add the same one).
    pub elements: Vec<(&'static str, Element)>,
    /// IPv6 per-endpoint affinity sets.
    pub extra_sets: Vec<Set>,
}

/// The table of a family without any service port: the fixed sets and maps (holding only the
/// node's own elements: cluster CIDRs, service CIDRs, NodePort addresses), the endpoint maps
/// of `ids` (empty) and the fixed chains.
pub fn skeleton(f: &FamilyIr, ids: &EndpointIds) -> Table {
    let fam = f.family;
    let addr = fam.addr_type();
    let mut sets = vec![
        set(names::CLUSTER_IPS, vec![addr], None, "active ClusterIPs"),
        set(
            names::SERVICE_IPS,
            vec![addr, DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        set(
            names::SERVICE_NODEPORTS,
            vec![DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "NodePort traffic",
        ),
        set(
            names::NODEPORT_IPS,
            vec![addr],
            None,
            "IPs that accept NodePort traffic",
        ),
        set(
            names::NO_ENDPOINT_SERVICES,
            vec![addr, DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        set(
            names::NO_ENDPOINT_NODEPORTS,
            vec![DataType::InetProto, DataType::InetService],
            Some(SetData::Verdict),
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        set(
            names::FIREWALL_IPS,
            vec![addr, DataType::InetProto, DataType::InetService],
            None,
            "LoadBalancer frontends restricted by loadBalancerSourceRanges",
        ),
        {
            let mut s = set(
                names::FIREWALL_ALLOW,
                vec![addr, DataType::InetProto, DataType::InetService, addr],
                None,
                "sources allowed to each restricted LoadBalancer frontend",
            );
            s.flags.interval = true;
            s
        },
    ];
    // IPv6 keeps kube-proxy's per-endpoint affinity sets (see `endpoint_rules`). Before the
    // endpoint maps: a rule finds its set by name on a walk of the table's sets from the
    // first, and each endpoint rule of a ClientIP service looks up its affinity map, where a
    // service chain looks up one endpoint map.
    if fam == Family::Ip {
        sets.extend(ids.affinity_maps().map(|name| {
            let mut s = set(
                name,
                vec![addr, DataType::InetProto, addr, DataType::InetService],
                Some(SetData::Values(vec![addr, DataType::InetService])),
                "ClientIP session affinity: client . proto . frontend . port -> endpoint",
            );
            s.flags.dynamic = true;
            s.flags.timeout = true;
            s.size = Some(AFFINITY_SIZE);
            s
        }));
    }
    sets.extend(ids.maps().map(|name| {
        let mut s = set(
            name,
            vec![DataType::Integer],
            Some(SetData::Values(vec![addr, DataType::InetService])),
            "endpoints of each service port: key range -> address . port",
        );
        s.flags.interval = true;
        s
    }));
    sets.extend([
        set(
            names::HAIRPIN,
            vec![addr, addr],
            None,
            "endpoint . endpoint: a backend reaching itself through a service",
        ),
        {
            let mut s = set(
                names::CLUSTER_CIDRS,
                vec![addr],
                None,
                "pod CIDRs (clusterCIDR): local traffic",
            );
            s.flags.interval = true;
            s
        },
        {
            let mut s = set(
                names::SERVICE_CIDRS,
                vec![addr],
                None,
                "service CIDRs: unallocated addresses are dropped",
            );
            s.flags.interval = true;
            s
        },
    ]);
    let plain = |key: Value| Element {
        key: vec![key],
        data: None,
        comment: None,
    };
    let mut fill = |name: &str, elems: Vec<Element>| {
        let s = sets
            .iter_mut()
            .find(|s| s.name == name)
            .expect("a fixed set");
        s.elements = elems;
    };
    fill(
        names::CLUSTER_CIDRS,
        f.cluster_cidrs
            .iter()
            .map(|c| plain(Value::Prefix(*c)))
            .collect(),
    );
    fill(
        names::SERVICE_CIDRS,
        f.service_cidrs
            .iter()
            .map(|c| plain(Value::Prefix(*c)))
            .collect(),
    );
    if let NodePortAddrs::Addrs(a) = &f.node_ports_on {
        fill(
            names::NODEPORT_IPS,
            a.iter().map(|ip| plain(Value::Addr(*ip))).collect(),
        );
    }
    let has_detector = !f.cluster_cidrs.is_empty();
    Table {
        family: fam,
        name: names::TABLE.into(),
        comment: comment(names::TABLE_COMMENT),
        sets,
        chains: base_chains(f, has_detector, f.masquerade_mark),
    }
}

/// The skeleton plus the parts of every service port: chains and elements in service-port
/// order, except `cluster-ips` and `hairpin` elements (deduplicated and sorted), and the
/// IPv6 affinity sets after the fixed sets (deduplicated by name).
fn build_table(f: &FamilyIr, ids: &EndpointIds) -> Table {
    let mut t = skeleton(f, ids);
    let index: HashMap<String, usize> = t
        .sets
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    let mut cluster_ips = Vec::new();
    let mut hairpin = Vec::new();
    let mut extra_sets: Vec<Set> = Vec::new();
    let mut extra_names = HashSet::new();
    for sp in &f.service_ports {
        let parts = service_port_parts(f, sp, ids);
        t.chains.extend(parts.chains);
        for (name, e) in parts.elements {
            match name {
                names::CLUSTER_IPS => cluster_ips.push(e),
                names::HAIRPIN => hairpin.push(e),
                _ => t.sets[index[name]].elements.push(e),
            }
        }
        for s in parts.extra_sets {
            if extra_names.insert(s.name.clone()) {
                extra_sets.push(s);
            }
        }
    }
    for (name, mut elems) in [(names::CLUSTER_IPS, cluster_ips), (names::HAIRPIN, hairpin)] {
        elems.sort_by(|a, b| a.key.cmp(&b.key));
        elems.dedup_by(|a, b| a.key == b.key);
        let set = &mut t.sets[index[name]];
        if name == names::HAIRPIN {
            set.size = Some(hairpin_size(elems.len()));
        }
        set.elements.extend(elems);
    }
    t.sets.extend(extra_sets);
    t
}

fn base_chains(f: &FamilyIr, has_detector: bool, mark: u32) -> Vec<Chain> {
    use ChainType::*;
    use Hook::*;
    let ct_new = |v: &str| Rule::new().m(Match::CtStateNew).v(jump(v));
    let nodeport_daddr: Vec<Match> = match &f.node_ports_on {
        NodePortAddrs::Addrs(_) => {
            vec![Match::Daddr {
                negate: false,
                addr: AddrMatch::Set(names::NODEPORT_IPS.into()),
            }]
        }
        NodePortAddrs::AllLocal => vec![
            Match::FibDaddrLocal,
            Match::Daddr {
                negate: true,
                addr: AddrMatch::Net(f.family.loopback()),
            },
        ],
    };
    let cluster_ips = AddrMatch::Set(names::CLUSTER_IPS.into());

    let mut services = Vec::new();
    if f.masquerade_all {
        services.push(
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: cluster_ips.clone(),
                })
                .v(jump(names::MARK_FOR_MASQUERADE))
                .comment("masqueradeAll: every ClusterIP connection"),
        );
    } else if has_detector {
        services.push(
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: cluster_ips.clone(),
                })
                .m(Match::Saddr {
                    negate: true,
                    addr: AddrMatch::Set(names::CLUSTER_CIDRS.into()),
                })
                .v(jump(names::MARK_FOR_MASQUERADE))
                .comment("off-cluster traffic to a ClusterIP"),
        );
    }
    services.push(Rule::new().s(Stmt::Vmap {
        key: DADDR_PROTO_PORT.to_vec(),
        map: names::SERVICE_IPS.into(),
    }));
    let mut np = Rule::new();
    np.matches = nodeport_daddr.clone();
    services.push(np.s(Stmt::Vmap {
        key: PROTO_PORT.to_vec(),
        map: names::SERVICE_NODEPORTS.into(),
    }));

    let mut np_check = Rule::new();
    np_check.matches = nodeport_daddr;
    let np_check = np_check.s(Stmt::Vmap {
        key: PROTO_PORT.to_vec(),
        map: names::NO_ENDPOINT_NODEPORTS.into(),
    });

    let mut cluster_ips_check = vec![Rule::new()
        .m(Match::Daddr {
            negate: false,
            addr: cluster_ips,
        })
        .s(Stmt::Reject)
        .comment("invalid port or protocol of a ClusterIP")];
    if !f.service_cidrs.is_empty() {
        cluster_ips_check.push(
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: AddrMatch::Set(names::SERVICE_CIDRS.into()),
                })
                .v(Verdict::Drop)
                .comment("unallocated address in a service CIDR"),
        );
    }

    vec![
        chain(
            names::FILTER_PREROUTING_PRE_DNAT,
            Some((Filter, Prerouting, -110)),
            vec![ct_new(names::FIREWALL_CHECK)],
        ),
        chain(
            names::FILTER_OUTPUT_PRE_DNAT,
            Some((Filter, Output, -110)),
            vec![ct_new(names::FIREWALL_CHECK)],
        ),
        chain(
            names::NAT_PREROUTING,
            Some((Nat, Prerouting, -100)),
            vec![Rule::new().v(jump(names::SERVICES))],
        ),
        chain(
            names::NAT_OUTPUT,
            Some((Nat, Output, -100)),
            vec![Rule::new().v(jump(names::SERVICES))],
        ),
        chain(
            names::FILTER_INPUT,
            Some((Filter, Input, 0)),
            vec![
                ct_new(names::NODEPORT_ENDPOINTS_CHECK),
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
            ],
        ),
        chain(
            names::FILTER_FORWARD,
            Some((Filter, Forward, 0)),
            vec![
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
                ct_new(names::CLUSTER_IPS_CHECK),
            ],
        ),
        chain(
            names::FILTER_OUTPUT,
            Some((Filter, Output, 0)),
            vec![
                ct_new(names::SERVICE_ENDPOINTS_CHECK),
                ct_new(names::CLUSTER_IPS_CHECK),
            ],
        ),
        chain(
            names::NAT_POSTROUTING,
            Some((Nat, Postrouting, 100)),
            vec![Rule::new().v(jump(names::MASQUERADING))],
        ),
        chain(names::SERVICES, None, services),
        chain(
            names::MASQUERADING,
            None,
            vec![
                Rule::new()
                    .m(Match::CtStatusDnat)
                    .m(Match::Lookup {
                        key: vec![Field::Saddr, Field::Daddr],
                        set: names::HAIRPIN.into(),
                        negate: false,
                    })
                    .v(jump(names::MARK_FOR_MASQUERADE))
                    .comment("hairpin: a backend reached itself through a service"),
                Rule::new().m(Match::MarkClear(mark)).v(Verdict::Return),
                Rule::new().s(Stmt::MarkXor(mark)),
                Rule::new().s(Stmt::Masquerade { fully_random: true }),
            ],
        ),
        chain(
            names::MARK_FOR_MASQUERADE,
            None,
            vec![Rule::new().s(Stmt::MarkOr(mark))],
        ),
        chain(
            names::REJECT_CHAIN,
            None,
            vec![Rule::new()
                .s(Stmt::Reject)
                .comment("helper for @no-endpoint-services / @no-endpoint-nodeports")],
        ),
        chain(
            names::FIREWALL_CHECK,
            None,
            vec![Rule::new()
                .m(Match::Lookup {
                    key: DADDR_PROTO_PORT.to_vec(),
                    set: names::FIREWALL_IPS.into(),
                    negate: false,
                })
                .m(Match::Lookup {
                    key: vec![Field::Daddr, Field::L4Proto, Field::Dport, Field::Saddr],
                    set: names::FIREWALL_ALLOW.into(),
                    negate: true,
                })
                .v(Verdict::Drop)
                .comment("source not in loadBalancerSourceRanges")],
        ),
        chain(
            names::SERVICE_ENDPOINTS_CHECK,
            None,
            vec![Rule::new().s(Stmt::Vmap {
                key: DADDR_PROTO_PORT.to_vec(),
                map: names::NO_ENDPOINT_SERVICES.into(),
            })],
        ),
        chain(names::NODEPORT_ENDPOINTS_CHECK, None, vec![np_check]),
        chain(names::CLUSTER_IPS_CHECK, None, cluster_ips_check),
    ]
}

fn elem3(addr: IpAddr, proto: L4Proto, port: u16, data: ElemData, c: &Comment) -> Element {
    Element {
        key: vec![Value::Addr(addr), Value::Proto(proto), Value::Port(port)],
        data: Some(data),
        comment: c.clone(),
    }
}

fn elem2(proto: L4Proto, port: u16, data: ElemData, c: &Comment) -> Element {
    Element {
        key: vec![Value::Proto(proto), Value::Port(port)],
        data: Some(data),
        comment: c.clone(),
    }
}

/// Where a chain's endpoints live: its endpoint map and first key there
/// ([`EndpointIds::map`], [`EndpointIds::base`]), and its affinity map.
#[derive(Clone, Copy)]
struct EndpointMaps {
    base: u32,
    map: &'static str,
    affinity: &'static str,
}

/// The rules of a chain that picks one of `eps` uniformly at random, and the elements of
/// `@endpoints` they pick from.
///
/// Without affinity: ONE rule, `meta l4proto P dnat … to numgen random mod 65536 offset
/// BASE map @endpoints…` (BASE = [`EndpointIds::base`] of the chain's id), and one element
/// per endpoint, `BASE + first - BASE + last : address . port`, endpoint `i` of `n` owning
/// the keys [`slot_range`]`(i, n)` of an interval map (the kernel's rbtree). The count is in
/// no rule: an endpoint added, removed or replaced changes map elements only (data, not
/// verdicts), so the kernel never re-validates the table for it. (`meta l4proto` gives the
/// NAT port its protocol.)
///
/// With ClientIP affinity: kube-proxy-like per-endpoint rules, as nft 1.0.6 cannot use a
/// map lookup as the data of `update @affinity { … }`. The service chain first tries
/// `dnat … map @affinity…` (`affinity`: the port's affinity map,
/// [`EndpointIds::affinity_map`]); each endpoint rule `update`s it. IPv6 cannot use the
/// affinity maps either: nft 1.0.6 fails to linearize a dynamic-map update whose concatenated
/// key is wider than 16 bytes (an assertion in netlink_linearize.c), so IPv6
/// services with affinity use kube-proxy's layout, one dynamic set of clients per endpoint
/// (`affinity6-…`), returned in `extra_sets`.
fn endpoint_rules(
    fam: Family,
    sp: &ServicePort,
    eps: &[Backend],
    maps: EndpointMaps,
    elements: &mut Vec<(&'static str, Element)>,
    extra_sets: &mut Vec<Set>,
) -> Vec<Rule> {
    let EndpointMaps {
        base,
        map,
        affinity,
    } = maps;
    let Some(t) = sp.policy.affinity_timeout else {
        let spn = elem_comment(sp.name.to_string());
        // More endpoints than slots would leave some with an empty range: they get none.
        let eps = &eps[..eps.len().min(ENDPOINT_SLOTS as usize)];
        elements.extend(eps.iter().enumerate().map(|(i, ep)| {
            let (lo, hi) = slot_range(i, eps.len());
            let e = Element {
                key: vec![Value::Range(base + lo, base + hi)],
                data: Some(ElemData::Values(vec![
                    Value::Addr(ep.addr),
                    Value::Port(ep.port),
                ])),
                comment: spn.clone(),
            };
            (map, e)
        }));
        return vec![Rule::new().m(Match::L4Proto(sp.protocol)).s(Stmt::DnatMap {
            key: vec![Field::Numgen {
                modulus: ENDPOINT_SLOTS,
                offset: base,
            }],
            map: map.into(),
        })];
    };
    let mut rules = Vec::with_capacity(eps.len() * 2 + 1);
    let per_endpoint_sets = fam == Family::Ip6;
    let affinity_set = |ep: &Backend| names::affinity6_set(&sp.name, &ep.to_string());
    if per_endpoint_sets {
        for ep in eps {
            let name = affinity_set(ep);
            if !extra_sets.iter().any(|s| s.name == name) {
                let mut s = set(
                    &name,
                    vec![fam.addr_type()],
                    None,
                    &format!("{} affinity to {ep}", sp.name),
                );
                s.flags.dynamic = true;
                s.flags.timeout = true;
                s.timeout = Some(t);
                extra_sets.push(s);
            }
            rules.push(
                Rule::new()
                    .m(Match::Saddr {
                        negate: false,
                        addr: AddrMatch::Set(name),
                    })
                    .m(Match::L4Proto(sp.protocol))
                    .s(Stmt::Dnat {
                        addr: ep.addr,
                        port: ep.port,
                    })
                    .comment(format!("session affinity: {ep}")),
            );
        }
    } else {
        rules.push(
            Rule::new()
                .s(Stmt::DnatMap {
                    key: AFFINITY_KEY.to_vec(),
                    map: affinity.into(),
                })
                .comment("session affinity: the endpoint this client used before"),
        );
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let mut r = Rule::new().m(Match::L4Proto(sp.protocol));
        if i + 1 < n {
            r = r.m(Match::NumgenRandomZero {
                modulus: (n - i) as u32,
            });
        }
        r = if per_endpoint_sets {
            r.s(Stmt::Update {
                set: affinity_set(ep),
                key: vec![Field::Saddr],
                timeout: t,
                data: vec![],
            })
        } else {
            r.s(Stmt::Update {
                set: affinity.into(),
                key: AFFINITY_KEY.to_vec(),
                timeout: t,
                data: vec![Value::Addr(ep.addr), Value::Port(ep.port)],
            })
        };
        rules.push(
            r.s(Stmt::Dnat {
                addr: ep.addr,
                port: ep.port,
            })
            .comment(ep.to_string()),
        );
    }
    rules
}

/// What `sp` adds to its family's table (see [`ServicePortParts`]); `ids` must be
/// [`endpoint_ids`] of a family holding `sp` (what [`build`] uses).
pub fn service_port_parts(f: &FamilyIr, sp: &ServicePort, ids: &EndpointIds) -> ServicePortParts {
    let mut chains = Vec::new();
    let mut elements: Vec<(&'static str, Element)> = Vec::new();
    let mut extra_sets = Vec::new();
    let id = |which| {
        ids.get(&sp.name, which).unwrap_or_else(|| {
            panic!(
                "no endpoint-map id for {}: ids must be endpoint_ids() of its family",
                sp.name
            )
        })
    };
    let spn = sp.name.to_string();
    let ec = elem_comment(&spn);
    // Both chains of a port share its affinity map (the key holds the frontend, not the chain).
    let affinity = ids.affinity_map(id(EndpointSet::Cluster));
    let proto = sp.protocol;
    let b = &sp.backends;
    let pol = &sp.policy;
    let cluster_chain = names::cluster_chain(&sp.name);
    let local_chain = names::local_chain(&sp.name);
    let external_chain = names::external_chain(&sp.name);

    let d = sp.dispatch();
    let uses_cluster_chain = d.uses_cluster;
    let uses_local_chain = d.uses_local;
    let policy_chain = |c: PolicyChain| match c {
        PolicyChain::Cluster => &cluster_chain,
        PolicyChain::Local => &local_chain,
    };
    let uses_external_chain = d.uses_external_chain;
    let filter_verdict = |f: FilterVerdict| match f {
        FilterVerdict::Reject => ElemData::Verdict(Verdict::Goto(names::REJECT_CHAIN.into())),
        FilterVerdict::Drop => ElemData::Verdict(Verdict::Drop),
    };
    let internal_filter = d.internal_filter.map(filter_verdict);
    let external_filter = d.external_filter.map(filter_verdict);

    if uses_cluster_chain {
        let rules = endpoint_rules(
            f.family,
            sp,
            &b.cluster,
            EndpointMaps {
                base: ids.base(id(EndpointSet::Cluster)),
                map: ids.map(id(EndpointSet::Cluster)),
                affinity,
            },
            &mut elements,
            &mut extra_sets,
        );
        chains.push(Chain {
            name: cluster_chain.clone(),
            base: None,
            comment: comment(format!("{spn} cluster endpoints")),
            rules,
        });
    }
    if uses_local_chain {
        let rules = endpoint_rules(
            f.family,
            sp,
            &b.local,
            EndpointMaps {
                base: ids.base(id(EndpointSet::Local)),
                map: ids.map(id(EndpointSet::Local)),
                affinity,
            },
            &mut elements,
            &mut extra_sets,
        );
        chains.push(Chain {
            name: local_chain.clone(),
            base: None,
            comment: comment(format!("{spn} local endpoints")),
            rules,
        });
    }
    let mut hairpin: Vec<IpAddr> = Vec::new();
    for ep in b.cluster.iter().chain(b.local.iter()) {
        if !hairpin.contains(&ep.addr) {
            hairpin.push(ep.addr);
        }
    }
    elements.extend(hairpin.into_iter().map(|ip| {
        let e = Element {
            key: vec![Value::Addr(ip), Value::Addr(ip)],
            data: None,
            comment: None,
        };
        (names::HAIRPIN, e)
    }));
    if uses_external_chain {
        let mut rules = Vec::new();
        if !pol.external_local {
            rules.push(
                Rule::new()
                    .v(jump(names::MARK_FOR_MASQUERADE))
                    .comment("external traffic may leave the node"),
            );
        } else {
            // Pods reaching an external address of the service: neither policy applies
            // (as if they went out to the load balancer and came back).
            let short = if uses_cluster_chain {
                Some(&cluster_chain)
            } else if uses_local_chain {
                Some(&local_chain)
            } else {
                None
            };
            if let Some(target) = short {
                for c in &f.cluster_cidrs {
                    rules.push(
                        Rule::new()
                            .m(Match::Saddr {
                                negate: false,
                                addr: AddrMatch::Net(*c),
                            })
                            .v(goto(target))
                            .comment("short-circuit pod traffic"),
                    );
                }
                rules.push(
                    Rule::new()
                        .m(Match::FibSaddrLocal)
                        .v(jump(names::MARK_FOR_MASQUERADE))
                        .comment("masquerade local traffic"),
                );
                rules.push(
                    Rule::new()
                        .m(Match::FibSaddrLocal)
                        .v(goto(target))
                        .comment("short-circuit local traffic"),
                );
            }
        }
        if let Some(c) = d.external {
            rules.push(Rule::new().v(goto(policy_chain(c))));
        }
        chains.push(Chain {
            name: external_chain.clone(),
            base: None,
            comment: comment(format!("{spn} external traffic")),
            rules,
        });
    }

    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    for fe in &sp.frontends {
        match fe.kind {
            FrontendKind::ClusterIp => {
                let a = fe.addr.expect("ClusterIP frontend has an address");
                if !cluster_ips.contains(&a) {
                    cluster_ips.push(a);
                    let e = Element {
                        key: vec![Value::Addr(a)],
                        data: None,
                        comment: None,
                    };
                    elements.push((names::CLUSTER_IPS, e));
                }
                if let Some(c) = d.internal {
                    elements.push((
                        names::SERVICE_IPS,
                        elem3(
                            a,
                            proto,
                            fe.port,
                            ElemData::Verdict(goto(policy_chain(c))),
                            &ec,
                        ),
                    ));
                } else if let Some(v) = &internal_filter {
                    elements.push((
                        names::NO_ENDPOINT_SERVICES,
                        elem3(a, proto, fe.port, v.clone(), &ec),
                    ));
                }
            }
            FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {
                let a = fe.addr.expect("external frontend has an address");
                if uses_external_chain {
                    elements.push((
                        names::SERVICE_IPS,
                        elem3(
                            a,
                            proto,
                            fe.port,
                            ElemData::Verdict(goto(&external_chain)),
                            &ec,
                        ),
                    ));
                }
                if let Some(v) = &external_filter {
                    elements.push((
                        names::NO_ENDPOINT_SERVICES,
                        elem3(a, proto, fe.port, v.clone(), &ec),
                    ));
                }
                if fe.kind == FrontendKind::LoadBalancer && !pol.source_ranges.is_empty() {
                    let key3 = vec![Value::Addr(a), Value::Proto(proto), Value::Port(fe.port)];
                    elements.push((
                        names::FIREWALL_IPS,
                        Element {
                            key: key3.clone(),
                            data: None,
                            comment: ec.clone(),
                        },
                    ));
                    let mut allowed: Vec<IpNet> = pol.source_ranges.clone();
                    if pol.allow_lb_ips_as_source {
                        allowed.extend(
                            sp.frontends
                                .iter()
                                .filter(|x| x.kind == FrontendKind::LoadBalancer)
                                .filter_map(|x| x.addr)
                                .map(IpNet::from),
                        );
                    }
                    // Overlapping ranges are refused by the kernel's interval sets: merge them.
                    for r in IpNet::aggregate(&allowed) {
                        let mut k = key3.clone();
                        k.push(Value::Prefix(r));
                        elements.push((
                            names::FIREWALL_ALLOW,
                            Element {
                                key: k,
                                data: None,
                                comment: ec.clone(),
                            },
                        ));
                    }
                }
            }
            FrontendKind::NodePort => {
                if uses_external_chain {
                    elements.push((
                        names::SERVICE_NODEPORTS,
                        elem2(
                            proto,
                            fe.port,
                            ElemData::Verdict(goto(&external_chain)),
                            &ec,
                        ),
                    ));
                }
                if let Some(v) = &external_filter {
                    elements.push((
                        names::NO_ENDPOINT_NODEPORTS,
                        elem2(proto, fe.port, v.clone(), &ec),
                    ));
                }
            }
        }
    }
    ServicePortParts {
        chains,
        elements,
        extra_sets,
    }
}

/// The synthetic cluster generator, for the tests.
#[cfg(test)]
#[path = "../../../fixtures/gen/cluster.rs"]
mod gen;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompileOptions, NodeSettings, Source};

    use super::gen;

    /// A generated cluster (both families, every feature of the generator) as IR.
    fn ir(services: usize, endpoints: usize) -> Ir {
        let text = gen::generate(&gen::GenOptions {
            services,
            endpoints,
            nodes: 3,
            dual_stack: true,
            seed: 1,
        });
        let settings = NodeSettings {
            hostname: "node-1".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            cluster_cidrs: vec![
                "10.128.0.0/9".parse().unwrap(),
                "fd00:10:128::/64".parse().unwrap(),
            ],
            ..NodeSettings::default()
        };
        let src = Source {
            name: "cluster.yaml".into(),
            text,
        };
        crate::compile(&[src], &settings, CompileOptions::default())
            .expect("the generated cluster compiles")
            .ir
    }

    /// The documented assembly, written independently of `build_table`.
    fn assembled(f: &FamilyIr) -> Table {
        let ids = endpoint_ids(f);
        let mut t = skeleton(f, &ids);
        let mut dedup: HashMap<&str, Vec<Element>> = HashMap::new();
        let mut extra: Vec<Set> = Vec::new();
        for sp in &f.service_ports {
            let p = service_port_parts(f, sp, &ids);
            t.chains.extend(p.chains);
            for (name, e) in p.elements {
                if name == names::CLUSTER_IPS || name == names::HAIRPIN {
                    dedup.entry(name).or_default().push(e);
                } else {
                    let s = t.sets.iter_mut().find(|s| s.name == name).unwrap();
                    s.elements.push(e);
                }
            }
            for s in p.extra_sets {
                if !extra.iter().any(|x| x.name == s.name) {
                    extra.push(s);
                }
            }
        }
        for (name, mut elems) in dedup {
            elems.sort_by(|a, b| a.key.cmp(&b.key));
            elems.dedup();
            let s = t.sets.iter_mut().find(|s| s.name == name).unwrap();
            s.elements.extend(elems);
        }
        for s in t.sets.iter_mut().filter(|s| s.name == names::HAIRPIN) {
            s.size = Some(hairpin_size(s.elements.len()));
        }
        t.sets.extend(extra);
        t
    }

    #[test]
    fn build_is_skeleton_plus_parts() {
        for (services, endpoints) in [(0, 0), (3, 10), (40, 300), (700, 4000)] {
            let ir = ir(services, endpoints);
            let rs = build(&ir);
            assert_eq!(rs.tables.len(), 2);
            for (f, t) in ir.families.iter().zip(&rs.tables) {
                assert_eq!(*t, assembled(f), "{services} services, {:?}", f.family);
            }
        }
    }

    #[test]
    fn endpoint_maps_and_rules() {
        let ir = ir(700, 4000);
        for f in &ir.families {
            let ids = endpoint_ids(f);
            let t = build_table(f, &ids);
            let maps: Vec<&str> = ids.maps().collect();
            assert_eq!(maps.len(), endpoint_shards(f.service_ports.len()));
            assert!(maps.len() > 1, "700 services need several maps");
            // Every endpoint map is declared; every element sits in its id's map.
            for m in &maps {
                let s = t.set(m).expect("declared");
                assert!(s.uses_typeof());
                assert!(s.flags.interval);
                for e in &s.elements {
                    let [Value::Range(first, last)] = e.key[..] else {
                        panic!("{e:?}")
                    };
                    assert!(first <= last);
                    // The keys of one id: [base, base + ENDPOINT_SLOTS).
                    let base = first & !(ENDPOINT_SLOTS - 1);
                    let owner = ids
                        .t
                        .owner
                        .keys()
                        .any(|&id| ids.base(id) == base && ids.map(id) == *m);
                    assert!(owner && last - base < ENDPOINT_SLOTS, "{e:?}");
                }
            }
            let mut dnat_rules = 0;
            for sp in &f.service_ports {
                let d = sp.dispatch();
                for (used, which, eps, chain) in [
                    (
                        d.uses_cluster,
                        EndpointSet::Cluster,
                        &sp.backends.cluster,
                        names::cluster_chain(&sp.name),
                    ),
                    (
                        d.uses_local,
                        EndpointSet::Local,
                        &sp.backends.local,
                        names::local_chain(&sp.name),
                    ),
                ] {
                    if !used {
                        continue;
                    }
                    let id = ids.get(&sp.name, which).unwrap();
                    let base = ids.base(id);
                    let c = t.chain(&chain).unwrap();
                    let elems: Vec<&Element> = t
                        .set(ids.map(id))
                        .unwrap()
                        .elements
                        .iter()
                        .filter(|e| {
                            matches!(e.key[..], [Value::Range(a, _)]
                                if a >= base && a - base < ENDPOINT_SLOTS)
                        })
                        .collect();
                    if sp.policy.affinity_timeout.is_some() {
                        assert!(elems.is_empty());
                        continue;
                    }
                    dnat_rules += 1;
                    assert_eq!(
                        c.rules,
                        vec![Rule::new().m(Match::L4Proto(sp.protocol)).s(Stmt::DnatMap {
                            key: vec![Field::Numgen {
                                modulus: ENDPOINT_SLOTS,
                                offset: base
                            }],
                            map: ids.map(id).into(),
                        })]
                    );
                    let want: Vec<Vec<Value>> = eps
                        .iter()
                        .map(|b| vec![Value::Addr(b.addr), Value::Port(b.port)])
                        .collect();
                    let got: Vec<Vec<Value>> = elems
                        .iter()
                        .enumerate()
                        .map(|(i, e)| {
                            let (a, b) = slot_range(i, eps.len());
                            assert_eq!(e.key, vec![Value::Range(base + a, base + b)]);
                            assert_eq!(e.comment.as_deref(), Some(&*sp.name.to_string()));
                            match &e.data {
                                Some(ElemData::Values(v)) => v.clone(),
                                _ => panic!("{e:?}"),
                            }
                        })
                        .collect();
                    assert_eq!(got, want, "{}", sp.name);
                }
            }
            assert!(dnat_rules > 500, "{dnat_rules}");
        }
    }

    #[test]
    fn an_endpoint_added_or_removed_changes_elements_only() {
        // The count lives in no rule: the chains stay, only endpoint-map (and hairpin)
        // elements change, and the new ranges still cover the id's keys exactly.
        let ir = ir(40, 300);
        let f = &ir.families[0];
        let ids = endpoint_ids(f);
        let mut checked = 0;
        for sp in &f.service_ports {
            if sp.backends.cluster.len() < 2 || sp.policy.affinity_timeout.is_some() {
                continue;
            }
            let before = service_port_parts(f, sp, &ids);
            for grow in [false, true] {
                let mut sp2 = ServicePort::clone(sp);
                if grow {
                    let mut b = sp2.backends.cluster[0].clone();
                    b.addr = "10.250.0.2".parse().unwrap();
                    sp2.backends.cluster.push(b);
                } else {
                    sp2.backends.cluster.pop();
                }
                let n = sp2.backends.cluster.len();
                let after = service_port_parts(f, &sp2, &ids);
                assert_eq!(before.chains, after.chains, "{}", sp.name);
                assert_ne!(before.elements, after.elements);
                let differ = |x: &ServicePortParts, y: &ServicePortParts| -> Vec<&'static str> {
                    x.elements
                        .iter()
                        .filter(|e| !y.elements.contains(e))
                        .map(|e| e.0)
                        .collect()
                };
                let changed = [differ(&before, &after), differ(&after, &before)].concat();
                assert!(
                    changed
                        .iter()
                        .all(|m| *m == names::HAIRPIN || m.starts_with(names::ENDPOINTS)),
                    "{changed:?}"
                );
                let base = ids.base(ids.get(&sp.name, EndpointSet::Cluster).unwrap());
                let mut ranges: Vec<(u32, u32)> = after
                    .elements
                    .iter()
                    .filter_map(|(_, e)| match e.key[..] {
                        [Value::Range(a, b)] if a >= base && a - base < ENDPOINT_SLOTS => {
                            Some((a - base, b - base))
                        }
                        _ => None,
                    })
                    .collect();
                ranges.sort();
                assert_eq!(ranges.len(), n);
                assert_eq!(ranges[0].0, 0);
                assert_eq!(ranges[n - 1].1, ENDPOINT_SLOTS - 1);
                assert!(ranges.windows(2).all(|w| w[0].1 + 1 == w[1].0));
                // Fair: the sizes differ by at most one key.
                let sizes: Vec<u32> = ranges.iter().map(|(a, b)| b - a + 1).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
            checked += 1;
        }
        assert!(checked > 10, "{checked}");
    }

    #[test]
    fn an_endpoint_replaced_changes_elements_only() {
        let ir = ir(40, 300);
        let f = &ir.families[0];
        let ids = endpoint_ids(f);
        let mut moved = 0;
        for sp in &f.service_ports {
            if sp.backends.cluster.is_empty() || sp.policy.affinity_timeout.is_some() {
                continue;
            }
            let before = service_port_parts(f, sp, &ids);
            let mut sp2 = ServicePort::clone(sp);
            let old = sp2.backends.cluster[0].addr;
            let new: IpAddr = "10.250.0.1".parse().unwrap();
            for b in sp2
                .backends
                .cluster
                .iter_mut()
                .chain(&mut sp2.backends.local)
            {
                if b.addr == old {
                    b.addr = new;
                }
            }
            let after = service_port_parts(f, &sp2, &ids);
            assert_eq!(before.chains, after.chains, "{}", sp.name);
            assert_eq!(before.extra_sets, after.extra_sets);
            let changed: Vec<&str> = before
                .elements
                .iter()
                .zip(&after.elements)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0)
                .collect();
            assert!(!changed.is_empty());
            assert!(
                changed
                    .iter()
                    .all(|m| *m == names::HAIRPIN || m.starts_with(names::ENDPOINTS)),
                "{changed:?}"
            );
            moved += 1;
        }
        assert!(moved > 10);
    }

    #[test]
    fn shard_counts() {
        assert_eq!(endpoint_shards(0), 1);
        assert_eq!(endpoint_shards(128), 1);
        assert_eq!(endpoint_shards(129), 2);
        assert_eq!(endpoint_shards(12_000), 128);
        assert_eq!(endpoint_shards(10_000_000), names::MAX_ENDPOINT_SHARDS);
        assert_eq!(names::endpoints_map(0, 1), "endpoints");
        assert_eq!(names::endpoints_map(5, 8), "endpoints-5");
        assert_eq!(names::affinity_map(0, 1), "affinity");
        assert_eq!(names::affinity_map(3, 4), "affinity-3");
    }

    fn spn(name: &str) -> ServicePortName {
        ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port: "http".into(),
            protocol: L4Proto::Tcp,
        }
    }

    fn family_of(names: &[ServicePortName]) -> FamilyIr {
        let sp = ServicePort::clone(&ir(1, 1).families[0].service_ports[0]);
        let mut f = ir(0, 0).families.swap_remove(0);
        let mut sps: Vec<Arc<ServicePort>> = names
            .iter()
            .map(|n| {
                Arc::new(ServicePort {
                    name: n.clone(),
                    ..sp.clone()
                })
            })
            .collect();
        sps.sort_by(|a, b| a.name.cmp(&b.name));
        f.service_ports = sps;
        f
    }

    #[test]
    fn ids_are_stable_unique_and_probe_on_collision() {
        // Two names whose cluster seeds collide (FNV-1a 32: found by search).
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0..)
            .find_map(|i| {
                let n = format!("s{i}");
                let h = names::endpoint_id_seed(&spn(&n), EndpointSet::Cluster);
                seen.insert(h, n.clone()).map(|prev| (prev, n))
            })
            .unwrap();
        let (a, b) = (spn(&a), spn(&b));
        // One map: ids are seeds modulo ENDPOINT_SLOTS.
        let mask = ENDPOINT_SLOTS - 1;
        let seed = names::endpoint_id_seed(&a, EndpointSet::Cluster) & mask;
        let ids = endpoint_ids(&family_of(&[a.clone(), b.clone()]));
        let (first, second) = if a < b { (&a, &b) } else { (&b, &a) };
        assert_eq!(ids.get(first, EndpointSet::Cluster), Some(seed));
        assert_eq!(
            ids.get(second, EndpointSet::Cluster),
            Some(seed.wrapping_add(1))
        );
        // Unrelated services change nothing (while the number of maps stays); the ids are a
        // function of the names and of the number of maps.
        let base: Vec<ServicePortName> = (0..200).map(|i| spn(&format!("svc-{i}"))).collect();
        let ids1 = endpoint_ids(&family_of(&base));
        let mut more = base.clone();
        more.extend((0..50).map(|i| spn(&format!("other-{i}"))));
        let ids2 = endpoint_ids(&family_of(&more));
        assert_eq!((ids1.shards(), ids2.shards()), (2, 2));
        let mask = 2 * ENDPOINT_SLOTS - 1;
        let mut all = HashSet::new();
        for n in &base {
            for w in [EndpointSet::Cluster, EndpointSet::Local] {
                assert_eq!(ids1.get(n, w), Some(names::endpoint_id_seed(n, w) & mask));
                assert_eq!(ids1.get(n, w), ids2.get(n, w));
                assert!(all.insert(ids1.get(n, w).unwrap()));
            }
        }
    }

    /// The ids as a comparable value.
    fn table(ids: &EndpointIds) -> (usize, Vec<(ServicePortName, [u32; 2])>) {
        let mut v: Vec<(ServicePortName, [u32; 2])> = ids
            .t
            .ids
            .iter()
            .map(|(n, p)| (ServicePortName::clone(n), *p))
            .collect();
        v.sort();
        (ids.shards(), v)
    }

    #[test]
    fn insert_and_remove_agree_with_a_full_build_or_decline() {
        // Names whose seeds collide (cluster with cluster, and cluster with local), so that
        // probing and moved ids happen, mixed with ordinary ones.
        let mut by_seed: HashMap<u32, String> = HashMap::new();
        let mut colliding = Vec::new();
        for i in 0.. {
            let n = format!("c{i}");
            for w in [EndpointSet::Cluster, EndpointSet::Local] {
                let h = names::endpoint_id_seed(&spn(&n), w);
                if let Some(prev) = by_seed.insert(h, n.clone()) {
                    colliding.push(prev);
                    colliding.push(n.clone());
                }
            }
            if colliding.len() >= 8 {
                break;
            }
        }
        let mut pool: Vec<ServicePortName> = colliding.iter().map(|n| spn(n)).collect();
        pool.extend((0..40).map(|i| spn(&format!("svc-{i:02}"))));
        pool.sort();
        pool.dedup();
        let template = ServicePort::clone(&ir(1, 1).families[0].service_ports[0]);
        let mut f = ir(0, 0).families.swap_remove(0);
        let mut ids = endpoint_ids(&f);
        let mut rng = 0x1234_5678_9abc_def0u64;
        let (mut accepted, mut declined) = (0, 0);
        for _ in 0..3000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = &pool[(rng % pool.len() as u64) as usize];
            let present = f.service_ports.iter().any(|sp| sp.name == *n);
            let before = table(&ids);
            let ok = if present {
                f.service_ports.retain(|sp| sp.name != *n);
                ids.remove(n)
            } else {
                f.service_ports.push(Arc::new(ServicePort {
                    name: n.clone(),
                    ..template.clone()
                }));
                f.service_ports.sort_by(|a, b| a.name.cmp(&b.name));
                ids.insert(n)
            };
            let full = endpoint_ids(&f);
            if ok {
                accepted += 1;
                assert_eq!(table(&ids), table(&full), "{n} present={present}");
            } else {
                declined += 1;
                assert_eq!(table(&ids), before, "a declined change changes nothing");
                // Declined only when needed: the map count or another service port's ids
                // differ in the full build.
                let after = table(&full);
                let moved = after
                    .1
                    .iter()
                    .any(|(m, p)| m != n && before.1.iter().any(|(o, q)| o == m && q != p));
                assert!(after.0 != before.0 || moved, "{n} declined needlessly");
                ids = full;
            }
        }
        assert!(accepted > 2000 && declined > 10, "{accepted} / {declined}");
    }
}
