//! The deployment files under `deploy/` (docs/DEPLOY.md) checked against what they deploy:
//!
//! - every manifest document is parsed into its k8s-openapi type, and a field the type does not
//!   know is an error. k8s-openapi ignores unknown fields, so each document is round-tripped
//!   (typed → JSON) and compared with the original: whatever the schema dropped (a typo such as
//!   `hostNetwrok`, a field at the wrong level) or changed is reported with its path;
//! - the DaemonSet's command line is accepted by the real `svcc run` parser, its ConfigMap's
//!   KubeProxyConfiguration by `svcc compile --config` (and every field in it is one svcc
//!   reads), the ClusterRole grants exactly the verbs the API source uses, probes hit the health
//!   port, the mounted ConfigMap is where `--config` points;
//! - as root: `svcc run`, with the DaemonSet's flags and config, in a fresh network namespace
//!   with only the capabilities the DaemonSet grants, programs its rules (and fails without
//!   them);
//! - the Dockerfile and the systemd unit agree with the binary (name, path, flags, libnftnl
//!   version); the unit passes `systemd-analyze verify` when that tool is installed. The image
//!   itself is not built here (no container runtime on these machines).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

const SVCC: &str = env!("CARGO_BIN_EXE_svcc");

/// The API access of `svcc run` (the API source's contract, issue 12): (API group, resource) →
/// verbs. The ClusterRole must grant exactly these.
const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("networking.k8s.io", "servicecidrs", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// Fields of the KubeProxyConfiguration that `svcc compile` does not read because only
/// `svcc run` does (the API connection).
const RUN_ONLY_CONFIG_FIELDS: &[&str] = &["clientConnection.kubeconfig"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Schema: typed parse + round trip

/// Where a field is, as `spec.template.spec.containers[0].args`.
fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else if seg.starts_with('[') {
        format!("{path}{seg}")
    } else {
        format!("{path}.{seg}")
    }
}

/// Every field of `orig` that `typed` (the same document after a trip through its schema
/// type) lost or changed, with its path.
fn schema_losses(orig: &Json, typed: &Json, path: &str, out: &mut Vec<String>) {
    match (orig, typed) {
        (Json::Object(o), Json::Object(t)) => {
            for (k, v) in o {
                let p = join(path, k);
                match t.get(k) {
                    Some(tv) => schema_losses(v, tv, &p, out),
                    // An explicit null is the same as absent for the API server.
                    None if v.is_null() => {}
                    None => out.push(format!("{p}: unknown field (not in the schema)")),
                }
            }
        }
        (Json::Array(o), Json::Array(t)) if o.len() == t.len() => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                schema_losses(ov, tv, &join(path, &format!("[{i}]")), out);
            }
        }
        (Json::Number(a), Json::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} read as {b}")),
    }
}

/// Parses one document into `T` (errors with the field path), and fails on any field the
/// schema does not hold.
fn typed<T: DeserializeOwned + Serialize>(origin: &str, doc: &Json) -> Result<T, Vec<String>> {
    let t: T = serde_path_to_error::deserialize(doc.clone())
        .map_err(|e| vec![format!("{origin}: {}: {}", e.path(), e.inner())])?;
    let back = serde_json::to_value(&t).expect("a k8s-openapi object serializes");
    let mut losses = Vec::new();
    schema_losses(doc, &back, "", &mut losses);
    if losses.is_empty() {
        Ok(t)
    } else {
        Err(losses
            .into_iter()
            .map(|l| format!("{origin}: {l}"))
            .collect())
    }
}

/// The documents of a (multi-document) YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Json> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .enumerate()
        .filter_map(|(i, de)| {
            let v = Yaml::deserialize(de)
                .unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1));
            (!v.is_null()).then(|| {
                serde_json::to_value(&v).unwrap_or_else(|e| {
                    panic!("{} document {}: not JSON-like: {e}", path.display(), i + 1)
                })
            })
        })
        .collect()
}

/// The objects of deploy/, each typed and schema-checked.
#[derive(Default)]
struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    /// Files read (names relative to deploy/).
    files: BTreeSet<String>,
}

