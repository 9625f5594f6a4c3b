//! The flow-test part of `case.yaml`: `flows:` and `topology:`, strictly typed.
//!
//! `tests/common/case.rs` keeps these two fields as raw YAML values (the snapshot tests ignore
//! them); this module turns them into [`Flow`] and [`Topology`], reporting any mistake with the
//! file and the field path (`flows[3].expect.backends[1]`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// Where a flow starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The pod client (an address inside the cluster CIDR, in its own namespace).
    Pod,
    /// The node itself (the node namespace, OUTPUT path; the kernel picks the source address).
    Node,
    /// The external client (an address outside the cluster, in its own namespace).
    External,
    /// A given address: a node IP (node namespace), an endpoint (its own namespace: hairpin),
    /// an address inside the cluster CIDR (pod-client namespace) or any other (external).
    Addr(IpAddr),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pod => f.write_str("pod"),
            Source::Node => f.write_str("node"),
            Source::External => f.write_str("external"),
            Source::Addr(a) => write!(f, "{a}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Which backends must see the node's address instead of the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masquerade {
    /// All of them (`true`) or none (`false`).
    All(bool),
    /// Only these (e.g. hairpin: only the client's own endpoint is masqueraded).
    Only(Vec<SocketAddr>),
}

impl Masquerade {
    pub fn expected_for(&self, backend: &SocketAddr) -> bool {
        match self {
            Masquerade::All(b) => *b,
            Masquerade::Only(v) => v.contains(backend),
        }
    }
}

/// The outcome a flow must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Every try is answered by one of these; over the tries, each of them answers.
    Backends {
        backends: Vec<SocketAddr>,
        masquerade: Masquerade,
    },
    /// No answer (times out), or refused locally by the OUTPUT path (EPERM).
    Drop,
    /// Refused at once (TCP RST or ICMP error: ECONNREFUSED / EHOSTUNREACH / ...).
    Reject,
    /// Reaches the real owner of the destination address, unchanged, source unchanged.
    Untouched,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Drop => f.write_str("drop"),
            Expect::Reject => f.write_str("reject"),
            Expect::Untouched => f.write_str("untouched"),
            Expect::Backends {
                backends,
                masquerade,
            } => {
                let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
                write!(f, "backends [{}]", list.join(", "))?;
                match masquerade {
                    Masquerade::All(true) => f.write_str(", masqueraded"),
                    Masquerade::All(false) => f.write_str(", not masqueraded"),
                    Masquerade::Only(v) => {
                        let list: Vec<String> = v.iter().map(|b| b.to_string()).collect();
                        write!(f, ", masqueraded only at [{}]", list.join(", "))
                    }
                }
            }
        }
    }
}

/// One packet flow of a case.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Index in `flows:` (for messages).
    pub index: usize,
    pub name: Option<String>,
    pub from: Source,
    pub to: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub expect: Expect,
    pub affinity: bool,
    pub tries: Option<u32>,
    /// Loaders that skip this flow, with the reason (`{iptables: "..."}`).
    pub skip: BTreeMap<String, String>,
    /// Loaders whose expected outcome differs by design (`{iptables: untouched}`): the outcome
    /// for them, instead of `expect`.
    pub expect_on: BTreeMap<String, Expect>,
}

/// Whether a `skip:` / `expectOn:` key names this loader: the loader itself, or a family of
/// loaders (`iptables` = `iptables-nft` and `iptables-legacy`).
pub fn loader_matches(key: &str, loader: &str) -> bool {
    loader == key || loader.starts_with(&format!("{key}-"))
}

impl Flow {
    /// The flow as run by `loader`: None if it skips the flow; else with the outcome expected
    /// from that loader (`expectOn`, else `expect`).
    pub fn for_loader(&self, loader: &str) -> Option<Flow> {
        if self.skip.keys().any(|k| loader_matches(k, loader)) {
            return None;
        }
        let mut f = self.clone();
        if let Some((_, e)) = self
            .expect_on
            .iter()
            .find(|(k, _)| loader_matches(k, loader))
        {
            f.expect = e.clone();
        }
        Some(f)
    }

