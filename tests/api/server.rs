//! A Kubernetes API server for tests: list and watch of Services, EndpointSlices, Nodes and
//! ServiceCIDRs over HTTP/1.1, with real JSON (k8s-openapi objects serialized), resource
//! versions, paginated lists (`limit`/`continue`), chunked watch streams of
//! ADDED/MODIFIED/DELETED/BOOKMARK events, 410 Gone (an `ERROR` event with a Status 410 on a
//! live watch or a watch from a compacted version; HTTP 410 for a stale `continue`), dropped
//! connections and slow lists.
//!
//! STRICT: a request a real API server would refuse — or one svcc must not make (another
//! selector than kube-proxy's, a verb other than GET) — gets a 4xx and is recorded as a
//! violation; [`ApiServer::assert_no_violations`] fails the test with the list.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Services,
    EndpointSlices,
    Nodes,
    ServiceCidrs,
}

impl Res {
    const ALL: [Res; 4] = [
        Res::Services,
        Res::EndpointSlices,
        Res::Nodes,
        Res::ServiceCidrs,
    ];

    fn path(self) -> &'static str {
        match self {
            Res::Services => "/api/v1/services",
            Res::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Res::Nodes => "/api/v1/nodes",
            Res::ServiceCidrs => "/apis/networking.k8s.io/v1/servicecidrs",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Services | Res::Nodes => "v1",
            Res::EndpointSlices => "discovery.k8s.io/v1",
            Res::ServiceCidrs => "networking.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Services => "Service",
            Res::EndpointSlices => "EndpointSlice",
            Res::Nodes => "Node",
            Res::ServiceCidrs => "ServiceCIDR",
        }
    }

    /// The one selector svcc may use on this resource (kube-proxy's informers).
    fn expected_selector(self) -> (&'static str, Option<&'static str>) {
        const PROXY: &str =
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
        match self {
            Res::Services | Res::EndpointSlices => ("labelSelector", Some(PROXY)),
            Res::Nodes => ("fieldSelector", None),
            Res::ServiceCidrs => ("labelSelector", None),
        }
    }
}

/// An object's storage key: `namespace/name` or `name`.
fn key_of(v: &Value) -> String {
    let m = &v["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap_or_default()),
        None => m["name"].as_str().unwrap_or_default().to_string(),
    }
}

/// A parsed selector: labels that must be absent, a name the object must have.
#[derive(Debug, Clone, Default)]
struct Filter {
    absent_labels: Vec<String>,
    name: Option<String>,
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        let labels = &v["metadata"]["labels"];
        if self
            .absent_labels
            .iter()
            .any(|l| labels.get(l.as_str()).is_some())
        {
            return false;
        }
        self.name
            .as_ref()
            .is_none_or(|n| v["metadata"]["name"].as_str() == Some(n.as_str()))
    }
}

