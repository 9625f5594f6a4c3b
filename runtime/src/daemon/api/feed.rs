//! The daemon's side of the API source: the events of the API thread, kept as pending
//! session changes until the next sync, and the gate of the first sync (every initial list
//! done, as kube-proxy waits for its informers).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use svcc_compiler::manifest::Source;
use svcc_compiler::session::Session;
use svcc_compiler::NodeSettings;

use super::objects::{self, Kind};
use super::ApiEvent;
use crate::daemon::inputs::Change;

pub struct ApiInputs {
    /// The settings from flags and config; the node IPs come from the Node when empty here.
    base: NodeSettings,
    /// The kinds the first sync waits for (None: discovery not done yet).
    expected: Option<BTreeSet<Kind>>,
    listed: BTreeSet<Kind>,
    /// Keys of the objects each kind has in the session (or pending).
    known: HashMap<Kind, HashSet<String>>,
    /// key → new text (None: removed), applied at the next sync.
    pending: BTreeMap<String, Option<String>>,
    /// This node's Node (its text), for the node IPs.
    node: Option<String>,
    /// Failed list/watch/discovery requests so far.
    pub errors: u64,
    /// Where invalid objects are reported as Kubernetes Events.
    pub bad_objects: Option<super::BadObjects>,
}

impl ApiInputs {
    pub fn new(base: NodeSettings) -> ApiInputs {
        ApiInputs {
            base,
            expected: None,
            listed: BTreeSet::new(),
            known: HashMap::new(),
            pending: BTreeMap::new(),
            node: None,
            errors: 0,
            bad_objects: None,
        }
    }

    /// Whether every initial list is done (the first sync waits for it).
    pub fn synced(&self) -> bool {
        self.expected
            .as_ref()
            .is_some_and(|e| e.iter().all(|k| self.listed.contains(k)))
    }

    /// Takes one event of the API thread; returns whether there is something new to sync.
    pub fn on_event(&mut self, ev: ApiEvent) -> bool {
        match ev {
            ApiEvent::Expect(kinds) => {
                self.expected = Some(kinds.into_iter().collect());
            }
            ApiEvent::Listed { kind, objects } => {
                let now: HashSet<String> = objects.iter().map(|(k, _)| k.clone()).collect();
                let old = self.known.insert(kind, now).unwrap_or_default();
                let new = &self.known[&kind];
                for gone in old.iter().filter(|k| !new.contains(*k)) {
                    tracing::debug!(target: "svcc::api", key = %gone, "not in the re-list: removed");
                    self.pending.insert(gone.clone(), None);
                }
                if kind == Kind::Node {
                    self.node = objects.first().map(|(_, t)| t.clone());
                }
                for (k, t) in objects {
                    self.pending.insert(k, Some(t));
                }
                let first = self.listed.insert(kind);
                if first && self.synced() {
                    tracing::info!(target: "svcc::api", "every initial list is in: first sync");
                }
            }
            ApiEvent::Upsert { kind, key, text } => {
                if kind == Kind::Node {
                    self.node = Some(text.clone());
                }
                self.known.entry(kind).or_default().insert(key.clone());
                self.pending.insert(key, Some(text));
            }
            ApiEvent::Delete { kind, key } => {
                if kind == Kind::Node {
                    self.node = None;
                }
                if let Some(s) = self.known.get_mut(&kind) {
                    s.remove(&key);
                }
                self.pending.insert(key, None);
            }
            ApiEvent::Error { .. } => {
                self.errors += 1;
                return false;
            }
        }
        self.synced()
    }

    /// Whether a sync now would bring something (never before every initial list is in).
    pub fn ready(&self) -> bool {
        self.synced() && !self.pending.is_empty()
    }

    /// Objects in the session.
    pub fn objects(&self) -> usize {
        self.known.values().map(HashSet::len).sum()
    }

    /// The node IPs to compile with: the flags', else the Node's.
    fn node_ips(&self) -> Vec<IpAddr> {
        if !self.base.node_ips.is_empty() {
            return self.base.node_ips.clone();
        }
        self.node
            .as_deref()
            .map(objects::node_ips)
            .unwrap_or_default()
    }