    /// A one-line description: `flows[3] "name": pod -> 172.30.0.10:80/tcp`.
    pub fn label(&self) -> String {
        let to = SocketAddr::new(self.to, self.port);
        match &self.name {
            Some(n) => format!(
                "flows[{}] \"{n}\": {} -> {to}/{}",
                self.index, self.from, self.proto
            ),
            None => format!(
                "flows[{}]: {} -> {to}/{}",
                self.index, self.from, self.proto
            ),
        }
    }

    /// How many connections the flow makes.
    pub fn tries(&self) -> u32 {
        if let Some(t) = self.tries {
            return t;
        }
        match &self.expect {
            Expect::Backends { backends, .. } => {
                if self.affinity {
                    10
                } else {
                    // Enough that a uniform balancer misses some backend with probability < 1e-6.
                    let n = backends.len() as f64;
                    ((n * (n * 1e6).ln()).ceil() as u32).max(20)
                }
            }
            Expect::Drop => 2,
            Expect::Reject | Expect::Untouched => 3,
        }
    }
}

/// Raw form of a flow, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    #[serde(default)]
    name: Option<String>,
    from: String,
    to: String,
    port: u16,
    #[serde(default = "default_proto")]
    proto: Proto,
    expect: Value,
    #[serde(default)]
    affinity: bool,
    #[serde(default)]
    tries: Option<u32>,
    #[serde(default)]
    skip: BTreeMap<String, String>,
    #[serde(default, rename = "expectOn")]
    expect_on: BTreeMap<String, Value>,
    /// Free text, ignored.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

fn default_proto() -> Proto {
    Proto::Tcp
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackends {
    backends: Vec<String>,
    #[serde(default)]
    masquerade: Option<Value>,
}

/// The `topology:` knobs of a case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Topology {
    /// Addresses of the `from: pod` client (one per family used). Default: the last-but-one
    /// address of each cluster CIDR.
    #[serde(default)]
    pub pod_clients: Vec<IpAddr>,
    /// Addresses of the `from: external` client. Default: 203.0.113.7 and 2001:db8:ff::7.
    #[serde(default)]
    pub external_clients: Vec<IpAddr>,
    /// Extra addresses owned by the node but not given to svcc as `--node-ip`.
    #[serde(default)]
    pub node_addresses: Vec<IpAddr>,
    /// Run the flows one after the other instead of in parallel.
    #[serde(default)]
    pub sequential: bool,
}

fn path_err<E: fmt::Display>(prefix: &str, e: serde_path_to_error::Error<E>) -> String {
    let p = e.path().to_string();
    if p == "." || p.is_empty() {
        format!("{prefix}: {}", e.inner())
    } else {
        format!("{prefix}.{p}: {}", e.inner())
    }
}

pub fn parse_topology(v: Option<&Value>) -> Result<Topology, String> {
    match v {
        None | Some(Value::Null) => Ok(Topology::default()),
        Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| path_err("topology", e)),
    }
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{field}: `{s}` is not an IP address"))
}

fn parse_sockaddr(field: &str, s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{field}: `{s}` is not IP:PORT (IPv6 as [ADDR]:PORT)"))
}

pub fn parse_flows(values: &[Value]) -> Result<Vec<Flow>, String> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| parse_flow(i, v))
        .collect()
}