struct Watch {
    id: u64,
    res: Res,
    filter: Filter,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct State {
    rv: u64,
    objects: BTreeMap<Res, BTreeMap<String, Value>>,
    /// Every change: (resourceVersion, resource, event type, object after the change).
    log: Vec<(u64, Res, &'static str, Value)>,
    /// Watches from a version at or below this one get 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    next_watch: u64,
    violations: Vec<String>,
    /// "LIST services", "WATCH services rv=12", …
    requests: Vec<String>,
    list_delay: Duration,
    serve_cidrs: bool,
    /// Node whose name the Node watch must select.
    node: String,
    connections: Vec<tokio::task::AbortHandle>,
    /// Events written (events.k8s.io/v1), by `namespace/name`.
    events: BTreeMap<String, Value>,
}

/// The server; runs on its own tokio runtime until dropped.
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    accept: Option<tokio::task::JoinHandle<()>>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl ApiServer {
    /// Listens on `listener` (made by the caller in the namespace it wants).
    pub fn start(listener: std::net::TcpListener, node: &str) -> ApiServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            rv: 100,
            objects: BTreeMap::new(),
            log: Vec::new(),
            compacted: 0,
            watches: Vec::new(),
            next_watch: 0,
            violations: Vec::new(),
            requests: Vec::new(),
            list_delay: Duration::ZERO,
            serve_cidrs: true,
            node: node.into(),
            connections: Vec::new(),
            events: BTreeMap::new(),
        }));
        let mut s = ApiServer {
            state,
            rt: Some(rt),
            addr,
            accept: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let st = self.state.clone();
        let rt = self.rt.as_ref().unwrap();
        let _g = rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        self.accept = Some(rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let st2 = st.clone();
                let h = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st2.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
                let mut s = st.lock().unwrap();
                s.connections.retain(|c| !c.is_finished());
                s.connections.push(h.abort_handle());
            }
        }));
    }

    /// Stops accepting and drops every connection (the port is closed: "unreachable").
    pub fn stop_listening(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        self.drop_connections();
    }

    /// Listens again (on a new listener, e.g. the same port bound anew).
    pub fn listen_again(&mut self, listener: std::net::TcpListener) {
        self.addr = listener.local_addr().unwrap();
        self.serve(listener);
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn set_list_delay(&self, d: Duration) {
        self.with(|s| s.list_delay = d);
    }

    /// Whether `networking.k8s.io/v1` has servicecidrs (discovery).
    pub fn set_serve_cidrs(&self, on: bool) {
        self.with(|s| s.serve_cidrs = on);
    }

    /// Adds or replaces an object (anything k8s-openapi serializes), as the API server
    /// would: a new resourceVersion, events to the watches whose selector it (un)matches.
    pub fn put(&self, res: Res, obj: impl serde::Serialize) {
        let mut v = serde_json::to_value(obj).unwrap();
        self.with(|s| {
            s.rv += 1;
            let rv = s.rv;
            v["apiVersion"] = res.api_version().into();
            v["kind"] = res.kind().into();
            v["metadata"]["resourceVersion"] = rv.to_string().into();
            v["metadata"]["uid"] = format!("uid-{}", key_of(&v)).into();
            v["metadata"]["managedFields"] =
                json!([{"manager": "test", "operation": "Update", "apiVersion": res.api_version()}]);
            let k = key_of(&v);
            let old = s.objects.entry(res).or_default().insert(k, v.clone());
            let ty = if old.is_some() { "MODIFIED" } else { "ADDED" };
            s.log.push((rv, res, ty, v.clone()));
            broadcast(s, res, old.as_ref(), Some(&v));
        });
    }

    /// Deletes an object (DELETED to the watches).
    pub fn delete(&self, res: Res, key: &str) {
        self.with(|s| {
            let old = s
                .objects
                .entry(res)
                .or_default()
                .remove(key)
                .expect("deleting an object that exists");
            s.rv += 1;
            let mut v = old.clone();
            v["metadata"]["resourceVersion"] = s.rv.to_string().into();
            let rv = s.rv;
            s.log.push((rv, res, "DELETED", v.clone()));
            broadcast(s, res, Some(&old), None);
        });
    }

    /// Deletes an object while no watch can see it: every watch expires first (ERROR 410,
    /// the history is compacted), so svcc only learns of it by re-listing.
    pub fn delete_unseen(&self, res: Res, key: &str) {
        self.with(|s| {
            s.objects
                .entry(res)
                .or_default()
                .remove(key)
                .expect("exists");
            s.rv += 1;
            expire(s);
        });
    }

    /// Every live watch gets an ERROR event with a Status 410 (its version is too old) and
    /// ends; the history is compacted, so resuming from any version seen so far is 410 too.
    pub fn expire_watches(&self) {
        self.with(expire);
    }

    /// Aborts every open connection (no clean end of the chunked stream).
    pub fn drop_connections(&self) {
        self.with(|s| {
            s.watches.clear();
            for c in s.connections.drain(..) {
                c.abort();
            }
        });
    }

    /// The Events written so far.
    pub fn events(&self) -> Vec<Value> {
        self.with(|s| s.events.values().cloned().collect())
    }

    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.with(|s| s.requests.iter().filter(|r| r.starts_with(prefix)).count())
    }

    pub fn assert_no_violations(&self) {
        let v = self.with(|s| s.violations.clone());
        assert!(
            v.is_empty(),
            "svcc made requests a real API server refuses:\n{}\nall requests:\n{}",
            v.join("\n"),
            self.requests().join("\n")
        );
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn event(ty: &str, obj: &Value) -> Bytes {
    Bytes::from(json!({"type": ty, "object": obj}).to_string() + "\n")
}

fn expire(s: &mut State) {
    let e = event(
        "ERROR",
        &status(
            410,
            "Expired",
            "too old resource version: the watch history is compacted",
        ),
    );
    for w in s.watches.drain(..) {
        let _ = w.tx.send(e.clone());
    }
    s.compacted = s.rv;
    s.log.clear();
}

/// Sends a change to the watches of `res`: ADDED/MODIFIED/DELETED as seen through each
/// watch's selector (an object leaving a selection is DELETED for that watch).
fn broadcast(s: &mut State, res: Res, old: Option<&Value>, new: Option<&Value>) {
    s.watches.retain(|w| {
        if w.res != res {
            return true;
        }
        let was = old.is_some_and(|o| w.filter.matches(o));
        let is = new.is_some_and(|n| w.filter.matches(n));
        let ev = match (was, is) {
            (false, true) => event("ADDED", new.unwrap()),
            (true, true) => event("MODIFIED", new.unwrap()),
            (true, false) => event("DELETED", new.or(old).unwrap()),
            (false, false) => return true,
        };
        w.tx.send(ev).is_ok()
    });
}

/// Checks a selector parameter against the one svcc must use; parses it.
fn selector(res: Res, q: &BTreeMap<String, String>, node: &str) -> Result<Filter, String> {
    let (which, want) = res.expected_selector();
    let mut f = Filter::default();
    let label = q.get("labelSelector").map(String::as_str);
    let field = q.get("fieldSelector").map(String::as_str);
    match res {
        Res::Nodes => {
            let want = format!("metadata.name={node}");
            if field != Some(want.as_str()) || label.is_some() {
                return Err(format!(
                    "nodes: wanted fieldSelector={want} only (this node), got labelSelector={label:?} fieldSelector={field:?}"
                ));
            }
            f.name = Some(node.into());
        }
        _ => {
            if field.is_some() {
                return Err(format!("{res:?}: unexpected fieldSelector {field:?}"));
            }
            if label != want {
                return Err(format!("{res:?}: {which} {label:?}, wanted {want:?}"));
            }
            for part in label
                .unwrap_or_default()
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let Some(l) = part.strip_prefix('!') else {
                    return Err(format!("unsupported selector term {part:?}"));
                };
                f.absent_labels.push(l.to_string());
            }
        }
    }
    Ok(f)
}