/// The manifest files of deploy/: every `*.yaml` but the kustomization.
fn manifest_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                && p.file_name().unwrap() != "kustomization.yaml"
        })
        .collect();
    v.sort();
    v
}

fn load_from(files: &[PathBuf]) -> Result<Manifests, Vec<String>> {
    let mut m = Manifests::default();
    let mut errors = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        m.files.insert(name.clone());
        for (i, doc) in documents(path).into_iter().enumerate() {
            let s = |k: &str| doc.get(k).and_then(Json::as_str).unwrap_or("").to_string();
            let (api, kind) = (s("apiVersion"), s("kind"));
            let obj = doc
                .pointer("/metadata/name")
                .and_then(Json::as_str)
                .unwrap_or("?");
            let origin = format!("deploy/{name} document {} ({kind} {obj})", i + 1);
            let r = match (api.as_str(), kind.as_str()) {
                ("v1", "ServiceAccount") => {
                    typed(&origin, &doc).map(|o| m.service_accounts.push(o))
                }
                ("v1", "ConfigMap") => typed(&origin, &doc).map(|o| m.config_maps.push(o)),
                ("apps/v1", "DaemonSet") => typed(&origin, &doc).map(|o| m.daemon_sets.push(o)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    typed(&origin, &doc).map(|o| m.cluster_roles.push(o))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    typed(&origin, &doc).map(|o| m.bindings.push(o))
                }
                _ => Err(vec![format!(
                    "{origin}: no schema known for apiVersion {api:?} kind {kind:?}"
                )]),
            };
            if let Err(e) = r {
                errors.extend(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(m)
    } else {
        Err(errors)
    }
}

fn load() -> Manifests {
    load_from(&manifest_files()).unwrap_or_else(|e| panic!("invalid manifests:\n{}", e.join("\n")))
}

#[test]
fn every_manifest_matches_the_kubernetes_schema() {
    let m = load();
    assert_eq!(m.daemon_sets.len(), 1, "one DaemonSet");
    assert_eq!(m.config_maps.len(), 1, "one ConfigMap");
    assert_eq!(m.service_accounts.len(), 1, "one ServiceAccount");
    assert_eq!(m.cluster_roles.len(), 1, "one ClusterRole");
    assert_eq!(m.bindings.len(), 1, "one ClusterRoleBinding");
}

/// The checker itself: a misspelt field, a field at the wrong level and a wrong type are
/// caught, with their paths.
#[test]
fn the_schema_check_reports_unknown_and_mistyped_fields() {
    let dir = TempDir::new("schema");
    let bad = dir.0.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {}\n  \
         template:\n    spec:\n      hostNetwrok: true\n      containers:\n      - name: c\n        \
         image: i\n        readOnlyRootFilesystem: true\n---\napiVersion: v1\nkind: ServiceAccount\n\
         metadata: {name: x}\nautomountServiceAccountToken: \"yes\"\n---\napiVersion: v1\n\
         kind: Secret\nmetadata: {name: x}\n",
    )
    .unwrap();
    let errors = match load_from(&[bad]) {
        Ok(_) => panic!("the bad manifests were accepted"),
        Err(e) => e.join("\n"),
    };
    for want in [
        "spec.template.spec.hostNetwrok: unknown field",
        "spec.template.spec.containers[0].readOnlyRootFilesystem: unknown field",
        "automountServiceAccountToken: invalid type",
        "no schema known for apiVersion \"v1\" kind \"Secret\"",
    ] {
        assert!(errors.contains(want), "{want:?} not reported in:\n{errors}");
    }
}

// ---------------------------------------------------------------------------------------------
// The DaemonSet and what it refers to

struct Deployed {
    m: Manifests,
}

impl Deployed {
    fn new() -> Deployed {
        Deployed { m: load() }
    }

    fn pod(&self) -> &PodSpec {
        let ds = &self.m.daemon_sets[0];
        ds.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .expect("pod spec")
    }

    fn container(&self) -> &Container {
        let c = &self.pod().containers;
        assert_eq!(c.len(), 1, "one container");
        &c[0]
    }

    fn args(&self) -> &[String] {
        self.container().args.as_deref().unwrap_or(&[])
    }

    /// The value of `--name=value` or `--name value` in the container's args.
    fn flag(&self, name: &str) -> Option<String> {
        flag_value(self.args(), name)
    }

    fn config_map(&self) -> &ConfigMap {
        &self.m.config_maps[0]
    }

    fn config_data(&self, key: &str) -> &str {
        self.config_map()
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .unwrap_or_else(|| panic!("ConfigMap has no key {key:?}"))
    }

    /// Where each ConfigMap key appears in the container: path → key.
    fn mounted_config_files(&self) -> BTreeMap<String, String> {
        let cm_name = self.config_map().metadata.name.clone().unwrap();
        let mut files = BTreeMap::new();
        for v in self.pod().volumes.iter().flatten() {
            let Some(src) = &v.config_map else { continue };
            if src.name != cm_name {
                continue;
            }
            for mount in self.container().volume_mounts.iter().flatten() {
                if mount.name != v.name {
                    continue;
                }
                assert_eq!(mount.read_only, Some(true), "ConfigMap mounted read-only");
                let keys: Vec<(String, String)> = match &src.items {
                    Some(items) => items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect(),
                    None => self
                        .config_map()
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, _)| (k.clone(), k.clone()))
                        .collect(),
                };
                for (key, rel) in keys {
                    let path = match &mount.sub_path {
                        Some(sp) if sp == &rel => mount.mount_path.clone(),
                        Some(_) => continue,
                        None => format!("{}/{rel}", mount.mount_path.trim_end_matches('/')),
                    };
                    files.insert(path, key);
                }
            }
        }
        files
    }

    /// The DaemonSet's args for a run outside a pod: `$(NODE_NAME)` expanded as kubelet would,
    /// and the ConfigMap's files written under `dir` in place of their mount paths (the
    /// kubeconfig path inside the config rewritten the same way).
    fn args_outside_pod(&self, dir: &Path, node: &str) -> Vec<String> {
        let mounted = self.mounted_config_files();
        let relocate = |text: &str| {
            mounted.keys().fold(text.to_string(), |t, path| {
                t.replace(path.as_str(), &dir.join(&mounted[path]).to_string_lossy())
            })
        };
        for key in mounted.values() {
            std::fs::write(dir.join(key), relocate(self.config_data(key))).unwrap();
        }
        self.args()
            .iter()
            .map(|a| relocate(&a.replace("$(NODE_NAME)", node)))
            .collect()
    }
}

