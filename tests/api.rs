//! `svcc run` fed by the Kubernetes API (issue 12): `svcc run --kubeconfig …` against an
//! in-test API server (tests/api/server.rs: real list/watch protocol, real JSON, strict) in a
//! throwaway network namespace, checked by the kernel ruleset and real TCP (the harness of
//! tests/run.rs). Needs root; skipped otherwise.

#[path = "run/harness.rs"]
mod harness;
#[path = "api/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::*;
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use server::{ApiServer, Res};

const API: &str = "127.0.0.1:6443";

fn meta(name: &str, ns: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(str::to_string),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..Default::default()
    }
}

/// A ClusterIP Service `t/NAME`, TCP 80 → 8080.
fn svc(name: &str, ip: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(name, Some("t"), labels),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The EndpointSlice `t/NAME-1` of Service NAME: ready endpoints on node-a.
fn slice(name: &str, eps: &[usize], labels: &[(&str, &str)]) -> EndpointSlice {
    let mut l = vec![("kubernetes.io/service-name", name)];
    l.extend_from_slice(labels);
    EndpointSlice {
        metadata: meta(&format!("{name}-1"), Some("t"), &l),
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .map(|i| Endpoint {
                addresses: vec![ep_ip(*i)],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                node_name: Some("node-a".into()),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(8080),
            ..Default::default()
        }]),
    }
}

fn node() -> Node {
    Node {
        metadata: meta("node-a", None, &[("topology.kubernetes.io/zone", "z1")]),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "node-a".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: NODE_IP.into(),
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn listen(t: &Topo) -> TcpListener {
    in_ns(&t.node, || {
        TcpListener::bind(API).expect("bind the API port")
    })
}

fn kubeconfig(dir: &Path) -> String {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{API}\"}}\nusers:\n- name: svcc\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: svcc}}\ncurrent-context: test\n"
        ),
    )
    .unwrap();
    p.display().to_string()
}