fn parse_flow(index: usize, v: &Value) -> Result<Flow, String> {
    let at = format!("flows[{index}]");
    let raw: RawFlow = serde_path_to_error::deserialize(v.clone()).map_err(|e| path_err(&at, e))?;
    let from = match raw.from.trim() {
        "pod" => Source::Pod,
        "node" => Source::Node,
        "external" => Source::External,
        s => Source::Addr(s.parse().map_err(|_| {
            format!("{at}.from: `{s}` is not `pod`, `node`, `external` or an IP address")
        })?),
    };
    let to = parse_ip(&format!("{at}.to"), &raw.to)?;
    if raw.port == 0 {
        return Err(format!("{at}.port: must be 1-65535"));
    }
    let expect = parse_expect(&format!("{at}.expect"), &raw.expect)?;
    // A mistyped loader would silently never match: only known loaders (or families).
    const LOADERS: [&str; 8] = [
        "ipvs",
        "nft",
        "apply",
        "iptables",
        "iptables-nft",
        "iptables-legacy",
        "userspace",
        "prebuilt",
    ];
    for (field, k) in raw
        .skip
        .keys()
        .map(|k| ("skip", k))
        .chain(raw.expect_on.keys().map(|k| ("expectOn", k)))
    {
        if !LOADERS.contains(&k.as_str()) {
            return Err(format!(
                "{at}.{field}.{k}: unknown loader, expected one of {}",
                LOADERS.join(", ")
            ));
        }
    }
    let mut expect_on = BTreeMap::new();
    for (k, v) in &raw.expect_on {
        if raw.skip.contains_key(k) {
            return Err(format!("{at}.expectOn.{k}: the flow is skipped for `{k}`"));
        }
        expect_on.insert(k.clone(), parse_expect(&format!("{at}.expectOn.{k}"), v)?);
    }
    let fam_ok = |a: &IpAddr| a.is_ipv4() == to.is_ipv4();
    if let Source::Addr(a) = &from {
        if !fam_ok(a) {
            return Err(format!(
                "{at}.from: {a} and to: {to} are not of the same IP family"
            ));
        }
    }
    let expects = std::iter::once(("expect".to_string(), &expect))
        .chain(expect_on.iter().map(|(k, e)| (format!("expectOn.{k}"), e)));
    for (field, e) in expects {
        if let Expect::Backends { backends, .. } = e {
            for (i, b) in backends.iter().enumerate() {
                if !fam_ok(&b.ip()) {
                    return Err(format!(
                        "{at}.{field}.backends[{i}]: {b} is not of the family of to: {to}"
                    ));
                }
            }
        }
    }
    if !matches!(expect, Expect::Backends { .. }) && raw.affinity {
        return Err(format!(
            "{at}.affinity: only meaningful with `expect: {{backends: [...]}}`"
        ));
    }
    if raw.tries == Some(0) {
        return Err(format!("{at}.tries: must be at least 1"));
    }
    Ok(Flow {
        index,
        name: raw.name,
        from,
        to,
        port: raw.port,
        proto: raw.proto,
        expect,
        affinity: raw.affinity,
        tries: raw.tries,
        skip: raw.skip,
        expect_on,
    })
}

fn parse_expect(at: &str, v: &Value) -> Result<Expect, String> {
    match v {
        Value::String(s) => match s.as_str() {
            "drop" => Ok(Expect::Drop),
            "reject" => Ok(Expect::Reject),
            "untouched" => Ok(Expect::Untouched),
            other => Err(format!(
                "{at}: unknown outcome `{other}`, expected `drop`, `reject`, `untouched` or {{backends: [IP:PORT, ...], masquerade: BOOL}}"
            )),
        },
        Value::Mapping(_) => {
            let raw: RawBackends = serde_path_to_error::deserialize(v.clone()).map_err(|e| path_err(at, e))?;
            if raw.backends.is_empty() {
                return Err(format!("{at}.backends: must list at least one IP:PORT"));
            }
            let mut backends = Vec::new();
            for (i, b) in raw.backends.iter().enumerate() {
                let sa = parse_sockaddr(&format!("{at}.backends[{i}]"), b)?;
                if backends.contains(&sa) {
                    return Err(format!("{at}.backends[{i}]: {sa} is listed twice"));
                }
                backends.push(sa);
            }
            let masquerade = match &raw.masquerade {
                None => {
                    return Err(format!(
                        "{at}.masquerade: missing; say `true` or `false` (or a list of the backends that see the node's address)"
                    ))
                }
                Some(Value::Bool(b)) => Masquerade::All(*b),
                Some(Value::Sequence(seq)) => {
                    let mut only = Vec::new();
                    for (i, m) in seq.iter().enumerate() {
                        let f = format!("{at}.masquerade[{i}]");
                        let s = m.as_str().ok_or_else(|| format!("{f}: expected IP:PORT"))?;
                        let sa = parse_sockaddr(&f, s)?;
                        if !backends.contains(&sa) {
                            return Err(format!("{f}: {sa} is not one of the backends"));
                        }
                        only.push(sa);
                    }
                    Masquerade::Only(only)
                }
                Some(_) => return Err(format!("{at}.masquerade: expected true, false or a list of IP:PORT")),
            };
            Ok(Expect::Backends { backends, masquerade })
        }
        _ => Err(format!(
            "{at}: expected `drop`, `reject`, `untouched` or {{backends: [IP:PORT, ...], masquerade: BOOL}}"
        )),
    }
}