fn query(req: &Request<Incoming>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in req.uri().query().unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| -> Result<String, String> {
            let s = s.replace('+', " ");
            let b = s.as_bytes();
            let mut o = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).map_err(|e| e.to_string())?;
                    o.push(u8::from_str_radix(h, 16).map_err(|e| e.to_string())?);
                    i += 3;
                } else {
                    o.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8(o).map_err(|e| e.to_string())
        };
        if out.insert(dec(k)?, dec(v)?).is_some() {
            return Err(format!("parameter {k} given twice"));
        }
    }
    Ok(out)
}

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/";

/// create (POST) and patch (merge patch of a series) of events.k8s.io/v1 Events, with the
/// checks of the API server's validation of that version (eventTime, reportingController,
/// reportingInstance, action, reason, regarding in the Event's namespace).
async fn events(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let what = format!("{} {}", parts.method, parts.uri);
    let refuse = |code: StatusCode, msg: String| {
        st.lock()
            .unwrap()
            .violations
            .push(format!("{what}: {code}: {msg}"));
        full(code, status(code.as_u16(), "Invalid", &msg))
    };
    for pair in parts.uri.query().unwrap_or_default().split('&') {
        let k = pair.split('=').next().unwrap_or_default();
        if !k.is_empty() && !["fieldManager", "dryRun", "fieldValidation"].contains(&k) {
            return refuse(StatusCode::BAD_REQUEST, format!("unknown parameter {k}"));
        }
    }
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rest = parts.uri.path().trim_start_matches(EVENTS).to_string();
    let segs: Vec<&str> = rest.split('/').collect();
    match (parts.method.as_str(), segs.as_slice()) {
        ("POST", [ns, "events"]) => {
            if ct != "application/json" {
                return refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Type {ct:?}"),
                );
            }
            let ev: k8s_openapi::api::events::v1::Event = match serde_json::from_slice(&bytes) {
                Ok(e) => e,
                Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("not an Event: {e}")),
            };
            let mut problems = Vec::new();
            if ev.metadata.namespace.as_deref().is_some_and(|n| n != *ns) {
                problems.push("metadata.namespace does not match the path");
            }
            if ev.event_time.is_none() {
                problems.push("eventTime: required");
            }
            if ev
                .reporting_controller
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            {
                problems.push("reportingController: required");
            }
            if ev
                .reporting_instance
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            {
                problems.push("reportingInstance: required");
            }
            if ev.action.as_deref().unwrap_or_default().is_empty() {
                problems.push("action: required");
            }
            if ev.reason.as_deref().unwrap_or_default().is_empty() {
                problems.push("reason: required");
            }
            if ev.regarding.as_ref().and_then(|r| r.namespace.as_deref()) != Some(*ns) {
                problems.push("regarding: must name an object of the Event's namespace");
            }
            let name = ev.metadata.name.clone().unwrap_or_default();
            if name.is_empty() {
                problems.push("metadata.name: required");
            }
            if !problems.is_empty() {
                return refuse(StatusCode::UNPROCESSABLE_ENTITY, problems.join("; "));
            }
            let v = serde_json::to_value(&ev).unwrap();
            let mut s = st.lock().unwrap();
            s.requests.push(format!("CREATE Event {ns}/{name}"));
            s.events.insert(format!("{ns}/{name}"), v.clone());
            full(StatusCode::CREATED, v)
        }
        ("PATCH", [ns, "events", name]) => {
            if ct != "application/merge-patch+json" {
                return refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Type {ct:?}"),
                );
            }
            let patch: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let mut s = st.lock().unwrap();
            s.requests.push(format!("PATCH Event {ns}/{name}"));
            let Some(ev) = s.events.get_mut(&format!("{ns}/{name}")) else {
                drop(s);
                return refuse(StatusCode::NOT_FOUND, "no such Event".into());
            };
            if let (Some(e), Some(p)) = (ev.as_object_mut(), patch.as_object()) {
                for (k, v) in p {
                    e.insert(k.clone(), v.clone());
                }
            }
            full(StatusCode::OK, ev.clone())
        }
        _ => refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "only create and patch of events".into(),
        ),
    }
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path().starts_with(EVENTS) {
        return events(st, req).await;
    }
    let path = req.uri().path().to_string();
    let refuse = |code: StatusCode, msg: String| {
        let mut s = st.lock().unwrap();
        s.violations
            .push(format!("{} {}: {code}: {msg}", req.method(), req.uri()));
        drop(s);
        full(
            code,
            status(code.as_u16(), code.canonical_reason().unwrap_or(""), &msg),
        )
    };
    if req.method() != hyper::Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "svcc only lists and watches".into(),
        );
    }
    // kube-apiserver answers JSON, protobuf (not for these clients) or tables.
    if let Some(a) = req.headers().get("accept") {
        let a = a.to_str().unwrap_or_default();
        if !a.split(',').any(|t| {
            let t = t.split(';').next().unwrap_or_default().trim();
            t == "application/json" || t == "*/*"
        }) {
            return refuse(StatusCode::NOT_ACCEPTABLE, format!("Accept {a:?}"));
        }
    }
    let q = match query(&req) {
        Ok(q) => q,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    if path == "/apis/networking.k8s.io/v1" {
        if !q.is_empty() {
            return refuse(
                StatusCode::BAD_REQUEST,
                "discovery takes no parameters".into(),
            );
        }
        st.lock()
            .unwrap()
            .requests
            .push("DISCOVERY networking.k8s.io/v1".into());
        let cidrs = st.lock().unwrap().serve_cidrs;
        let mut resources = vec![
            json!({"name": "ingresses", "singularName": "ingress", "namespaced": true,
            "kind": "Ingress", "verbs": ["create","delete","get","list","patch","update","watch"]}),
        ];
        if cidrs {
            resources.push(json!({"name": "servicecidrs", "singularName": "servicecidr", "namespaced": false,
                "kind": "ServiceCIDR", "verbs": ["create","delete","get","list","patch","update","watch"]}));
        }
        return full(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": "networking.k8s.io/v1", "resources": resources}),
        );
    }
    let Some(res) = Res::ALL.into_iter().find(|r| r.path() == path) else {
        return refuse(StatusCode::NOT_FOUND, format!("no such path {path}"));
    };
    if res == Res::ServiceCidrs && !st.lock().unwrap().serve_cidrs {
        return refuse(
            StatusCode::NOT_FOUND,
            "servicecidrs is not served (discovery said so)".into(),
        );
    }
    let node = st.lock().unwrap().node.clone();
    let filter = match selector(res, &q, &node) {
        Ok(f) => f,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let watch = match q.get("watch").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(o) => return refuse(StatusCode::BAD_REQUEST, format!("watch={o}")),
    };
    let allowed: &[&str] = if watch {
        &[
            "watch",
            "resourceVersion",
            "resourceVersionMatch",
            "allowWatchBookmarks",
            "timeoutSeconds",
            "labelSelector",
            "fieldSelector",
            "sendInitialEvents",
        ]
    } else {
        &[
            "resourceVersion",
            "resourceVersionMatch",
            "limit",
            "continue",
            "timeoutSeconds",
            "labelSelector",
            "fieldSelector",
        ]
    };
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return refuse(StatusCode::BAD_REQUEST, format!("unknown parameter {k}"));
    }
    let rv_param = q.get("resourceVersion").filter(|v| !v.is_empty());
    let rv: Option<u64> = match rv_param.map(|v| v.parse()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "resourceVersion not a number".into(),
            )
        }
    };
    if q.contains_key("resourceVersionMatch") && rv.is_none() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "resourceVersionMatch without resourceVersion".into(),
        );
    }
    if watch {
        // A client that watches must say from where (kube-proxy's reflector always does);
        // without one the server would send the whole state as ADDED events.
        let Some(from) = rv else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "watch without resourceVersion".into(),
            );
        };
        if q.contains_key("sendInitialEvents") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "sendInitialEvents: streaming lists are not enabled".into(),
            );
        }
        let timeout: u64 = match q.get("timeoutSeconds").map(|t| t.parse()) {
            Some(Ok(t)) => t,
            None => 1800,
            Some(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "timeoutSeconds".into()),
        };
        let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let id = {
            let mut s = st.lock().unwrap();
            s.requests.push(format!("WATCH {} rv={from}", res.kind()));
            if from < s.compacted || from > s.rv {
                let why = if from > s.rv {
                    "too large resource version"
                } else {
                    "too old resource version"
                };
                let code = if from > s.rv { 504 } else { 410 };
                let _ = tx.send(event(
                    "ERROR",
                    &status(code, if code == 410 { "Expired" } else { "Timeout" }, why),
                ));
                None
            } else {
                for (v, r, ty, obj) in &s.log {
                    if *r == res && *v > from && filter.matches(obj) {
                        let _ = tx.send(event(ty, obj));
                    }
                }
                let id = s.next_watch;
                s.next_watch += 1;
                s.watches.push(Watch {
                    id,
                    res,
                    filter,
                    tx: tx.clone(),
                });
                Some(id)
            }
        };
        drop(tx);
        if let Some(id) = id {
            // Bookmarks every second; the watch ends at timeoutSeconds, as the server's.
            let st = st.clone();
            tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let mut s = st.lock().unwrap();
                    let rv = s.rv;
                    let Some(i) = s.watches.iter().position(|w| w.id == id) else {
                        return;
                    };
                    if t0.elapsed() >= Duration::from_secs(timeout) {
                        s.watches.remove(i);
                        return;
                    }
                    if bookmarks {
                        let b = event(
                            "BOOKMARK",
                            &json!({"kind": res.kind(), "apiVersion": res.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()}}),
                        );
                        if s.watches[i].tx.send(b).is_err() {
                            s.watches.remove(i);
                        }
                    }
                }
            });
        }
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        return Response::builder()
            .status(200)
            .header("Content-Type", "application/json")
            .body(StreamBody::new(body).boxed())
            .unwrap();
    }
    // A list.
    let delay = st.lock().unwrap().list_delay;
    tokio::time::sleep(delay).await;
    let mut s = st.lock().unwrap();
    let limit: Option<usize> = match q.get("limit").map(|l| l.parse()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => {
            drop(s);
            return refuse(StatusCode::BAD_REQUEST, "limit".into());
        }
    };
    let (start, list_rv) = match q.get("continue") {
        None => (0usize, s.rv),
        Some(c) => {
            if rv.is_some() {
                drop(s);
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "continue with resourceVersion".into(),
                );
            }
            let Some((r, off)) = c.split_once('-') else {
                drop(s);
                return refuse(StatusCode::BAD_REQUEST, format!("bad continue token {c:?}"));
            };
            let (r, off): (u64, usize) = (r.parse().unwrap_or(0), off.parse().unwrap_or(0));
            if r < s.compacted {
                s.requests
                    .push(format!("LIST {} continue (expired)", res.kind()));
                return full(
                    StatusCode::GONE,
                    status(410, "Expired", "The provided continue parameter is too old"),
                );
            }
            (off, r)
        }
    };
    s.requests.push(format!(
        "LIST {} rv={:?} limit={limit:?} from={start}",
        res.kind(),
        rv
    ));
    let matching: Vec<&Value> = s
        .objects
        .get(&res)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| filter.matches(o))
        .collect();
    let total = matching.len();
    let end = limit.map_or(total, |l| (start + l).min(total));
    let page: Vec<Value> = matching
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|o| {
            // Items of a typed list carry no apiVersion/kind (the list does).
            let mut o = (*o).clone();
            let m = o.as_object_mut().unwrap();
            m.remove("apiVersion");
            m.remove("kind");
            o
        })
        .collect();
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if end < total {
        meta["continue"] = format!("{list_rv}-{end}").into();
    }
    full(
        StatusCode::OK,
        json!({"kind": format!("{}List", res.kind()), "apiVersion": res.api_version(),
               "metadata": meta, "items": page}),
    )
}
