//! The fixture-case format shared by the snapshot tests and the packet-flow tests.
//!
//! A case is a directory `fixtures/cases/<name>/` holding:
//! - `case.yaml`: the node settings (and, for flow tests, the flows); schema below;
//! - one or more manifest files (`*.yaml`, `*.json`) — everything except `case.yaml`
//!   and `kube-proxy.yaml` is handed to `svcc compile` as input;
//! - optionally `kube-proxy.yaml`: a KubeProxyConfiguration passed with `--config`.
//!
//! Adding a case needs no Rust: drop a directory in and run the tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    /// One line: what the case shows.
    pub description: String,
    /// Node settings, turned into `svcc compile` flags by [`Case::compile_args`].
    #[serde(default)]
    pub node: Node,
    /// Extra raw flags for `svcc compile` (e.g. `--keep-going`).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Packet flows (used by the flow tests; ignored by the snapshot tests).
    #[serde(default)]
    pub flows: Vec<serde_yaml_ng::Value>,
    /// Flow-test knobs (client addresses, etc.); schema owned by the flow tests.
    #[serde(default)]
    pub topology: Option<serde_yaml_ng::Value>,
    /// Backends that behave differently by design (skip in flow tests), with the reason.
    #[serde(default)]
    pub skip_flows: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// `--hostname-override` (default `node-a`).
    pub name: Option<String>,
    /// `--node-ip`: the node's addresses (IPv4 and/or IPv6).
    #[serde(default)]
    pub ips: Vec<String>,
    /// `--cluster-cidr` (comma-joined).
    #[serde(default)]
    pub cluster_cidr: Vec<String>,
    /// `--masquerade-all`.
    #[serde(default)]
    pub masquerade_all: bool,
    /// `--nodeport-addresses` (comma-joined CIDRs, or `primary`).
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
    /// `--service-cidr` (comma-joined).
    #[serde(default)]
    pub service_cidr: Vec<String>,
}

impl Case {
    pub fn load(dir: &Path) -> Result<Case, String> {
        let path = dir.join("case.yaml");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The node name the case runs as.
    pub fn node_name(&self) -> &str {
        self.node.name.as_deref().unwrap_or("node-a")
    }

    /// Flags for `svcc compile`, then the input paths (relative to the case directory).
    pub fn compile_args(&self, dir: &Path) -> Vec<String> {
        let mut a = vec![
            "--hostname-override".to_string(),
            self.node_name().to_string(),
        ];
        if dir.join("kube-proxy.yaml").exists() {
            a.push("--config".into());
            a.push(dir.join("kube-proxy.yaml").display().to_string());
        }
        if !self.node.ips.is_empty() {
            a.push("--node-ip".into());
            a.push(self.node.ips.join(","));
        }
        if !self.node.cluster_cidr.is_empty() {
            a.push("--cluster-cidr".into());
            a.push(self.node.cluster_cidr.join(","));
        }
        if self.node.masquerade_all {
            a.push("--masquerade-all".into());
        }
        if !self.node.node_port_addresses.is_empty() {
            a.push("--nodeport-addresses".into());
            a.push(self.node.node_port_addresses.join(","));
        }
        if !self.node.service_cidr.is_empty() {
            a.push("--service-cidr".into());
            a.push(self.node.service_cidr.join(","));
        }
        a.extend(self.extra_args.iter().cloned());
        for f in manifest_files(dir) {
            a.push(f.display().to_string());
        }
        a
    }
}

/// The manifest inputs of a case, sorted.
pub fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext_ok = name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
        ext_ok && name != "case.yaml" && name != "kube-proxy.yaml"
    });
    v.sort();
    v
}

/// Every case directory under `fixtures/cases`, sorted by name. Panics when there is none
/// (an unreadable checkout, e.g. in a VM that does not see it): a suite that finds no case
/// must fail, not pass having checked nothing.
pub fn all_cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cases");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("case.yaml").exists())
        .collect();
    assert!(!v.is_empty(), "no case.yaml under {}", root.display());
    v.sort();
    v
}