/// Checks that mistakes in `flows:` are reported with their field path (run as a trial).
pub fn self_test() -> Result<(), String> {
    let cases: &[(&str, &str)] = &[
        ("- {from: pod, to: 10.0.0.1, port: 80, expec: drop}", "flows[0].expec: unknown field `expec`"),
        ("- {from: pod, to: 10.0.0.1, port: 80}", "flows[0]: missing field `expect`"),
        ("- {from: moon, to: 10.0.0.1, port: 80, expect: drop}", "flows[0].from: `moon`"),
        ("- {from: pod, to: 10.0.0.300, port: 80, expect: drop}", "flows[0].to: `10.0.0.300`"),
        ("- {from: pod, to: 10.0.0.1, port: 70000, expect: drop}", "flows[0].port:"),
        ("- {from: pod, to: 10.0.0.1, port: 80, proto: sctp, expect: drop}", "flows[0].proto:"),
        ("- {from: pod, to: 10.0.0.1, port: 80, expect: dropped}", "flows[0].expect: unknown outcome `dropped`"),
        (
            "- {from: pod, to: 10.0.0.1, port: 80, expect: {backends: [10.0.1.1:80], masq: true}}",
            "flows[0].expect.masq: unknown field `masq`",
        ),
        (
            "- {from: pod, to: 10.0.0.1, port: 80, expect: {backends: [10.0.1.1], masquerade: true}}",
            "flows[0].expect.backends[0]: `10.0.1.1` is not IP:PORT",
        ),
        (
            "- {from: pod, to: 10.0.0.1, port: 80, expect: {backends: [10.0.1.1:80]}}",
            "flows[0].expect.masquerade: missing",
        ),
        (
            "- {from: pod, to: 10.0.0.1, port: 80, expect: {backends: ['[fd00::1]:80'], masquerade: false}}",
            "flows[0].expect.backends[0]: [fd00::1]:80 is not of the family",
        ),
        (
            "- {from: pod, to: 10.0.0.1, port: 80, expect: {backends: [10.0.1.1:80], masquerade: [10.0.1.2:80]}}",
            "flows[0].expect.masquerade[0]: 10.0.1.2:80 is not one of the backends",
        ),
        ("- {from: pod, to: 10.0.0.1, port: 80, affinity: true, expect: drop}", "flows[0].affinity:"),
        (
            "- {from: pod, to: 10.0.0.1, port: 80, expect: drop}\n- {from: pod, to: 10.0.0.1, port: 80, expect: drop, tries: 0}",
            "flows[1].tries: must be at least 1",
        ),
    ];
    let mut bad = Vec::new();
    for (yaml, want) in cases {
        let v: Vec<Value> = serde_yaml_ng::from_str(yaml).map_err(|e| format!("{yaml}: {e}"))?;
        match parse_flows(&v) {
            Ok(_) => bad.push(format!("accepted: {yaml}")),
            Err(e) if e.contains(want) => {}
            Err(e) => bad.push(format!("{yaml}\n  error:    {e}\n  expected: ...{want}...")),
        }
    }
    let topo: Value = serde_yaml_ng::from_str("{podClient: [10.0.0.1]}").unwrap();
    match parse_topology(Some(&topo)) {
        Err(e) if e.contains("topology.podClient: unknown field `podClient`") => {}
        other => bad.push(format!("topology typo: {other:?}")),
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}
