//! The per-case topology: which namespace owns which address, and building it.
//!
//! ```text
//!   pod  (pod clients, in clusterCIDR) ─┐
//!   ext  (external clients)           ─┤
//!   e0, e1, ... (one per endpoint IP) ─┼─ veth ─ node (node IPs on `node0`, forwarding,
//!   oth  (Service IPs, other dests)   ─┘                 rp_filter off; the ruleset under test)
//! ```
//!
//! Every leaf namespace has one veth (`eth0`) to the node and a default route through it; the
//! node routes each leaf address to its veth (static neighbours, so there is no ARP/ND), and
//! everything else to `oth`. Every address of every namespace has a server on every port the
//! case mentions (flow ports and endpoint ports), TCP and UDP, so "untouched" traffic is
//! answered by the real owner of its destination and DNATed traffic by its backend.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::manifest::Scan;
use crate::netns::{self, NsSet};
use crate::schema::{Flow, Source, Topology};

/// A CIDR, parsed just enough to test membership and pick an address.
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a CIDR"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("`{s}` is not a CIDR"))?;
        let len: u8 = l.parse().map_err(|_| format!("`{s}` is not a CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("`{s}`: prefix longer than {max}"));
        }
        Ok(Cidr { addr, len })
    }

    fn bits(a: &IpAddr) -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u32::from(*v) as u128, 32),
            IpAddr::V6(v) => (u128::from(*v), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, w) = Self::bits(&self.addr);
        let host = w - self.len as u32;
        let all = if w == 128 {
            u128::MAX
        } else {
            (1u128 << w) - 1
        };
        if host >= 128 {
            0
        } else {
            all & !((1u128 << host) - 1)
        }
    }

    pub fn contains(&self, a: &IpAddr) -> bool {
        if a.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let m = self.mask();
        (Self::bits(a).0 & m) == (Self::bits(&self.addr).0 & m)
    }

    /// The last-but-one address (the last is the broadcast address in IPv4).
    pub fn last_but_one(&self) -> IpAddr {
        let (b, w) = Self::bits(&self.addr);
        let all = if w == 128 {
            u128::MAX
        } else {
            (1u128 << w) - 1
        };
        let last = (b & self.mask()) | (all & !self.mask());
        let v = last - 1;
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Pod,
    Ext,
    Other,
    Endpoint(usize),
}

impl Role {
    pub fn tag(&self) -> String {
        match self {
            Role::Node => "node".into(),
            Role::Pod => "pod".into(),
            Role::Ext => "ext".into(),
            Role::Other => "oth".into(),
            Role::Endpoint(i) => format!("e{i}"),
        }
    }
}

/// One namespace and the addresses it owns.
#[derive(Debug, Clone)]
pub struct Host {
    pub role: Role,
    pub addrs: Vec<IpAddr>,
}

/// The addressing plan of a case (pure; [`Plan::build`] makes it real).
#[derive(Debug, Clone)]
pub struct Plan {
    pub hosts: Vec<Host>,
    /// Every address → index in `hosts`.
    pub owner: BTreeMap<IpAddr, usize>,
    /// The node's addresses (masquerade shows as one of these).
    pub node_ips: Vec<IpAddr>,
    pub pod_clients: Vec<IpAddr>,
    pub ext_clients: Vec<IpAddr>,
    /// Ports every server listens on (TCP and UDP).
    pub ports: BTreeSet<u16>,
}

const NODE_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GW4: &str = "169.254.1.1";
const GW6: &str = "fe80::1";
const OTHER_GW4: &str = "169.254.1.2";
const OTHER_GW6: &str = "fe80::2";

fn leaf_mac(i: usize) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

