//! API objects as compile-session sources: each object is one source named by its kind,
//! namespace and name, whose text is the object's JSON with only what lowering reads (so
//! that an update of a field svcc ignores — a Node's heartbeat, a resourceVersion, managed
//! fields — leaves the text, and so the ruleset, untouched, and memory holds only what
//! matters).

use std::net::IpAddr;

use serde_json::{Map, Value};

/// The kinds `svcc run` lists and watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
}

impl Kind {
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ServiceCidr => "networking.k8s.io/v1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ServiceCidr => "ServiceCIDR",
        }
    }
}

/// The session source name of an object: `api/Kind/namespace/name`, or `api/Kind/name` for
/// cluster-scoped kinds. Diagnostics name it.
pub fn key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("api/{}/{ns}/{name}", kind.name()),
        None => format!("api/{}/{name}", kind.name()),
    }
}

/// The kind, namespace and name of a session source made by [`key`]; None for other sources.
pub fn parse_key(key: &str) -> Option<(Kind, Option<&str>, &str)> {
    let rest = key.strip_prefix("api/")?;
    let (kind, rest) = rest.split_once('/')?;
    let kind = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCidr,
    ]
    .into_iter()
    .find(|k| k.name() == kind)?;
    Some(match rest.split_once('/') {
        Some((ns, name)) => (kind, Some(ns), name),
        None => (kind, None, rest),
    })
}

/// The metadata fields lowering reads.
const KEPT_METADATA: &[&str] = &["name", "namespace", "labels"];

/// The object (as the API server sent it) reduced to what lowering reads, with its
/// apiVersion and kind (list items have none), as compact JSON; and its key.
pub fn source_text(kind: Kind, obj: Value) -> (String, String) {
    let Value::Object(mut o) = obj else {
        // Not an object: the session reports it as such (nothing to key it by).
        return (key(kind, None, "<not an object>"), obj.to_string());
    };
    let mut meta = match o.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.retain(|k, _| KEPT_METADATA.contains(&k.as_str()));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut out = Map::new();
    out.insert("apiVersion".into(), kind.api_version().into());
    out.insert("kind".into(), kind.name().into());
    out.insert("metadata".into(), Value::Object(meta));
    match kind {
        // The node's zone label (metadata) and addresses; nothing of its ever-changing status.
        Kind::Node => {
            let addrs = o
                .get_mut("status")
                .and_then(|s| s.get_mut("addresses"))
                .map(Value::take);
            if let Some(a) = addrs {
                let mut st = Map::new();
                st.insert("addresses".into(), a);
                out.insert("status".into(), Value::Object(st));
            }
        }
        // Services: spec and the load balancer's status (its conditions are not read).
        Kind::Service => {
            if let Some(spec) = o.remove("spec") {
                out.insert("spec".into(), spec);
            }
            let lb = o
                .get_mut("status")
                .and_then(|s| s.get_mut("loadBalancer"))
                .map(Value::take);
            if let Some(lb) = lb {
                let mut st = Map::new();
                st.insert("loadBalancer".into(), lb);
                out.insert("status".into(), Value::Object(st));
            }
        }
        Kind::EndpointSlice => {
            for f in ["addressType", "endpoints", "ports"] {
                if let Some(v) = o.remove(f) {
                    out.insert(f.into(), v);
                }
            }
        }
        Kind::ServiceCidr => {
            if let Some(spec) = o.remove("spec") {
                out.insert("spec".into(), spec);
            }
        }
    }
    let k = match kind {
        Kind::Node | Kind::ServiceCidr => key(kind, None, &name),
        _ => key(kind, Some(ns.as_deref().unwrap_or_default()), &name),
    };
    (k, Value::Object(out).to_string())
}

/// The node IPs kube-proxy takes from its Node when `--node-ip` is not given
/// (`GetNodeHostIPs`): the InternalIPs, else the ExternalIPs; the first of each family, the
/// family of the first address first.
pub fn node_ips(node_text: &str) -> Vec<IpAddr> {
    let Ok(v) = serde_json::from_str::<Value>(node_text) else {
        return Vec::new();
    };
    let addrs: Vec<(&str, IpAddr)> = v
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let t = a.get("type")?.as_str()?;
            let ip = a.get("address")?.as_str()?.parse().ok()?;
            Some((t, ip))
        })
        .collect();
    let mut all: Vec<IpAddr> = ["InternalIP", "ExternalIP"]
        .iter()
        .flat_map(|t| addrs.iter().filter(move |(k, _)| k == t).map(|(_, ip)| *ip))
        .collect();
    let mut out: Vec<IpAddr> = Vec::new();
    all.retain(|ip| {
        let fresh = !out.iter().any(|o| o.is_ipv4() == ip.is_ipv4());
        if fresh {
            out.push(*ip);
        }
        fresh
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_keep_only_what_lowering_reads() {
        let node = json!({
            "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"topology.kubernetes.io/zone": "z"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"conditions": [{"lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
                       "addresses": [{"type": "Hostname", "address": "n1"},
                                     {"type": "ExternalIP", "address": "2001:db8::9"},
                                     {"type": "ExternalIP", "address": "203.0.113.1"},
                                     {"type": "InternalIP", "address": "192.168.0.2"},
                                     {"type": "InternalIP", "address": "192.168.0.3"}]}
        });
        let (k, text) = source_text(Kind::Node, node);
        assert_eq!(k, "api/Node/n1");
        assert_eq!(
            text,
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"labels":{"topology.kubernetes.io/zone":"z"},"name":"n1"},"status":{"addresses":[{"address":"n1","type":"Hostname"},{"address":"2001:db8::9","type":"ExternalIP"},{"address":"203.0.113.1","type":"ExternalIP"},{"address":"192.168.0.2","type":"InternalIP"},{"address":"192.168.0.3","type":"InternalIP"}]}}"#
        );
        let ips: Vec<String> = node_ips(&text).iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["192.168.0.2", "2001:db8::9"]);

        let slice = json!({"metadata": {"name": "s", "namespace": "d", "uid": "u",
            "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
            "endpoints": [], "ports": null});
        let (k, text) = source_text(Kind::EndpointSlice, slice);
        assert_eq!(k, "api/EndpointSlice/d/s");
        assert_eq!(parse_key(&k), Some((Kind::EndpointSlice, Some("d"), "s")));
        assert_eq!(parse_key("api/Node/n1"), Some((Kind::Node, None, "n1")));
        assert_eq!(parse_key("/etc/x.yaml"), None);
        assert_eq!(
            text,
            r#"{"addressType":"IPv4","apiVersion":"discovery.k8s.io/v1","endpoints":[],"kind":"EndpointSlice","metadata":{"labels":{"kubernetes.io/service-name":"web"},"name":"s","namespace":"d"},"ports":null}"#
        );
    }
}