fn flag_value(args: &[String], name: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Some(v.to_string());
        }
        if a == name {
            return it.next().cloned();
        }
    }
    None
}

#[test]
fn daemonset_runs_like_kube_proxy() {
    let d = Deployed::new();
    let ds = &d.m.daemon_sets[0];
    let spec = ds.spec.as_ref().unwrap();
    let pod = d.pod();
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration of every taint (operator: Exists, no key, no effect)"
    );
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    // The pod template's labels are the selector's (the API server refuses it otherwise).
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(
            labels.as_ref().and_then(|l| l.get(k)),
            Some(v),
            "selector {k}"
        );
    }

    let c = d.container();
    assert_eq!(
        d.args().first().map(String::as_str),
        Some("run"),
        "svcc run"
    );
    // NODE_NAME from the downward API, passed as the node's name.
    let node_env = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("env NODE_NAME");
    let field = node_env
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref());
    assert_eq!(field.map(|f| f.field_path.as_str()), Some("spec.nodeName"));
    assert_eq!(
        d.flag("--hostname-override").as_deref(),
        Some("$(NODE_NAME)")
    );
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    for r in ["cpu", "memory"] {
        assert!(
            requests.is_some_and(|q| q.contains_key(r)),
            "resources.requests.{r}"
        );
    }

    // No more privilege than nftables mode needs: NET_ADMIN, no hostPath at all (no
    // /lib/modules: nothing loads modules; no xtables.lock: nothing runs iptables).
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "not privileged");
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "readOnlyRootFilesystem"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "drop ALL"
    );
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string()][..]),
        "add NET_ADMIN only"
    );
    let config = kube_proxy_config(&d);
    assert_eq!(config.get("mode").and_then(Yaml::as_str), Some("nftables"));
    let host_paths: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert!(
        host_paths.is_empty(),
        "nftables mode mounts no host path: {host_paths:?}"
    );
}