/// `svcc run` against the API: no --watch, no --node-ip (the Node's InternalIP is used).
fn start(t: &Topo) -> Daemon {
    let kc = kubeconfig(&t.dir);
    let args: Vec<String> = [
        "--kubeconfig",
        &kc,
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.0.0.0/16",
        "--min-sync-period",
        "0s",
        "--sync-period",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Daemon::spawn(t, &args)
}

fn healthz(t: &Topo) -> Option<u16> {
    http_get(&t.node, HEALTHZ, "/healthz").ok().map(|(s, _)| s)
}

fn wait_healthy(t: &Topo, d: &mut Daemon) {
    let ok = eventually(Duration::from_secs(15), || {
        d.assert_running();
        healthz(t) == Some(200)
    });
    assert!(ok.is_some(), "never healthy:\n{}", d.log_text());
}

fn ep(i: usize) -> String {
    format!("{}:8080", ep_ip(i))
}

#[test]
fn the_ruleset_follows_the_api_stream() {
    if skip() {
        return;
    }
    let vips = [
        "172.30.0.1",
        "172.30.0.2",
        "172.30.0.3",
        "172.30.0.4",
        "172.30.0.5",
    ];
    let t = Topo::new(3, &vips);
    let api = ApiServer::start(listen(&t), "node-a");
    api.put(Res::Nodes, node());
    api.put(
        Res::ServiceCidrs,
        ServiceCIDR {
            metadata: meta("kubernetes", None, &[]),
            spec: Some(ServiceCIDRSpec {
                cidrs: Some(vec!["10.96.0.0/16".into()]),
            }),
            ..Default::default()
        },
    );
    api.put(Res::Services, svc("a", vips[0], &[]));
    api.put(Res::EndpointSlices, slice("a", &[0], &[]));
    api.put(Res::Services, svc("b", vips[1], &[]));
    api.put(Res::EndpointSlices, slice("b", &[1], &[]));
    // Another proxy's Service: the server only sends it to a client that forgot kube-proxy's
    // selector (and such a client is a violation anyway).
    let other = [("service.kubernetes.io/service-proxy-name", "cilium")];
    api.put(Res::Services, svc("c", vips[2], &other));
    api.put(Res::EndpointSlices, slice("c", &[2], &other));

    // Slow lists: /healthz is 503 until every initial list is in and applied.
    api.set_list_delay(Duration::from_millis(1500));
    let mut d = start(&t);
    let early = eventually(Duration::from_secs(5), || {
        d.assert_running();
        healthz(&t) == Some(503)
    });
    assert!(
        early.is_some(),
        "healthz not 503 before the lists:\n{}",
        d.log_text()
    );
    wait_healthy(&t, &mut d);
    api.set_list_delay(Duration::ZERO);
    expect_tcp(&t, &d, "172.30.0.1:80", &ep(0));
    expect_tcp(&t, &d, "172.30.0.2:80", &ep(1));
    // Not ours: untouched (answered by the address' owner).
    expect_tcp(&t, &d, "172.30.0.3:80", "172.30.0.3:80");
    assert!(
        d.log_text().contains("node IPs from the Node"),
        "{}",
        d.log_text()
    );
    let rules = t.nft(&["list", "ruleset"]);
    assert!(rules.contains("10.96.0.0/16"), "the ServiceCIDR:\n{rules}");

    // An endpoint change.
    api.put(Res::EndpointSlices, slice("a", &[2], &[]));
    expect_tcp(&t, &d, "172.30.0.1:80", &ep(2));
    // A Service deleted.
    api.delete(Res::Services, "t/b");
    expect_tcp(&t, &d, "172.30.0.2:80", "172.30.0.2:80");

    // 410 Gone: every watch expires; svcc re-lists (slowly) and never drops a rule meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pod, stop) = (t.pod.clone(), stop.clone());
        std::thread::spawn(move || {
            enter(&pod);
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                seen.push(tcp_once("172.30.0.1:80", Duration::from_millis(500)));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    api.set_list_delay(Duration::from_millis(800));
    let lists = api.count("LIST Service ");
    api.expire_watches();
    let relisted = eventually(Duration::from_secs(10), || {
        api.count("LIST Service ") > lists
    });
    assert!(
        relisted.is_some(),
        "no re-list after 410:\n{:#?}",
        api.requests()
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let seen = sampler.join().unwrap();
    assert!(seen.len() > 20, "{seen:?}");
    assert!(
        seen.iter().all(|r| r.as_deref() == Ok(ep(2).as_str())),
        "a connection was not served during the re-list: {seen:?}"
    );
    api.set_list_delay(Duration::ZERO);
    expect_tcp(&t, &d, "172.30.0.1:80", &ep(2));

    // A re-list that lost an object removes it.
    api.put(Res::Services, svc("d", vips[3], &[]));
    api.put(Res::EndpointSlices, slice("d", &[0], &[]));
    expect_tcp(&t, &d, "172.30.0.4:80", &ep(0));
    api.delete_unseen(Res::Services, "t/d");
    expect_tcp(&t, &d, "172.30.0.4:80", "172.30.0.4:80");

    // Dropped connections: svcc reconnects, resumes from the last version seen (no re-list),
    // and follows the next change.
    std::thread::sleep(Duration::from_millis(1200)); // a bookmark or two
    let lists = api.count("LIST");
    let watches = api.count("WATCH EndpointSlice");
    api.drop_connections();
    api.put(Res::EndpointSlices, slice("a", &[1], &[]));
    expect_tcp(&t, &d, "172.30.0.1:80", &ep(1));
    assert!(api.count("WATCH EndpointSlice") > watches);
    assert_eq!(api.count("LIST"), lists, "{:#?}", api.requests());

    // An object svcc cannot compile: reported (log naming it, metric), skipped; the rest served.
    let mut bad = svc("e", vips[4], &[]);
    bad.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 0;
    api.put(Res::Services, bad);
    expect_metric(&d, "svcc_invalid_objects", 1.0);
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("api/Service/t/e")),
        "{log}"
    );
    api.put(Res::EndpointSlices, slice("a", &[0], &[]));
    expect_tcp(&t, &d, "172.30.0.1:80", &ep(0));
    assert!(d.metric("svcc_api_objects") >= 5.0);
    // … and as a Kubernetes Event regarding it.
    let mut events = Vec::new();
    let written = eventually(WAIT, || {
        events = api.events();
        !events.is_empty()
    });
    assert!(written.is_some(), "no Event:\n{}", d.log_text());
    let ev = &events[0];
    assert_eq!(ev["type"], "Warning", "{ev:#}");
    assert_eq!(ev["reason"], "InvalidObject", "{ev:#}");
    assert_eq!(ev["reportingController"], "svcc", "{ev:#}");
    assert_eq!(ev["regarding"]["kind"], "Service", "{ev:#}");
    assert_eq!(ev["regarding"]["name"], "e", "{ev:#}");
    assert!(
        ev["note"].as_str().unwrap().contains("api/Service/t/e"),
        "{ev:#}"
    );

    assert_eq!(d.stop().code(), Some(0));
    api.assert_no_violations();
}

#[test]
fn an_unreachable_api_server_keeps_the_rules_and_is_retried() {
    if skip() {
        return;
    }
    let vip = "172.30.0.1";
    let t = Topo::new(2, &[vip]);
    let mut api = ApiServer::start(listen(&t), "node-a");
    api.set_serve_cidrs(false);
    api.put(Res::Nodes, node());
    api.put(Res::Services, svc("a", vip, &[]));
    api.put(Res::EndpointSlices, slice("a", &[0], &[]));
    let mut d = start(&t);
    wait_healthy(&t, &mut d);
    expect_tcp(&t, &d, "172.30.0.1:80", &ep(0));
    assert_eq!(d.stop().code(), Some(0));
    drop(d);

    // The server goes away; svcc restarts: 503, retries, and svcc's rules stay as they were.
    api.stop_listening();
    let mut d = start(&t);
    let errors = eventually(Duration::from_secs(10), || {
        d.assert_running();
        http_get(&t.node, METRICS, "/metrics").is_ok() && d.metric("svcc_api_errors_total") >= 2.0
    });
    assert!(errors.is_some(), "no retries counted:\n{}", d.log_text());
    assert_eq!(healthz(&t), Some(503));
    assert_eq!(
        tcp_from(&t.pod, "172.30.0.1:80").as_deref(),
        Ok(ep(0).as_str())
    );

    // Back (with a change made meanwhile): healthy, and the change is applied.
    api.put(Res::EndpointSlices, slice("a", &[1], &[]));
    api.listen_again(listen(&t));
    wait_healthy(&t, &mut d);
    expect_tcp(&t, &d, "172.30.0.1:80", &ep(1));
    assert!(
        !api.requests().iter().any(|r| r.contains("ServiceCIDR")),
        "ServiceCIDRs listed though discovery did not offer them: {:#?}",
        api.requests()
    );
    api.assert_no_violations();
}

/// Flag and configuration errors, before anything is touched.
#[test]
fn one_source_and_a_configuration_are_required() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_svcc"))
            .arg("run")
            .args(args)
            .args([
                "--node-ip",
                "192.0.2.1",
                "--metrics-bind-address",
                "",
                "--healthz-bind-address",
                "",
            ])
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--watch", "/tmp", "--kubeconfig", "/x"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("two sources"), "{err}");

    let dir = std::env::temp_dir().join(format!("svcc-api-noconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let home = dir.display().to_string();
    let (code, err) = run(&[], &[("HOME", &home)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no API server configuration"), "{err}");

    let bad = dir.join("kc");
    std::fs::write(&bad, "clusters: [").unwrap();
    let (code, err) = run(&["--kubeconfig", &bad.display().to_string()], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("kubeconfig {}", bad.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
