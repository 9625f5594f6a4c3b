//! Every table, chain, set and map name svcc uses, and the length bounds on them.
//!
//! Per-service chain names follow kube-proxy's nftables mode (`service-<HASH8>-ns/svc/proto/port`)
//! so operators recognise them; the hash keeps names unique after truncation.

use sha2::{Digest, Sha256};

use crate::ir::ServicePortName;

pub const TABLE: &str = "svcc";
pub const TABLE_COMMENT: &str = "rules for Kubernetes Services, managed by svcc";

// Base chains.
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";
pub const FILTER_PREROUTING_PRE_DNAT: &str = "filter-prerouting-pre-dnat";
pub const FILTER_OUTPUT_PRE_DNAT: &str = "filter-output-pre-dnat";
pub const FILTER_INPUT: &str = "filter-input";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";

// Fixed regular chains.
pub const SERVICES: &str = "services";
pub const MASQUERADING: &str = "masquerading";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const FIREWALL_CHECK: &str = "firewall-check";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";

// Sets and maps: a fixed list, whatever the number of services.
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const FIREWALL_ALLOW: &str = "firewall-allow";
/// ClientIP affinity, `client . proto . frontend . port -> endpoint`, one map per endpoint-map
/// shard when there are several ([`affinity_map`]).
pub const AFFINITY: &str = "affinity";
pub const HAIRPIN: &str = "hairpin";
pub const CLUSTER_CIDRS: &str = "cluster-cidrs";
pub const SERVICE_CIDRS: &str = "service-cidrs";
/// `key range -> address . port`: the endpoints of every service port, each id owning 2^16
/// keys (see [`endpoint_id_seed`] and `nft::build::endpoint_ids`), when they fit in one map;
/// else [`endpoints_map`] names its shards.
pub const ENDPOINTS: &str = "endpoints";

/// The most shards of the endpoints map (see `nft::build::endpoint_shards`): each shard owns
/// 2^16 endpoint-map keys per id, so the id space `shards << 16` must fit in 32 bits.
pub const MAX_ENDPOINT_SHARDS: usize = 1 << 16;

/// The name of shard `shard` of `shards` endpoint maps: [`ENDPOINTS`] alone, else
/// `endpoints-<shard>`.
pub fn endpoints_map(shard: usize, shards: usize) -> &'static str {
    static NAMES: ShardNames = ShardNames::new();
    NAMES.get(ENDPOINTS, shard, shards)
}

/// The name of the affinity map of endpoint-map shard `shard` of `shards`: [`AFFINITY`] alone,
/// else `affinity-<shard>`.
pub fn affinity_map(shard: usize, shards: usize) -> &'static str {
    static NAMES: ShardNames = ShardNames::new();
    NAMES.get(AFFINITY, shard, shards)
}