/// The KubeProxyConfiguration in the ConfigMap at the path `--config` names.
fn kube_proxy_config(d: &Deployed) -> Yaml {
    let path = d.flag("--config").expect("--config in the args");
    let mounted = d.mounted_config_files();
    let key = mounted
        .get(&path)
        .unwrap_or_else(|| panic!("--config={path} is not a mounted ConfigMap file: {mounted:?}"));
    serde_yaml_ng::from_str(d.config_data(key)).expect("the config parses")
}

#[test]
fn config_and_kubeconfig_are_mounted_where_they_are_named() {
    let d = Deployed::new();
    let config = kube_proxy_config(&d);
    let mounted = d.mounted_config_files();
    let kubeconfig_path = config
        .get("clientConnection")
        .and_then(|c| c.get("kubeconfig"))
        .and_then(Yaml::as_str)
        .expect("clientConnection.kubeconfig");
    let key = mounted.get(kubeconfig_path).unwrap_or_else(|| {
        panic!("clientConnection.kubeconfig {kubeconfig_path} is not mounted: {mounted:?}")
    });
    // The kubeconfig: its context resolves, and its credentials are the pod's service account
    // token and CA (mounted: automount is not disabled).
    let kc: Yaml = serde_yaml_ng::from_str(d.config_data(key)).expect("kubeconfig parses");
    let named = |list: &str, name: &str| -> Yaml {
        kc.get(list)
            .and_then(Yaml::as_sequence)
            .and_then(|s| {
                s.iter()
                    .find(|e| e.get("name").and_then(Yaml::as_str) == Some(name))
            })
            .cloned()
            .unwrap_or_else(|| panic!("kubeconfig: no {list} entry named {name:?}"))
    };
    let current = kc
        .get("current-context")
        .and_then(Yaml::as_str)
        .expect("current-context");
    let ctx = named("contexts", current);
    let ctx = ctx.get("context").expect("context");
    let cluster = named(
        "clusters",
        ctx.get("cluster").and_then(Yaml::as_str).unwrap(),
    );
    let user = named("users", ctx.get("user").and_then(Yaml::as_str).unwrap());
    const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let ca = cluster
        .get("cluster")
        .and_then(|c| c.get("certificate-authority"));
    assert_eq!(
        ca.and_then(Yaml::as_str),
        Some(format!("{SA}/ca.crt").as_str())
    );
    let server = cluster
        .get("cluster")
        .and_then(|c| c.get("server"))
        .and_then(Yaml::as_str);
    assert!(
        server.is_some_and(|s| s.starts_with("https://")),
        "server is https: {server:?}"
    );
    let token = user
        .get("user")
        .and_then(|u| u.get("tokenFile"))
        .and_then(Yaml::as_str);
    assert_eq!(token, Some(format!("{SA}/token").as_str()));
    assert_ne!(d.pod().automount_service_account_token, Some(false));
    assert_ne!(
        d.m.service_accounts[0].automount_service_account_token,
        Some(false)
    );
}

#[test]
fn probes_reach_the_health_port() {
    let d = Deployed::new();
    let c = d.container();
    let healthz = d
        .flag("--healthz-bind-address")
        .unwrap_or("0.0.0.0:10256".into());
    let healthz: std::net::SocketAddr = healthz.parse().expect("--healthz-bind-address IP:PORT");
    let metrics = d
        .flag("--metrics-bind-address")
        .unwrap_or("127.0.0.1:10249".into());
    let _: std::net::SocketAddr = metrics.parse().expect("--metrics-bind-address IP:PORT");
    let named_port = |name: &str| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no container port named {name}"))
            .container_port
    };
    for (what, probe, path) in [
        ("readinessProbe", &c.readiness_probe, "/healthz"),
        ("livenessProbe", &c.liveness_probe, "/livez"),
        ("startupProbe", &c.startup_probe, "/livez"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what}: httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} path");
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(name) => named_port(name),
        };
        assert_eq!(
            port,
            i32::from(healthz.port()),
            "{what} port = --healthz-bind-address"
        );
        // kubelet probes the pod IP (the node's, with hostNetwork) unless `host` is set.
        match get.host.as_deref() {
            None => assert!(
                healthz.ip().is_unspecified(),
                "{what}: {healthz} is not the pod IP"
            ),
            Some(h) => assert_eq!(h.parse::<std::net::IpAddr>().ok(), Some(healthz.ip())),
        }
    }
    // With hostNetwork a declared port is the host's port.
    for p in c.ports.iter().flatten() {
        assert_eq!(
            p.host_port,
            Some(p.container_port),
            "hostPort = containerPort"
        );
    }
}

