//! Incremental sync benchmark: what `svcc run` does after one endpoint changes, with N
//! services loaded — the compile `Session` re-lowers the one Service whose endpoints changed
//! and gives the delta of its service ports; the long-lived netlink `Applier` sends it. Run it in a throwaway network
//! namespace (it programs the current one):
//!
//!   ip netns add b; ip netns exec b cargo run --release --example sync -- 10000; ip netns del b
//!
//! Prints, for an endpoint replaced, an endpoint added/removed and a Service (ClusterIP + external
//! IP, two endpoints) added/removed, the median over 20
//! changes: total, compile (parse of the changed file + delta), apply, messages.

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use svcc_compiler::session::Session;
use svcc_compiler::{NodeSettings, Source};
use svcc_runtime::{Applier, ApplyOptions};

/// The benchmark's own Service with two endpoints; `endpoint` picks the second one's address,
/// `extra` adds a third endpoint (a change of the endpoint count).
fn target(endpoint: u32, extra: bool) -> Source {
    let third = if extra {
        "- addresses: [10.244.253.10]\n"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: target, namespace: zz-bench}}\nspec:\n  clusterIP: 10.96.255.250\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: target-1\n  namespace: zz-bench\n  labels: {{kubernetes.io/service-name: target}}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.255.10]\n- addresses: [10.244.254.{}]\n{third}ports:\n- {{name: http, port: 8080, protocol: TCP}}\n",
        endpoint % 250 + 1
    );
    Source {
        name: "target.yaml".into(),
        text,
    }
}

const EXTRA: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: zz-bench}\nspec:\n  clusterIP: 10.96.255.251\n  externalIPs: [203.0.113.251]\n  ports: [{name: http, port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: extra-1\n  namespace: zz-bench\n  labels: {kubernetes.io/service-name: extra}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.253.20]\n- addresses: [10.244.253.21]\nports:\n- {name: http, port: 8080, protocol: TCP}\n";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10000);
    let settings = NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    };
    let mut session = Session::new(settings);
    let text = cluster::generate(&cluster::GenOptions {
        services: n,
        endpoints: n * 10,
        ..Default::default()
    });
    session.set_file(Source {
        name: "cluster.yaml".into(),
        text,
    });
    session.set_file(target(0, false));
    let mut applier = Applier::new().expect("netlink");
    let t = Instant::now();
    let out = session.compile();
    let r = applier
        .apply_owned(out.ruleset, &ApplyOptions::default())
        .expect("first apply");
    eprintln!(
        "initial full sync of {n} services: {:.2?} ({} messages)",
        t.elapsed(),
        r.messages
    );
    // 1: one endpoint replaced by another (the count stays); 2: one endpoint added or removed.
    let replaced = measure(&mut session, &mut applier, |i| target(i, false));
    let count = measure(&mut session, &mut applier, |i| target(1000, i % 2 == 1));
    // 3: a whole Service (ClusterIP and an external IP, two endpoints) added, then removed
    // (the generated cluster uses up the NodePort range from 10k services on).
    let service = measure(&mut session, &mut applier, |i| Source {
        name: "extra.yaml".into(),
        text: if i % 2 == 1 {
            EXTRA.into()
        } else {
            String::new()
        },
    });
    println!("replaced: {replaced}");
    println!("added/removed: {count}");
    println!("service: {service}");
}

/// Median over 20 changes of what `svcc run` does: the session's delta, sent by the applier.
fn measure(session: &mut Session, applier: &mut Applier, src: impl Fn(u32) -> Source) -> String {
    let (mut total, mut compile, mut apply, mut msgs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut kernel = Vec::new();
    // SVCC_SYNC_CHANGES: more changes (e.g. to profile them); 20 by default.
    let changes: u32 = std::env::var("SVCC_SYNC_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for i in 1..=changes {
        let t0 = Instant::now();
        assert!(session.set_file(src(i)));
        let inc = session.compile_delta().expect("the change is a delta");
        let t1 = Instant::now();
        let r = applier
            .apply_delta(&inc.delta, &ApplyOptions::default())
            .expect("incremental apply")
            .expect("the applier takes the delta");
        let t2 = Instant::now();
        assert!(r.committed && !r.full, "{r:?}");
        total.push(t2 - t0);
        compile.push(t1 - t0);
        apply.push(t2 - t1);
        kernel.push(r.kernel_time);
        msgs.push(r.messages);
    }
    msgs.sort();
    // The minimum too: on a busy machine the median mostly measures waiting for a core.
    let min = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    format!(
        "total {:.2} ms (compile {:.2} ms, apply {:.2} ms of which kernel {:.2} ms; min total {:.2} ms, kernel {:.2} ms), {} messages",
        median(total.clone()).as_secs_f64() * 1e3,
        median(compile).as_secs_f64() * 1e3,
        median(apply).as_secs_f64() * 1e3,
        median(kernel.clone()).as_secs_f64() * 1e3,
        min(&total).as_secs_f64() * 1e3,
        min(&kernel).as_secs_f64() * 1e3,
        msgs[msgs.len() / 2]
    )
}
