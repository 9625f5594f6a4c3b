//! Incremental sync benchmark: what `svcc run` does after one endpoint changes, with N
//! services loaded — re-read the changed file (a compile `Session`), lower and build, and
//! send the difference with the long-lived netlink `Applier`. Run it in a throwaway network
//! namespace (it programs the current one):
//!
//!   ip netns add b; ip netns exec b cargo run --release --example sync -- 10000; ip netns del b
//!
//! Prints the median over 20 changes: total, compile (lower + build), apply, messages.

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use svcc_compiler::session::Session;
use svcc_compiler::{NodeSettings, Source};
use svcc_runtime::{Applier, ApplyOptions};

fn target(endpoint: u32) -> Source {
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: target, namespace: zz-bench}}\nspec:\n  clusterIP: 10.96.255.250\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: target-1\n  namespace: zz-bench\n  labels: {{kubernetes.io/service-name: target}}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.255.10]\n- addresses: [10.244.254.{}]\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n",
        endpoint % 250 + 1
    );
    Source {
        name: "target.yaml".into(),
        text,
    }
}

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
    session.set_file(target(0));
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

    let (mut total, mut compile, mut apply, mut msgs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=20 {
        let t0 = Instant::now();
        assert!(session.set_file(target(i)));
        let out = session.compile();
        let t1 = Instant::now();
        let r = applier
            .apply_owned(out.ruleset, &ApplyOptions::default())
            .expect("incremental apply");
        let t2 = Instant::now();
        assert!(
            !r.full,
            "one endpoint change must be incremental: {}",
            r.reason
        );
        total.push(t2 - t0);
        compile.push(t1 - t0);
        apply.push(t2 - t1);
        msgs.push(r.messages);
    }
    msgs.sort();
    println!(
        "total {:.1} ms (compile {:.1} ms, apply {:.1} ms), {} messages",
        median(total).as_secs_f64() * 1e3,
        median(compile).as_secs_f64() * 1e3,
        median(apply).as_secs_f64() * 1e3,
        msgs[msgs.len() / 2]
    );
}
