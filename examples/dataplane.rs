//! Data-plane benchmark: new TCP connections per second through one Service VIP while N
//! services are loaded, for the nftables and the iptables backends.
//!
//! Topology (throwaway network namespaces, removed on exit): client ⇄ node ⇄ backend over veth.
//! The node holds the compiled rules; the measured service sorts last (`zz-bench/target`), the
//! worst case for iptables' linear `SVCC-SERVICES` chain. Each connection is opened and reset
//! (SO_LINGER 0), so every try is a new conntrack entry and a full rule traversal.
//!
//!   sudo cargo run --release --example dataplane -- [--seconds 3] [--backend nft|iptables-legacy|iptables-nft|userspace] [--bulk] [--memory] N...
//! prints one line per (backend, N): `backend services conn/s` (the median of five runs, taken in rounds over the sizes).
//! `--bulk`: instead, the throughput of one TCP connection through the VIP (the backend sends
//! zeros for the whole run), in Gbit/s. `--memory` (userspace only): the proxy's RSS growth per
//! 1,000 open connections (this process holds the proxy; clients and servers are in the kernel).
//! `userspace`: the proxy of `svcc run --backend userspace` runs in this process, in the node
//! namespace, and its DNAT-to-listener rules are loaded with `nft -f`.

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use svcc_compiler::{compile, CompileOptions, NodeSettings, Source};
use svcc_runtime::iptables::{Flavor, IptApplier};

const VIP: &str = "10.96.255.250";
const BACKEND: &str = "10.244.255.10";

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Ns {
        let n = format!("svcc-dp-{}-{tag}", std::process::id());
        sh("ip", &["netns", "add", &n]);
        Ns(n)
    }
    fn run(&self, prog: &str, args: &[&str]) {
        let mut v = vec!["netns", "exec", &self.0, prog];
        v.extend_from_slice(args);
        sh("ip", &v);
    }
    /// Moves the current thread into this namespace.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns");
        // SAFETY: setns with a valid netns fd only changes this thread's namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(prog: &str, args: &[&str]) {
    let o = Command::new(prog).args(args).output().expect(prog);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The generated cluster plus the measured service (one endpoint, the backend namespace).