/// Names `<prefix>-<shard>`, made once, when first needed (a table holds up to
/// MAX_ENDPOINT_SHARDS of each).
struct ShardNames(std::sync::RwLock<Vec<&'static str>>);

impl ShardNames {
    const fn new() -> ShardNames {
        ShardNames(std::sync::RwLock::new(Vec::new()))
    }

    fn get(&self, prefix: &'static str, shard: usize, shards: usize) -> &'static str {
        assert!(
            shard < shards && shards <= MAX_ENDPOINT_SHARDS,
            "shard {shard} of {shards}"
        );
        if shards == 1 {
            return prefix;
        }
        if let Some(n) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(shard) {
            return n;
        }
        let mut names = self.0.write().unwrap_or_else(|e| e.into_inner());
        while names.len() < shards {
            let i = names.len();
            names.push(Box::leak(format!("{prefix}-{i}").into_boxed_str()));
        }
        names[shard]
    }
}

/// Room left for the `<prefix>-<HASH8>-` part within nft's 256-byte chain names, as kube-proxy.
const CHAIN_NAME_BASE_MAX: usize = 240;

/// `ns/svc/proto/port`, kube-proxy's `servicePortChainNameBase`.
fn chain_base(spn: &ServicePortName) -> String {
    format!(
        "{}/{}/{}/{}",
        spn.namespace,
        spn.name,
        spn.protocol.keyword(),
        spn.port
    )
}

/// kube-proxy's `hashAndTruncate`: `<base32(sha256(name))[:8]>-<name>`, bounded in length.
pub fn hash_and_truncate(name: &str) -> String {
    let hash = Sha256::digest(name.as_bytes());
    let enc = data_encoding::BASE32.encode(&hash);
    let mut out = format!("{}-{name}", &enc[..8]);
    if out.len() > CHAIN_NAME_BASE_MAX {
        let mut cut = CHAIN_NAME_BASE_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// Chain picking among all usable endpoints (Cluster policy).
pub fn cluster_chain(spn: &ServicePortName) -> String {
    format!("service-{}", hash_and_truncate(&chain_base(spn)))
}

/// Chain picking among local endpoints (Local policy).
pub fn local_chain(spn: &ServicePortName) -> String {
    format!("local-{}", hash_and_truncate(&chain_base(spn)))
}

/// IPv6 only: the dynamic set of clients with affinity to one endpoint of a service port
/// (kube-proxy's `affinity-…__<IP>/<port>`; see `nft::build::endpoint_rules` for why).
pub fn affinity6_set(spn: &ServicePortName, endpoint: &str) -> String {
    let ep = endpoint.replace(['[', ']'], "").replace(':', ".");
    format!(
        "affinity6-{}",
        hash_and_truncate(&format!("{}__{ep}", chain_base(spn)))
    )
}

/// Chain for traffic to NodePorts, external IPs and LB IPs.
pub fn external_chain(spn: &ServicePortName) -> String {
    format!("external-{}", hash_and_truncate(&chain_base(spn)))
}

/// Which endpoints of a service port an endpoint-map id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointSet {
    /// Cluster-policy endpoints (the `service-…` chain).
    Cluster,
    /// Local-policy endpoints (the `local-…` chain).
    Local,
}

/// The preferred endpoint-map id of a service port's cluster or local endpoints: 32-bit
/// FNV-1a of `ns/svc/proto/port/cluster` (or `/local`).
///
/// The id (this seed modulo the id space, `shards x 2^16`) is written into the ruleset (the
/// `numgen … offset` of the service chain and the `@endpoints` keys) and must stay the same across releases, builds and processes so that an endpoint
/// change only ever changes map elements. So it is a fixed, documented function of the names
/// only, spelled out here (std's hashers are randomly seeded or unspecified across Rust
/// versions). FNV-1a is enough: the input is not adversarial, and the rare collision is
/// resolved by probing (`nft::build::endpoint_ids`).
pub fn endpoint_id_seed(spn: &ServicePortName, which: EndpointSet) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let suffix = match which {
        EndpointSet::Cluster => "/cluster",
        EndpointSet::Local => "/local",
    };
    let base = chain_base(spn);
    let mut h = OFFSET_BASIS;
    for b in base.bytes().chain(suffix.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::L4Proto;

    #[test]
    fn matches_kube_proxy_naming() {
        // kube-proxy's test: service-ULMVA6XW-ns1/svc1/tcp/p80
        let spn = ServicePortName {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port: "p80".into(),
            protocol: L4Proto::Tcp,
        };
        assert_eq!(cluster_chain(&spn), "service-ULMVA6XW-ns1/svc1/tcp/p80");
    }

    #[test]
    fn endpoint_ids_are_fnv1a() {
        // FNV-1a 32 of "ns1/svc1/tcp/p80/cluster" and ".../local", computed independently.
        let spn = ServicePortName {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port: "p80".into(),
            protocol: L4Proto::Tcp,
        };
        let fnv = |s: &str| {
            s.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ b as u32).wrapping_mul(16_777_619)
            })
        };
        assert_eq!(
            endpoint_id_seed(&spn, EndpointSet::Cluster),
            fnv("ns1/svc1/tcp/p80/cluster")
        );
        assert_eq!(
            endpoint_id_seed(&spn, EndpointSet::Local),
            fnv("ns1/svc1/tcp/p80/local")
        );
        // Pinned: a change here changes every deployed ruleset's ids.
        assert_eq!(fnv("a"), 0xe40c_292c);
    }

    #[test]
    fn long_names_are_bounded() {
        let spn = ServicePortName {
            namespace: "n".repeat(63),
            name: "s".repeat(63),
            port: "p".repeat(200),
            protocol: L4Proto::Udp,
        };
        assert!(external_chain(&spn).len() <= 256);
    }
}
