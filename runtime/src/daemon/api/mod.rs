//! The Kubernetes API as the source of `svcc run` (docs/RUN.md, "The Kubernetes API as the
//! source"): Services, EndpointSlices, this node's Node and (when the server has them)
//! ServiceCIDRs are listed and watched with kube-rs's `watcher` on a thread of their own; each
//! object becomes one source of the same compile [`Session`](svcc_compiler::session::Session)
//! the files feed ([`feed::ApiInputs`]), so a changed Service is a session delta.
//!
//! The watcher does the protocol: paginated list, watch from the list's resourceVersion,
//! bookmarks, re-watch from the last version after a dropped connection, re-list after 410
//! Gone. A re-list is buffered here until it is complete and handed over whole, so the daemon
//! replaces that kind's objects in one sync (objects the re-list lost are removed then, and
//! nothing is removed before). Errors are retried with the watcher's backoff (800 ms growing
//! to 30 s); the daemon keeps the last ruleset meanwhile.

pub mod feed;
pub mod objects;

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

pub use objects::Kind;

/// kube-proxy's informer selector: Services and EndpointSlices that another proxy handles, and
/// those of headless Services, are not even listed.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Where the API server is and who svcc is.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// `--kubeconfig` (or `clientConnection.kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: overrides the kubeconfig's server.
    pub master: Option<String>,
    /// This node's name (its Node object is watched).
    pub node: String,
}

/// What the API thread tells the daemon.
#[derive(Debug)]
pub enum ApiEvent {
    /// The kinds whose initial lists the first sync waits for (sent once, after discovery).
    Expect(Vec<Kind>),
    /// A complete (re-)list of one kind: these objects, and no others.
    Listed {
        kind: Kind,
        objects: Vec<(String, String)>,
    },
    /// An object added or modified: (key, text).
    Upsert {
        kind: Kind,
        key: String,
        text: String,
    },
    Delete {
        kind: Kind,
        key: String,
    },
    /// A failed request (retried with backoff).
    Error {
        kind: Option<Kind>,
        error: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("kubeconfig {path}: {error}")]
    Kubeconfig { path: String, error: String },
    #[error("no API server configuration: no --kubeconfig, no KUBECONFIG, not in a cluster (KUBERNETES_SERVICE_HOST unset), no ~/.kube/config")]
    NoConfig,
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
    #[error("--master {0:?}: not a URL")]
    Master(String),
    #[error("{0}")]
    Client(String),
}

/// The client configuration in kube-proxy's order: `--kubeconfig`, else `KUBECONFIG`, else the
/// in-cluster service account, else `~/.kube/config`; `--master` overrides the server.
async fn client_config(c: &ApiConfig) -> Result<Config, ApiError> {
    let file = |p: PathBuf| async move {
        let kc = Kubeconfig::read_from(&p).map_err(|e| ApiError::Kubeconfig {
            path: p.display().to_string(),
            error: e.to_string(),
        })?;
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| ApiError::Kubeconfig {
                path: p.display().to_string(),
                error: e.to_string(),
            })
    };
    let env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config"));
    let mut cfg = if let Some(p) = &c.kubeconfig {
        file(p.clone()).await?
    } else if let Some(p) = env {
        // KUBECONFIG may list several files; kube-rs merges them as kubectl does.
        let kc = Kubeconfig::from_env()
            .map_err(|e| ApiError::Kubeconfig {
                path: p.to_string_lossy().into(),
                error: e.to_string(),
            })?
            .ok_or(ApiError::NoConfig)?;
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| ApiError::Kubeconfig {
                path: p.to_string_lossy().into(),
                error: e.to_string(),
            })?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster().map_err(|e| ApiError::InCluster(e.to_string()))?
    } else if let Some(h) = home.filter(|h| h.exists()) {
        file(h).await?
    } else if c.master.is_some() {
        // Only a server: no credentials (a kubectl proxy, an insecure test server).
        Config::new("http://localhost".parse().expect("a valid URL"))
    } else {
        return Err(ApiError::NoConfig);
    };
    if let Some(m) = &c.master {
        cfg.cluster_url = m.parse().map_err(|_| ApiError::Master(m.clone()))?;
    }
    Ok(cfg)
}

/// Reports objects svcc cannot compile as Kubernetes Events (events.k8s.io/v1, type Warning,
/// reason `InvalidObject`, regarding the object), from the API thread.
#[derive(Clone)]
pub struct BadObjects(tokio::sync::mpsc::UnboundedSender<(String, String)>);

impl BadObjects {
    /// `key`: the session source (`api/Kind/ns/name`); other sources are not reported.
    pub fn report(&self, key: &str, message: &str) {
        if objects::parse_key(key).is_some() {
            let _ = self.0.send((key.to_string(), message.to_string()));
        }
    }
}