#[test]
fn rbac_grants_exactly_the_api_access_svcc_uses() {
    let d = Deployed::new();
    let role = &d.m.cluster_roles[0];
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for r in role.rules.iter().flatten() {
        assert!(
            r.resource_names.is_none() && r.non_resource_urls.is_none(),
            "{r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(v != "*" && res != "*" && g != "*", "no wildcards: {r:?}");
                    granted.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = API_ACCESS
        .iter()
        .flat_map(|(g, r, vs)| {
            vs.iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    let extra: Vec<_> = granted.difference(&wanted).collect();
    let missing: Vec<_> = wanted.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "extra {extra:?}, missing {missing:?}"
    );

    // The binding ties that role to the DaemonSet's service account.
    let sa = &d.m.service_accounts[0].metadata;
    let ds = &d.m.daemon_sets[0].metadata;
    assert_eq!(d.pod().service_account_name, sa.name, "serviceAccountName");
    assert_eq!(sa.namespace, ds.namespace, "same namespace");
    let b = &d.m.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), role.metadata.name.as_ref());
    let subjects = b.subjects.as_deref().unwrap_or(&[]);
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.name.as_ref()
            && s.namespace == sa.namespace),
        "the binding names the service account: {subjects:?}"
    );
}

/// `kustomization.yaml`, strictly (kustomize's own schema is not in k8s-openapi).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: String,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

#[test]
fn kustomization_ties_every_manifest() {
    let path = deploy_dir().join("kustomization.yaml");
    let k: Kustomization =
        serde_yaml_ng::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let d = Deployed::new();
    let resources: BTreeSet<String> = k.resources.iter().cloned().collect();
    assert_eq!(
        resources, d.m.files,
        "resources = the manifest files of deploy/"
    );
    // Namespaced objects are in the kustomization's namespace already (nothing moves).
    for ns in [
        &d.m.daemon_sets[0].metadata.namespace,
        &d.config_map().metadata.namespace,
        &d.m.service_accounts[0].metadata.namespace,
    ] {
        assert_eq!(ns.as_deref(), Some(k.namespace.as_str()));
    }
    let image = d.container().image.clone().expect("image");
    assert!(
        k.images
            .iter()
            .any(|i| i.name == image && i.new_name.is_some() && i.new_tag.is_some()),
        "kustomization sets the image {image:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary

struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("svcc-deploy-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether clap accepts `args` (flags, their values' types, enum values): clap handles flags
/// left to right and stops at `--help` with status 0, but refuses an unknown flag or a bad
/// value met before it with status 2.
fn clap_accepts(args: &[String]) -> Result<(), String> {
    let out = Command::new(SVCC)
        .args(args)
        .arg("--help")
        .output()
        .expect("run svcc");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "svcc {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn daemonset_args_are_accepted_by_svcc_run() {
    let d = Deployed::new();
    let args: Vec<String> = d
        .args()
        .iter()
        .map(|a| a.replace("$(NODE_NAME)", "node-a"))
        .collect();
    clap_accepts(&args).unwrap();
    // The method can fail: an unknown flag, a bad enum value.
    let mut bad = args.clone();
    bad.push("--svcc-no-such-flag".into());
    let e = clap_accepts(&bad).unwrap_err();
    assert!(e.contains("--svcc-no-such-flag"), "{e}");
    let mut bad = args.clone();
    bad.push("--backend=nosuchmode".into());
    assert!(clap_accepts(&bad).is_err());
    // The image's entrypoint is the binary.
    let cmd = d.container().command.clone().unwrap_or_default();
    assert_eq!(cmd.len(), 1, "command: the binary only, args hold the rest");
    assert!(cmd[0].ends_with("/svcc"), "{cmd:?}");
}

/// `svcc compile` with the ConfigMap's KubeProxyConfiguration on the bundled example.
fn compile_with_config(config_text: &str, dir: &Path) -> std::process::Output {
    let cfg = dir.join("config.conf");
    std::fs::write(&cfg, config_text).unwrap();
    Command::new(SVCC)
        .args([
            "compile",
            "--hostname-override",
            "node-a",
            "--node-ip",
            "192.168.0.2",
        ])
        .arg("--config")
        .arg(&cfg)
        .arg(repo().join("fixtures/example/cluster.yaml"))
        .output()
        .expect("run svcc compile")
}

/// The paths of every scalar in a YAML tree (`nftables.syncPeriod`, `nodePortAddresses[0]`).
fn leaves(v: &Yaml, path: &str, out: &mut Vec<(String, Vec<Yaml>)>, keys: &mut Vec<Yaml>) {
    match v {
        Yaml::Mapping(m) => {
            for (k, child) in m {
                keys.push(k.clone());
                leaves(child, &join(path, k.as_str().unwrap_or("?")), out, keys);
                keys.pop();
            }
        }
        Yaml::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                keys.push(Yaml::Number(i.into()));
                leaves(child, &join(path, &format!("[{i}]")), out, keys);
                keys.pop();
            }
        }
        _ => out.push((path.to_string(), keys.clone())),
    }
}

fn slot<'a>(v: &'a mut Yaml, keys: &[Yaml]) -> &'a mut Yaml {
    keys.iter().fold(v, |v, k| match (v, k) {
        (Yaml::Sequence(s), Yaml::Number(i)) => &mut s[i.as_u64().unwrap() as usize],
        (Yaml::Mapping(m), k) => m.get_mut(k).unwrap(),
        _ => unreachable!(),
    })
}