fn manifests(services: usize) -> Vec<Source> {
    let mut text = cluster::generate(&cluster::GenOptions {
        services: services.saturating_sub(1),
        endpoints: services.saturating_sub(1) * 3,
        ..Default::default()
    });
    if services <= 1 {
        text = "apiVersion: v1\nkind: List\nitems: []\n".into();
    }
    let bench = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: target, namespace: zz-bench}}\nspec:\n  clusterIP: {VIP}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: target-1\n  namespace: zz-bench\n  labels: {{kubernetes.io/service-name: target}}\naddressType: IPv4\nendpoints:\n- addresses: [{BACKEND}]\n  nodeName: node-1\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n"
    );
    vec![
        Source {
            name: "gen.yaml".into(),
            text,
        },
        Source {
            name: "bench.yaml".into(),
            text: bench,
        },
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum What {
    Connections,
    Bulk,
    Memory,
}

/// VmRSS of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn measure(backend: &str, services: usize, seconds: f64, what: What) -> f64 {
    let node = Ns::new("node");
    let client = Ns::new("client");
    let server = Ns::new("server");
    // Links: client(10.9.0.2) — node(10.9.0.1 / 10.244.255.1) — server(10.244.255.10).
    sh(
        "ip",
        &[
            "link", "add", "dpc", "netns", &client.0, "type", "veth", "peer", "dpcn", "netns",
            &node.0,
        ],
    );
    sh(
        "ip",
        &[
            "link", "add", "dps", "netns", &server.0, "type", "veth", "peer", "dpsn", "netns",
            &node.0,
        ],
    );
    for (ns, cmds) in [
        (
            &client,
            vec![
                "ip addr add 10.9.0.2/24 dev dpc",
                "ip link set dpc up",
                "ip link set lo up",
                "ip route add default via 10.9.0.1",
            ],
        ),
        (
            &server,
            vec![
                "ip addr add 10.244.255.10/24 dev dps",
                "ip link set dps up",
                "ip link set lo up",
                "ip route add default via 10.244.255.1",
            ],
        ),
        (
            &node,
            vec![
                "ip addr add 10.9.0.1/24 dev dpcn",
                "ip addr add 10.244.255.1/24 dev dpsn",
                "ip link set dpcn up",
                "ip link set dpsn up",
                "ip link set lo up",
                "sysctl -qw net.ipv4.ip_forward=1",
            ],
        ),
    ] {
        for c in cmds {
            let p: Vec<&str> = c.split(' ').collect();
            ns.run(p[0], &p[1..]);
        }
    }
    for ns in [&client, &server] {
        ns.run(
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=10000 60999"],
        );
    }

    let settings = NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["10.9.0.1".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    };
    let out = compile(&manifests(services), &settings, CompileOptions::default()).expect("compile");
    let t = Instant::now();
    // Userspace mode: the proxy lives in a thread of the node namespace (its runtime's threads
    // and sockets with it) until the measurement ends.
    let proxy_stop = Arc::new(AtomicBool::new(false));
    let mut proxy_thread = None;
    match backend {
        "userspace" => {
            let (tx, rx) = std::sync::mpsc::channel();
            let name = node.0.clone();
            let stop = proxy_stop.clone();
            let mut s2 = settings.clone();
            s2.backend = svcc_compiler::Backend::Userspace;
            let ir = compile(&manifests(services), &s2, CompileOptions::default())
                .expect("compile")
                .ir;
            proxy_thread = Some(std::thread::spawn(move || {
                let ns = Ns(name);
                ns.enter();
                std::mem::forget(ns);
                let mut p =
                    svcc_runtime::userspace::Proxy::new((40000, 59999), Duration::from_millis(250))
                        .expect("proxy");
                p.sync(&ir);
                let text = svcc_compiler::nft::render::render_replace(&p.ruleset(&ir));
                tx.send(text).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
            let text = rx.recv().expect("the proxy's rules");
            let path = std::env::temp_dir().join(format!("svcc-dp-{}.nft", std::process::id()));
            std::fs::write(&path, text).unwrap();
            node.run("nft", &["-f", path.to_str().unwrap()]);
            let _ = std::fs::remove_file(&path);
        }
        "nft" => {
            let path = std::env::temp_dir().join(format!("svcc-dp-{}.nft", std::process::id()));
            std::fs::write(&path, out.nft_text()).unwrap();
            node.run("nft", &["-f", path.to_str().unwrap()]);
            let _ = std::fs::remove_file(&path);
        }
        b => {
            let flavor = if b == "iptables-nft" {
                Flavor::Nft
            } else {
                Flavor::Legacy
            };
            let rs = out.iptables();
            std::thread::scope(|s| {
                s.spawn(|| {
                    node.enter();
                    IptApplier::new(flavor).apply(&rs).expect("iptables apply");
                });
            });
        }
    }
    eprintln!(
        "  loaded {backend} with {services} services in {:.2?}",
        t.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let srv = {
        let stop = stop.clone();
        let name = server.0.clone();
        std::thread::spawn(move || {
            let ns = Ns(name);
            ns.enter();
            std::mem::forget(ns);
            let l = TcpListener::bind("0.0.0.0:8080").unwrap();
            l.set_nonblocking(true).unwrap();
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => match what {
                        What::Connections => {
                            let _ = s.write_all(b"x");
                        }
                        What::Memory => {
                            let _ = s.write_all(b"x");
                            held.push(s);
                        }
                        What::Bulk => {
                            let stop = stop.clone();
                            std::thread::spawn(move || {
                                let _ = s.set_nonblocking(false);
                                let buf = vec![0u8; 1 << 16];
                                while !stop.load(Ordering::Relaxed) {
                                    if s.write_all(&buf).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                    },
                    Err(_) => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let dst: SocketAddr = format!("{VIP}:80").parse().unwrap();
    if what != What::Connections {
        let name = client.0.clone();
        let result = std::thread::spawn(move || {
            let ns = Ns(name);
            ns.enter();
            std::mem::forget(ns);
            if what == What::Bulk {
                let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2)).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                // Warm up, then count.
                let warm = Instant::now() + Duration::from_millis(300);
                while Instant::now() < warm {
                    let _ = s.read(&mut buf);
                }
                let t0 = Instant::now();
                let end = t0 + Duration::from_secs_f64(seconds);
                let mut bytes = 0u64;
                while Instant::now() < end {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes += n as u64,
                    }
                }
                bytes as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9
            } else {
                // 1,000 open connections, each answered once (so the proxy has dialed it).
                let before = rss_kib();
                let mut conns = Vec::new();
                let mut b = [0u8; 1];
                for _ in 0..1000 {
                    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2)).unwrap();
                    s.read_exact(&mut b).unwrap();
                    conns.push(s);
                }
                std::thread::sleep(Duration::from_millis(300));
                let after = rss_kib();
                drop(conns);
                (after.saturating_sub(before)) as f64 / 1024.0
            }
        })
        .join()
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        srv.join().unwrap();
        proxy_stop.store(true, Ordering::Relaxed);
        if let Some(t) = proxy_thread {
            t.join().unwrap();
        }
        return result;
    }
    let count = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (count, failures, name) = (count.clone(), failures.clone(), client.0.clone());
            std::thread::spawn(move || {
                let ns = Ns(name);
                ns.enter();
                std::mem::forget(ns);
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut buf = [0u8; 1];
                while Instant::now() < end {
                    match TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                        Ok(mut s) => {
                            let _ = s.read(&mut buf);
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    srv.join().unwrap();
    proxy_stop.store(true, Ordering::Relaxed);
    if let Some(t) = proxy_thread {
        t.join().unwrap();
    }
    let f = failures.load(Ordering::Relaxed);
    if f > 0 {
        eprintln!("  {f} connections failed");
    }
    count.load(Ordering::Relaxed) as f64 / seconds
}

/// Runs per (backend, size); the median is printed.
const RUNS: usize = 5;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut seconds = 3.0;
    let mut backends: Vec<String> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    let mut what = What::Connections;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bulk" => what = What::Bulk,
            "--memory" => what = What::Memory,
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--backend" => backends.push(args.next().expect("--backend NAME")),
            n => counts.push(n.parse().expect("a number of services")),
        }
    }
    if backends.is_empty() {
        backends = vec!["nft".into(), "iptables-legacy".into()];
    }
    if counts.is_empty() {
        counts = vec![1, 1000, 10000];
    }
    let unit = match what {
        What::Connections => "conn/s",
        What::Bulk => "Gbit/s",
        What::Memory => "MiB per 1k open connections",
    };
    println!("backend\tservices\t{unit}");
    for b in &backends {
        // The median of five runs, taken in rounds over the sizes: single runs on a 2-core
        // VM vary by ±15 %, and drift (the first runs of a series tend to be faster) must not
        // favour one size.
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
        // Memory: one run per process (the allocator reuses what an earlier run freed, so only
        // a fresh process shows the growth); run one size per invocation.
        let runs_n = if what == What::Memory { 1 } else { RUNS };
        for _ in 0..runs_n {
            for (i, &n) in counts.iter().enumerate() {
                runs[i].push(measure(b, n, seconds, what));
            }
        }
        for (mut r, &n) in runs.into_iter().zip(&counts) {
            r.sort_by(|a, b| a.total_cmp(b));
            let rate = r[r.len() / 2];
            if what == What::Connections {
                println!("{b}\t{n}\t{rate:.0}");
            } else {
                println!("{b}\t{n}\t{rate:.2}");
            }
        }
    }
}
