//! `svcc run` fed by the Kubernetes API, measured end to end: the in-test API server of
//! tests/api/server.rs serves N Services (E endpoints each) to the release `svcc run` binary,
//! which programs the current network namespace — run it in a throwaway one:
//!
//!   cargo build --release --bin svcc --example api_watch
//!   ip netns add svcc-bench; ip netns exec svcc-bench target/release/examples/api_watch 10000 10
//!   ip netns del svcc-bench
//!
//! (`SVCC_BIN=path/to/svcc` runs another build of the daemon.)
//!
//! Prints: the initial list served, compiled and applied (from the daemon's start to /healthz
//! 200), the daemon's RSS (VmRSS, VmHWM) then, and for one endpoint changed (a slice replaced on
//! the server) the time from the server sending the event to the daemon's
//! `kubeproxy_sync_proxy_rules_last_timestamp_seconds` (set once the kernel took the
//! transaction): median and p90 over 40 changes.

#[path = "../tests/api/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use server::{ApiServer, Res};

const METRICS: &str = "127.0.0.1:10249";
const HEALTHZ: &str = "127.0.0.1:10256";

fn meta(name: &str, ns: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(str::to_string),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn svc(i: usize) -> Service {
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    Service {
        metadata: meta(&format!("s{i}"), Some("bench"), &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
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

/// Service i's slice; `shift` moves its first endpoint (a pod rescheduled).
fn slice(i: usize, e: usize, shift: usize) -> EndpointSlice {
    let name = format!("s{i}");
    EndpointSlice {
        metadata: meta(
            &format!("{name}-1"),
            Some("bench"),
            &[("kubernetes.io/service-name", &name)],
        ),
        address_type: "IPv4".into(),
        endpoints: (0..e)
            .map(|j| {
                let k = i * e + j + if j == 0 { shift * 7919 } else { 0 };
                Endpoint {
                    addresses: vec![format!(
                        "10.{}.{}.{}",
                        64 + (k >> 16) % 64,
                        (k >> 8) & 255,
                        k & 255
                    )],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    node_name: Some(if j == 0 { "node-a" } else { "node-b" }.into()),
                    ..Default::default()
                }
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

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

fn last_sync() -> f64 {
    get(METRICS, "/metrics")
        .and_then(|(_, b)| {
            b.lines()
                .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_last_timestamp_seconds "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rss(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N E"))
        .collect();
    let (n, e) = (
        args.first().copied().unwrap_or(10000),
        args.get(1).copied().unwrap_or(10),
    );
    // The svcc binary beside this example's directory, or $SVCC_BIN.
    let bin = std::env::var_os("SVCC_BIN").map_or_else(
        || {
            std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("svcc")
        },
        std::path::PathBuf::from,
    );
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = ApiServer::start(listener, "node-a");
    api.set_serve_cidrs(false);
    api.put(
        Res::Nodes,
        Node {
            metadata: meta("node-a", None, &[]),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.168.0.2".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    for i in 0..n {
        api.put(Res::Services, svc(i));
        api.put(Res::EndpointSlices, slice(i, e, 0));
    }
    let dir = std::env::temp_dir().join(format!("svcc-api-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: b\n  context: {{cluster: b, user: u}}\ncurrent-context: b\n", api.addr),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(&bin)
        .args(["run", "--kubeconfig"])
        .arg(&kc)
        .args([
            "--hostname-override",
            "node-a",
            "--min-sync-period",
            "0s",
            "--sync-period",
            "1h",
            "--metrics-bind-address",
            METRICS,
            "--healthz-bind-address",
            HEALTHZ,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release --bin svcc)", bin.display()));
    loop {
        if matches!(get(HEALTHZ, "/healthz"), Some((200, _))) {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("svcc run exited: {st}; log in {}", dir.display());
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "not healthy");
        std::thread::sleep(Duration::from_millis(5));
    }
    let initial = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "{n} services, {} endpoints: initial list served+compiled+applied in {:.2} s; {}",
        n * e,
        initial.as_secs_f64(),
        rss(child.id())
    );
    let mut lat = Vec::new();
    for c in 1..=40 {
        let before = last_sync();
        let sent = unix();
        api.put(Res::EndpointSlices, slice(c % 7, e, c));
        let t = Instant::now();
        let done = loop {
            let l = last_sync();
            if l > before && l >= sent {
                break l;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "change not applied");
            std::thread::sleep(Duration::from_micros(200));
        };
        lat.push((done - sent) * 1e3);
        std::thread::sleep(Duration::from_millis(30));
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "one endpoint changed, event sent -> kernel: p50 {:.2} ms, p90 {:.2} ms (40 changes); {}",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        rss(child.id())
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    println!("daemon log: {}", dir.join("log").display());
}