#[test]
fn configmap_config_is_accepted_and_read_by_svcc() {
    let d = Deployed::new();
    let dir = TempDir::new("config");
    let config = kube_proxy_config(&d);
    let text = serde_yaml_ng::to_string(&config).unwrap();
    let out = compile_with_config(&text, &dir.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "svcc compile --config: {}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("warning"),
        "the config draws warnings:\n{stderr}"
    );

    // Every field is one svcc reads: set to a value of the wrong type (a mapping), it must
    // make svcc refuse the file naming that field. A field svcc ignores (kube-proxy's
    // `ipvs:`, a misspelling) would be accepted silently and is reported here.
    let mut fields = Vec::new();
    leaves(&config, "", &mut fields, &mut Vec::new());
    assert!(fields.len() > 5, "{fields:?}");
    let mut ignored = Vec::new();
    for (path, keys) in fields {
        if RUN_ONLY_CONFIG_FIELDS.contains(&path.as_str()) {
            continue;
        }
        let mut bad = config.clone();
        *slot(&mut bad, &keys) = serde_yaml_ng::from_str("{svccDeployTest: 1}").unwrap();
        let out = compile_with_config(&serde_yaml_ng::to_string(&bad).unwrap(), &dir.0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let top = path.split(['.', '[']).next().unwrap();
        if out.status.code() != Some(2) || !stderr.contains(top) {
            ignored.push(format!("{path} ({}: {})", out.status, stderr.trim()));
        }
    }
    assert!(
        ignored.is_empty(),
        "fields svcc does not read:\n{}",
        ignored.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The capabilities, with the kernel (root)

/// Root-only tests are skipped otherwise (`SVCC_RUN_REQUIRE=1` makes that a failure).
fn skip_unless_root() -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else {
        ["unshare", "setpriv", "ip"]
            .into_iter()
            .find(|t| Command::new(t).arg("--version").output().is_err())
            .map(|t| format!("`{t}` not found"))
    };
    match why {
        None => false,
        Some(why) if std::env::var("SVCC_RUN_REQUIRE").as_deref() == Ok("1") => {
            panic!("deploy capability tests cannot run: {why} (SVCC_RUN_REQUIRE=1)")
        }
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
    }
}

/// `svcc run` in a network namespace of its own (anonymous: it goes with the process), with
/// only `caps` (e.g. `+net_admin`) in its bounding set and nothing inheritable: as root, that
/// is exactly its effective set, as in a container with `drop: [ALL]` + `add`.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(caps: &str, args: &[String]) -> Daemon {
        let mut child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c"])
            .arg("ip link set lo up && exec setpriv --inh-caps=-all --bounding-set=\"$0\" \"$@\"")
            .arg(format!("-all{caps}"))
            .arg(SVCC)
            .args(args)
            .env("SVCC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, log }
    }

    /// Waits for a log line with `needle`; None after `timeout` or if svcc exited.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100)); // the last lines
                return self
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(needle))
                    .cloned();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process's effective capability mask (svcc itself: unshare, sh and setpriv exec it).
    fn cap_eff(&self) -> u64 {
        let status = read(Path::new(&format!("/proc/{}/status", self.child.id())));
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("CapEff")
            .trim();
        u64::from_str_radix(hex, 16).unwrap()
    }

    /// `GET path` from inside svcc's network namespace (a thread that joins it): status and
    /// body.
    fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.child.id())).unwrap();
        let path = path.to_string();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd that stays open.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let status = text
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
            (status, body.unwrap_or_default())
        })
        .join()
        .unwrap()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn daemonset_capabilities_suffice_for_svcc_run() {
    if skip_unless_root() {
        return;
    }
    let d = Deployed::new();
    let sc = d.container().security_context.clone().unwrap();
    let caps: String = sc
        .capabilities
        .and_then(|c| c.add)
        .unwrap_or_default()
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let dir = TempDir::new("caps");
    let mut args = d.args_outside_pod(&dir.0, "node-a");
    // The pod's inputs come from the API server; here from the bundled example (files are
    // the other source of the same daemon), for a node IP of the example.
    let example = repo().join("fixtures/example/cluster.yaml");
    args.extend(["--watch".into(), example.display().to_string()]);
    args.extend(["--node-ip".into(), "192.168.0.2".into()]);

    let mut ok = Daemon::start(&caps, &args);
    let line = ok.wait_for("sync kind=", Duration::from_secs(30));
    let log = ok.log_text();
    assert!(
        line.is_some(),
        "no sync with the DaemonSet's capabilities {caps:?}:\n{log}"
    );
    eprintln!("capabilities -all{caps}: {}", line.unwrap());
    // Exactly the manifest's capabilities were in effect (CAP_NET_ADMIN = bit 12).
    let want: u64 = d
        .container()
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.as_ref())
        .unwrap()
        .iter()
        .map(|c| match c.as_str() {
            "NET_ADMIN" => 1u64 << 12,
            "NET_RAW" => 1 << 13,
            "SYS_MODULE" => 1 << 16,
            other => panic!("capability {other} not known to this test"),
        })
        .sum();
    assert_eq!(ok.cap_eff(), want, "svcc's effective capabilities");
    // The probes' endpoints answer 200 after the sync, and the stale-UDP-conntrack check (the
    // example has a UDP Service) ran without failing.
    let port = |flag: &str| {
        let a: std::net::SocketAddr = flag_value(&args, flag).unwrap().parse().unwrap();
        a.port()
    };
    for path in ["/healthz", "/livez"] {
        let (status, body) = ok.http_get(port("--healthz-bind-address"), path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .trim()
            .parse()
            .unwrap()
    };
    let end = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, text) = ok.http_get(port("--metrics-bind-address"), "/metrics");
        assert_eq!(status, 200);
        if metric(
            &text,
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count",
        ) >= 1.0
            || Instant::now() > end
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (name, min, max) in [
        (
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count",
            1.0,
            f64::MAX,
        ),
        ("svcc_conntrack_cleanup_failures_total", 0.0, 0.0),
        (
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            0.0,
            0.0,
        ),
    ] {
        let v = metric(&metrics, name);
        assert!((min..=max).contains(&v), "{name} = {v}");
    }
    let log = ok.log_text();
    for bad in [
        " ERROR ",
        " WARN ",
        "error:",
        "permission",
        "Operation not permitted",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
    drop(ok);

    // Without them the kernel refuses the rules: the test can fail.
    let mut none = Daemon::start("", &args);
    let refused = none.wait_for("ERROR", Duration::from_secs(30));
    assert!(
        refused.is_some(),
        "svcc without capabilities did not fail:\n{}",
        none.log_text()
    );
    eprintln!("no capabilities: {}", refused.unwrap());
    assert_eq!(none.cap_eff(), 0);
}