async fn publish_events(
    client: Client,
    node: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let rec = Recorder::new(
        client,
        Reporter {
            controller: "svcc".into(),
            instance: Some(format!("svcc-{node}")),
        },
    );
    while let Some((key, message)) = rx.recv().await {
        let Some((kind, ns, name)) = objects::parse_key(&key) else {
            continue;
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(kind.api_version().into()),
            kind: Some(kind.name().into()),
            namespace: ns.map(str::to_string),
            name: Some(name.into()),
            ..Default::default()
        };
        // An Event's note is at most 1 kB.
        let note: String = message.chars().take(1000).collect();
        let ev = Event {
            type_: EventType::Warning,
            reason: "InvalidObject".into(),
            note: Some(note),
            action: "Compile".into(),
            secondary: None,
        };
        if let Err(e) = rec.publish(&ev, &reference).await {
            tracing::warn!(target: "svcc::api", object = %key, error = %e, "cannot write the Event reporting an invalid object");
        }
    }
}

/// Starts the API thread. Errors: a configuration that cannot be used (the server being
/// unreachable is not one: that is retried).
pub fn start(
    c: ApiConfig,
    send: impl Fn(ApiEvent) + Send + Sync + 'static,
) -> Result<BadObjects, ApiError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ApiError::Client(format!("starting the API runtime: {e}")))?;
    let client = rt.block_on(async {
        let cfg = client_config(&c).await?;
        tracing::info!(server = %cfg.cluster_url, node = %c.node, "svcc run: following the Kubernetes API");
        Client::try_from(cfg).map_err(|e| ApiError::Client(e.to_string()))
    })?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let events = publish_events(client.clone(), c.node.clone(), rx);
    std::thread::Builder::new()
        .name("svcc-api".into())
        .spawn(move || {
            rt.block_on(async move {
                futures::join!(follow_all(client, c.node, send), events);
            })
        })
        .map_err(|e| ApiError::Client(format!("starting the API thread: {e}")))?;
    Ok(BadObjects(tx))
}

/// Whether the server serves ServiceCIDRs (networking.k8s.io/v1, Kubernetes 1.33+); asked
/// until the server answers.
async fn has_service_cidrs(client: &Client, send: &(impl Fn(ApiEvent) + Sync)) -> bool {
    let mut delay = Duration::from_millis(800);
    loop {
        match client
            .list_api_group_resources("networking.k8s.io/v1")
            .await
        {
            Ok(l) => return l.resources.iter().any(|r| r.name == "servicecidrs"),
            Err(kube::Error::Api(s)) if s.code == 404 => return false,
            Err(e) => {
                let error = format!("discovery of networking.k8s.io/v1: {e}");
                tracing::warn!(target: "svcc::api", retry_in = ?delay, "{error}");
                send(ApiEvent::Error { kind: None, error });
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn follow_all(client: Client, node: String, send: impl Fn(ApiEvent) + Send + Sync) {
    let mut kinds = vec![Kind::Service, Kind::EndpointSlice, Kind::Node];
    if has_service_cidrs(&client, &send).await {
        kinds.push(Kind::ServiceCidr);
    }
    send(ApiEvent::Expect(kinds.clone()));
    let proxied = || watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let streams = kinds.iter().map(|&k| {
        use k8s_openapi::api as a;
        let (ar, cfg) = match k {
            Kind::Service => (ApiResource::erase::<a::core::v1::Service>(&()), proxied()),
            Kind::EndpointSlice => (
                ApiResource::erase::<a::discovery::v1::EndpointSlice>(&()),
                proxied(),
            ),
            Kind::Node => (
                ApiResource::erase::<a::core::v1::Node>(&()),
                watcher::Config::default().fields(&format!("metadata.name={node}")),
            ),
            Kind::ServiceCidr => (
                ApiResource::erase::<a::networking::v1::ServiceCIDR>(&()),
                watcher::Config::default(),
            ),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        follow(k, api, cfg, &send)
    });
    futures::future::join_all(streams).await;
}

fn text_of(kind: Kind, o: DynamicObject) -> (String, String) {
    let v = serde_json::to_value(o).unwrap_or_default();
    objects::source_text(kind, v)
}

/// One kind's list+watch, forever.
async fn follow(
    kind: Kind,
    api: Api<DynamicObject>,
    cfg: watcher::Config,
    send: &(impl Fn(ApiEvent) + Sync),
) {
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    // A (re-)list in progress: buffered until complete.
    let mut listing: Option<Vec<(String, String)>> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => listing = Some(Vec::new()),
            Ok(watcher::Event::InitApply(o)) => {
                listing.get_or_insert_default().push(text_of(kind, o));
            }
            Ok(watcher::Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                tracing::info!(target: "svcc::api", kind = kind.name(), objects = objects.len(), "listed");
                send(ApiEvent::Listed { kind, objects });
            }
            Ok(watcher::Event::Apply(o)) => {
                let (key, text) = text_of(kind, o);
                send(ApiEvent::Upsert { kind, key, text });
            }
            Ok(watcher::Event::Delete(o)) => {
                let (key, _) = text_of(kind, o);
                send(ApiEvent::Delete { kind, key });
            }
            Err(e) => {
                let error = e.to_string();
                tracing::warn!(target: "svcc::api", kind = kind.name(), error = %error, "list/watch failed; retrying with backoff, the ruleset stays as it is");
                send(ApiEvent::Error {
                    kind: Some(kind),
                    error,
                });
            }
        }
    }
}