    /// Applies the pending changes to the session.
    pub fn refresh(&mut self, session: &mut Session) -> Change {
        let mut ch = Change::default();
        if !self.synced() {
            return ch;
        }
        for (name, text) in std::mem::take(&mut self.pending) {
            match text {
                Some(text) => {
                    if session.set_file(Source { name, text }) {
                        ch.changed = true;
                        ch.files_read += 1;
                    }
                }
                None => {
                    if session.remove_file(&name) {
                        ch.changed = true;
                        ch.files_removed += 1;
                    }
                }
            }
        }
        let ips = self.node_ips();
        // A Node deleted (or left without addresses) keeps the last node IPs: rules are not
        // withdrawn from a node that is still running.
        let had = !session.settings().node_ips.is_empty();
        if ips != session.settings().node_ips && (!ips.is_empty() || !had) {
            if ips.is_empty() {
                tracing::warn!(target: "svcc::api", node = %self.base.hostname, "no node IPs: no --node-ip, and the Node has no InternalIP/ExternalIP (or does not exist): nothing is programmed until it has");
            } else {
                tracing::info!(target: "svcc::api", node = %self.base.hostname, node_ips = ?ips, "node IPs from the Node's status.addresses");
            }
            let mut s = session.settings().clone();
            s.node_ips = ips;
            ch.changed |= session.set_settings(s);
        }
        ch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> (String, String) {
        let v = serde_json::json!({"metadata": {"name": name, "namespace": "d"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        objects::source_text(Kind::Service, v)
    }

    #[test]
    fn first_sync_waits_for_every_list_and_a_relist_removes_what_it_lost() {
        let base = NodeSettings {
            hostname: "n1".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            ..Default::default()
        };
        let mut session = Session::new(base.clone());
        let mut a = ApiInputs::new(base);
        let listed = |kind, objects| ApiEvent::Listed { kind, objects };
        assert!(!a.on_event(listed(Kind::Service, vec![svc("a", "10.96.0.1")])));
        a.on_event(ApiEvent::Expect(vec![
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Node,
        ]));
        assert!(!a.on_event(listed(Kind::EndpointSlice, vec![])));
        assert!(!a.ready());
        assert!(
            !a.refresh(&mut session).changed,
            "nothing before every list"
        );
        assert!(a.on_event(listed(Kind::Node, vec![])));
        assert!(a.ready());
        assert!(a.refresh(&mut session).changed);
        assert_eq!(
            session.file_names().collect::<Vec<_>>(),
            ["api/Service/d/a"]
        );

        let (k, t) = svc("b", "10.96.0.2");
        a.on_event(ApiEvent::Upsert {
            kind: Kind::Service,
            key: k,
            text: t,
        });
        a.refresh(&mut session);
        assert_eq!(a.objects(), 2);
        // A re-list (after 410 Gone) that lost `a`: `a` goes, `b` stays, in one refresh.
        a.on_event(listed(Kind::Service, vec![svc("b", "10.96.0.2")]));
        let ch = a.refresh(&mut session);
        assert_eq!((ch.files_read, ch.files_removed), (0, 1));
        assert_eq!(
            session.file_names().collect::<Vec<_>>(),
            ["api/Service/d/b"]
        );
    }

    #[test]
    fn node_ips_come_from_the_node_and_outlive_it() {
        let base = NodeSettings {
            hostname: "n1".into(),
            ..Default::default()
        };
        let mut session = Session::new(base.clone());
        let mut a = ApiInputs::new(base);
        a.on_event(ApiEvent::Expect(vec![Kind::Node]));
        let node = serde_json::json!({"metadata": {"name": "n1"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.0.2"}]}});
        let (key, text) = objects::source_text(Kind::Node, node);
        a.on_event(ApiEvent::Listed {
            kind: Kind::Node,
            objects: vec![(key.clone(), text)],
        });
        assert!(a.refresh(&mut session).changed);
        let ips = vec!["192.168.0.2".parse::<IpAddr>().unwrap()];
        assert_eq!(session.settings().node_ips, ips);
        a.on_event(ApiEvent::Delete {
            kind: Kind::Node,
            key,
        });
        a.refresh(&mut session);
        assert_eq!(session.settings().node_ips, ips, "kept");
        assert_eq!(session.file_names().count(), 0);
    }
}