// ---------------------------------------------------------------------------------------------
// Image recipe and systemd unit

/// `ARG NAME=value` of the Dockerfile.
fn dockerfile_arg(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("Dockerfile: no ARG {name}="))
        .trim()
        .to_string()
}

fn version_tuple(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

/// Not built here (no container runtime on these machines): the recipe is checked against the
/// project instead — binary name and path, the libnftnl release the runtime binds to, the Rust
/// version, and the final stages' entrypoint.
#[test]
fn dockerfile_builds_the_binary_the_daemonset_runs() {
    let text = read(&deploy_dir().join("Dockerfile"));
    let cargo = read(&repo().join("Cargo.toml"));
    assert!(
        cargo.contains("[[bin]]\nname = \"svcc\""),
        "the binary is svcc"
    );
    assert!(text.contains("--bin svcc"), "builds --bin svcc");
    assert!(text.contains("--locked"), "builds from Cargo.lock");
    let d = Deployed::new();
    let binary = d.container().command.as_ref().unwrap()[0].clone();
    assert!(
        text.contains(&format!("COPY --from=build /out/svcc {binary}")),
        "the image puts svcc at the DaemonSet's command {binary}"
    );
    let entrypoints: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ENTRYPOINT"))
        .collect();
    assert!(!entrypoints.is_empty());
    for e in &entrypoints {
        assert_eq!(*e, format!("ENTRYPOINT [\"{binary}\"]"));
    }
    // The C library the nftnl crate is compiled against (runtime/Cargo.toml feature
    // nftnl-X-Y-Z) is the release the image builds.
    let runtime = read(&repo().join("runtime/Cargo.toml"));
    let feature = runtime
        .split("\"nftnl-")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("runtime/Cargo.toml: an nftnl-X-Y-Z feature");
    assert_eq!(
        dockerfile_arg(&text, "LIBNFTNL_VERSION"),
        feature.replace('-', ".")
    );
    for arg in ["LIBNFTNL_SHA256", "LIBMNL_SHA256"] {
        let h = dockerfile_arg(&text, arg);
        assert!(
            h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()),
            "{arg}"
        );
    }
    let rust = dockerfile_arg(&text, "RUST_VERSION");
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("rust-version");
    assert!(
        version_tuple(&rust) >= version_tuple(msrv),
        "Rust {rust} >= {msrv}"
    );
    // The default (last) stage is the minimal one, and the build context leaves out target/.
    let last_from = text.lines().rfind(|l| l.starts_with("FROM ")).unwrap();
    assert!(last_from.contains("distroless/static"), "{last_from}");
    let ignore = read(&deploy_dir().join("Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// The unit's `ExecStart` command line, continuation lines joined, without the env expansion.
fn unit_exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    line.split_whitespace()
        .filter(|w| !w.starts_with('$'))
        .map(String::from)
        .collect()
}

#[test]
fn systemd_unit_runs_svcc_with_net_admin_only() {
    let unit = read(&deploy_dir().join("svcc.service"));
    let exec = unit_exec_start(&unit);
    assert_eq!(exec[0], "/usr/local/bin/svcc");
    assert_eq!(exec[1], "run");
    clap_accepts(&exec[1..]).unwrap();
    let value = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}="))
            .to_string()
    };
    assert_eq!(value("CapabilityBoundingSet"), "CAP_NET_ADMIN");
    assert_eq!(value("AmbientCapabilities"), "CAP_NET_ADMIN");
    assert_eq!(value("Restart"), "always");
    assert!(value("RestrictAddressFamilies").contains("AF_NETLINK"));
    assert!(
        !unit.contains("PrivateNetwork=yes"),
        "must see the host's network"
    );

    // systemd's own check, when installed (the binary path pointed at the one just built).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: unit syntax not verified");
        return;
    }
    let dir = TempDir::new("unit");
    let copy = dir.0.join("svcc.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/svcc", SVCC)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("svcc.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