fn host_prefix(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

impl Plan {
    pub fn new(
        node_ips_arg: &[String],
        cluster_cidr_arg: &[String],
        topo: &Topology,
        scan: &Scan,
        flows: &[Flow],
    ) -> Result<Plan, String> {
        let mut node_ips: Vec<IpAddr> = Vec::new();
        for (i, s) in node_ips_arg.iter().enumerate() {
            let ip: IpAddr = s
                .trim()
                .parse()
                .map_err(|_| format!("node.ips[{i}]: `{s}` is not an IP address"))?;
            if !node_ips.contains(&ip) {
                node_ips.push(ip);
            }
        }
        for ip in &topo.node_addresses {
            if !node_ips.contains(ip) {
                node_ips.push(*ip);
            }
        }
        let mut cluster_cidrs = Vec::new();
        for (i, s) in cluster_cidr_arg.iter().enumerate() {
            cluster_cidrs.push(Cidr::parse(s).map_err(|e| format!("node.clusterCidr[{i}]: {e}"))?);
        }
        let pod_clients: Vec<IpAddr> = if topo.pod_clients.is_empty() {
            cluster_cidrs.iter().map(|c| c.last_but_one()).collect()
        } else {
            topo.pod_clients.clone()
        };
        let ext_clients: Vec<IpAddr> = if topo.external_clients.is_empty() {
            vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8:ff::7".parse().unwrap(),
            ]
        } else {
            topo.external_clients.clone()
        };

        let mut hosts = vec![
            Host {
                role: Role::Node,
                addrs: node_ips.clone(),
            },
            Host {
                role: Role::Pod,
                addrs: Vec::new(),
            },
            Host {
                role: Role::Ext,
                addrs: Vec::new(),
            },
            Host {
                role: Role::Other,
                addrs: Vec::new(),
            },
        ];
        let (node, pod, ext, other) = (0, 1, 2, 3);
        let mut owner: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for ip in &node_ips {
            owner.insert(*ip, node);
        }
        owner.insert(IpAddr::V4(Ipv4Addr::LOCALHOST), node);
        owner.insert(IpAddr::V6(Ipv6Addr::LOCALHOST), node);
        let claim =
            |hosts: &mut Vec<Host>, owner: &mut BTreeMap<IpAddr, usize>, ip: IpAddr, h: usize| {
                if let std::collections::btree_map::Entry::Vacant(e) = owner.entry(ip) {
                    e.insert(h);
                    hosts[h].addrs.push(ip);
                }
            };
        for ip in &scan.endpoint_ips {
            if owner.contains_key(ip) {
                continue; // a host-network endpoint: served by the node itself
            }
            let idx = hosts.len();
            hosts.push(Host {
                role: Role::Endpoint(idx - 4),
                addrs: Vec::new(),
            });
            claim(&mut hosts, &mut owner, *ip, idx);
        }
        for ip in &pod_clients {
            if owner.contains_key(ip) {
                return Err(format!(
                    "topology.podClients: {ip} is already a node or endpoint address"
                ));
            }
            claim(&mut hosts, &mut owner, *ip, pod);
        }
        for ip in &ext_clients {
            if owner.contains_key(ip) {
                return Err(format!(
                    "topology.externalClients: {ip} is already a node, endpoint or pod address"
                ));
            }
            claim(&mut hosts, &mut owner, *ip, ext);
        }
        // Sources given as addresses, that nobody owns yet: pod client or external client.
        for f in flows {
            if let Source::Addr(a) = f.from {
                if !owner.contains_key(&a) {
                    let h = if cluster_cidrs.iter().any(|c| c.contains(&a)) {
                        pod
                    } else {
                        ext
                    };
                    claim(&mut hosts, &mut owner, a, h);
                }
            }
        }
        // Every destination nobody owns yet, and every Service address, belongs to "other".
        for f in flows {
            if let Source::Addr(a) = f.from {
                if scan.service_ips.contains(&a) {
                    return Err(format!(
                        "{}: from: {a} is a Service address in the manifests; it cannot be a client",
                        f.label()
                    ));
                }
            }
        }
        for ip in scan.service_ips.iter().chain(flows.iter().map(|f| &f.to)) {
            if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                continue;
            }
            claim(&mut hosts, &mut owner, *ip, other);
        }
        let mut ports: BTreeSet<u16> = scan.endpoint_ports.clone();
        ports.extend(flows.iter().map(|f| f.port));
        Ok(Plan {
            hosts,
            owner,
            node_ips,
            pod_clients,
            ext_clients,
            ports,
        })
    }

    pub fn is_node_ip(&self, ip: &IpAddr) -> bool {
        self.node_ips.contains(ip)
    }

    /// Creates the namespaces, links, addresses and routes. The returned set removes them on drop.
    pub fn build(&self, tag: &str) -> Result<Built, String> {
        let roles: Vec<String> = self.hosts.iter().map(|h| h.role.tag()).collect();
        let ns = NsSet::create(tag, &roles)?;
        let names = ns.names.clone();
        let node_ns = names[0].clone();

        // Sysctls first: new interfaces copy the `default` settings of their namespace.
        let mut common: Vec<(&str, &str)> = vec![
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
            ("net/ipv6/conf/all/accept_dad", "0"),
            ("net/ipv6/conf/default/accept_dad", "0"),
            ("net/ipv6/conf/all/accept_ra", "0"),
            ("net/ipv6/conf/default/accept_ra", "0"),
            // No ICMP rate limits: a REJECT must show on every try, not on the first six.
            ("net/ipv4/icmp_ratemask", "0"),
            ("net/ipv4/icmp_msgs_per_sec", "1000000"),
            ("net/ipv4/icmp_msgs_burst", "1000000"),
            ("net/ipv6/icmp/ratelimit", "0"),
        ];
        let leaf_settings = common.clone();
        common.extend([
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/conf/all/send_redirects", "0"),
            ("net/ipv4/conf/default/send_redirects", "0"),
        ]);
        let mut per_ns: Vec<(String, Vec<(&str, &str)>)> = vec![(node_ns.clone(), common)];
        for n in &names[1..] {
            per_ns.push((n.clone(), leaf_settings.clone()));
        }
        netns::sysctls_many(&per_ns)?;

        // The node.
        let mut node = vec![
            "link set lo up".to_string(),
            // The node's "NIC": a veth whose peer stays unplugged in the node namespace (no
            // dummy driver needed). The first device with an address after lo, so masquerade
            // picks a node IP for interfaces that have none.
            "link add node0 type veth peer name node0p".to_string(),
            "link set node0 up".to_string(),
            "link set node0p up".to_string(),
        ];
        for ip in &self.node_ips {
            let nodad = if ip.is_ipv6() { " nodad" } else { "" };
            node.push(format!(
                "addr add {ip}/{} dev node0{nodad}",
                host_prefix(ip)
            ));
        }
        for (i, h) in self.hosts.iter().enumerate().skip(1) {
            let mac = leaf_mac(i);
            let v = format!("v{i}");
            node.push(format!(
                "link add {v} address {NODE_MAC} type veth peer name eth0 address {mac} netns {}",
                names[i]
            ));
            node.push(format!("link set {v} up"));
            if h.role == Role::Other {
                node.push(format!(
                    "neigh add {OTHER_GW4} lladdr {mac} dev {v} nud permanent"
                ));
                node.push(format!(
                    "route add 0.0.0.0/0 via {OTHER_GW4} dev {v} onlink"
                ));
                node.push(format!(
                    "neigh add {OTHER_GW6} lladdr {mac} dev {v} nud permanent"
                ));
                node.push(format!("route add ::/0 via {OTHER_GW6} dev {v}"));
            } else {
                for a in &h.addrs {
                    node.push(format!("route add {a}/{} dev {v}", host_prefix(a)));
                    node.push(format!("neigh add {a} lladdr {mac} dev {v} nud permanent"));
                }
            }
        }
        netns::ip_batch(Some(&node_ns), &node)?;

        // The leaves.
        for (i, h) in self.hosts.iter().enumerate().skip(1) {
            let dev = if h.role == Role::Other { "lo" } else { "eth0" };
            let mut l = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
            for a in &h.addrs {
                let nodad = if a.is_ipv6() { " nodad" } else { "" };
                l.push(format!("addr add {a}/{} dev {dev}{nodad}", host_prefix(a)));
            }
            l.push(format!(
                "neigh add {GW4} lladdr {NODE_MAC} dev eth0 nud permanent"
            ));
            l.push(format!("route add 0.0.0.0/0 via {GW4} dev eth0 onlink"));
            l.push(format!(
                "neigh add {GW6} lladdr {NODE_MAC} dev eth0 nud permanent"
            ));
            l.push(format!("route add ::/0 via {GW6} dev eth0"));
            netns::ip_batch(Some(&names[i]), &l)?;
        }
        Ok(Built { ns })
    }

    /// A readable summary, for failure reports.
    pub fn describe(&self, names: &[String]) -> String {
        let mut s = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let addrs: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
            let name = names.get(i).map(|n| n.as_str()).unwrap_or("?");
            s.push_str(&format!(
                "  {:<5} {name}: {}\n",
                h.role.tag(),
                addrs.join(", ")
            ));
        }
        s
    }
}

/// The namespaces of a built topology (removed on drop).
pub struct Built {
    pub ns: NsSet,
}
