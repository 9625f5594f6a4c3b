//! What the flow tests need to know from a case's manifests: which addresses are endpoints
//! (each gets its own namespace and a server on every endpoint port) and which are Service
//! addresses (owned by the "other" namespace, so traffic the rules leave alone is answered).
//!
//! This is deliberately shallow: `svcc compile` is the authority on what the manifests mean.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

#[derive(Debug, Default, Clone)]
pub struct Scan {
    /// Every endpoint address (EndpointSlice `endpoints[].addresses`, Endpoints `subsets[].addresses`
    /// and `notReadyAddresses`).
    pub endpoint_ips: BTreeSet<IpAddr>,
    /// Every endpoint port number (EndpointSlice `ports[].port`, Endpoints `subsets[].ports[].port`).
    pub endpoint_ports: BTreeSet<u16>,
    /// ClusterIPs, externalIPs, loadBalancerIP and load-balancer ingress IPs.
    pub service_ips: BTreeSet<IpAddr>,
}

pub fn scan(files: &[std::path::PathBuf]) -> Result<Scan, String> {
    let mut s = Scan::default();
    for f in files {
        scan_file(f, &mut s)?;
    }
    Ok(s)
}

fn scan_file(path: &Path, s: &mut Scan) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let v = Value::deserialize(doc)
            .map_err(|e| format!("{}: document {}: {e}", path.display(), i + 1))?;
        scan_object(&v, s);
    }
    Ok(())
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    Some(cur)
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> impl Iterator<Item = &'a Value> {
    get(v, path)
        .and_then(|x| x.as_sequence())
        .into_iter()
        .flatten()
}

fn ip_of(v: &Value) -> Option<IpAddr> {
    v.as_str().and_then(|s| s.trim().parse().ok())
}

fn port_of(v: &Value) -> Option<u16> {
    v.get("port")
        .and_then(|p| p.as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

fn scan_object(v: &Value, s: &mut Scan) {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    match kind {
        "List" | "ServiceList" | "EndpointSliceList" | "EndpointsList" => {
            for item in seq(v, &["items"]) {
                scan_object(item, s);
            }
        }
        "EndpointSlice" => {
            for ep in seq(v, &["endpoints"]) {
                s.endpoint_ips
                    .extend(seq(ep, &["addresses"]).filter_map(ip_of));
            }
            s.endpoint_ports
                .extend(seq(v, &["ports"]).filter_map(port_of));
        }
        "Endpoints" => {
            for sub in seq(v, &["subsets"]) {
                for key in ["addresses", "notReadyAddresses"] {
                    for a in seq(sub, &[key]) {
                        if let Some(ip) = a.get("ip").and_then(ip_of) {
                            s.endpoint_ips.insert(ip);
                        }
                    }
                }
                s.endpoint_ports
                    .extend(seq(sub, &["ports"]).filter_map(port_of));
            }
        }
        "Service" => {
            if let Some(ip) = get(v, &["spec", "clusterIP"]).and_then(ip_of) {
                s.service_ips.insert(ip);
            }
            s.service_ips
                .extend(seq(v, &["spec", "clusterIPs"]).filter_map(ip_of));
            s.service_ips
                .extend(seq(v, &["spec", "externalIPs"]).filter_map(ip_of));
            if let Some(ip) = get(v, &["spec", "loadBalancerIP"]).and_then(ip_of) {
                s.service_ips.insert(ip);
            }
            for ing in seq(v, &["status", "loadBalancer", "ingress"]) {
                if let Some(ip) = ing.get("ip").and_then(ip_of) {
                    s.service_ips.insert(ip);
                }
            }
        }
        _ => {}
    }
}
