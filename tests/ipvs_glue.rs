//! The IPVS mode's nftables glue, judged by real TCP between two throwaway network
//! namespaces — without IP_VS (this kernel has none; the whole mode runs in the VM, see
//! tests/flow). Every check of the glue runs before IPVS would see the packet (filter
//! prerouting/input at priorities below IPVS's LOCAL_IN hooks), so with no virtual server a
//! connection the glue lets through reaches a listener of the node itself: "connected" means
//! "let through to IPVS", a refusal is the glue's REJECT, a timeout its DROP. The same probes
//! without the glue all connect, so each expectation can fail.
//! Needs root, `ip` and `nft`; skipped otherwise.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use svcc_compiler::ipvs::render::{section, Section};

const NODE_IP: &str = "192.168.0.2";
const CLIENT_IP: &str = "192.168.0.9";
/// A probe's source: the node itself (unbound: the kernel picks the source).
const NODE: &str = "node";

/// Two namespaces (node, client) joined by a veth pair; removed even when the test fails.
struct Topology {
    node: String,
    client: String,
}

impl Topology {
    fn new() -> Topology {
        let pid = std::process::id();
        let t = Topology {
            node: format!("svcc-ipvsg-{pid}-node"),
            client: format!("svcc-ipvsg-{pid}-cli"),
        };
        for n in [&t.node, &t.client] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
            run("ip", &["netns", "add", n]);
        }
        let (node, cli) = (t.node.as_str(), t.client.as_str());
        run(
            "ip",
            &[
                "-n", node, "link", "add", "eth0", "type", "veth", "peer", "eth0", "netns", cli,
            ],
        );
        for (ns, addr) in [(node, NODE_IP), (cli, CLIENT_IP)] {
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // The client plays a pod (10.0.5.5) and two outside clients.
        for a in ["10.0.5.5/32", "203.0.113.9/32", "203.0.113.99/32"] {
            run("ip", &["-n", cli, "addr", "add", a, "dev", "lo"]);
        }
        run(
            "ip",
            &["-n", cli, "route", "add", "default", "via", NODE_IP],
        );
        for r in ["10.0.5.5/32", "203.0.113.0/24"] {
            run("ip", &["-n", node, "route", "add", r, "via", CLIENT_IP]);
        }
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in [&self.node, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "nft"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    if !(root && tools) {
        eprintln!("note: not root or no ip/nft: skipped");
    }
    root && tools
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: plain syscall on a valid descriptor; only this thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .expect("namespace thread")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Connected,
    Refused,
    TimedOut,
}

fn probe(ns: &str, src: &str, dst: &str, port: u16) -> Outcome {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    in_ns(ns, move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        match s.connect_timeout(
            &SocketAddr::new(dst, port).into(),
            Duration::from_millis(800),
        ) {
            Ok(()) => Outcome::Connected,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut,
            Err(e) => panic!("{src} -> {dst}:{port}: {e}"),
        }
    })
}

fn compile() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_svcc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "compile",
            "--backend",
            "ipvs",
            "--hostname-override",
            "node-a",
            "--node-ip",
            NODE_IP,
            "--cluster-cidr",
            "10.0.0.0/16",
            "--service-cidr",
            "172.30.0.0/16",
            "tests/ipvs/glue.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_glue_rejects_drops_and_lets_through() {
    if !usable() {
        return;
    }
    let text = compile();
    let t = Topology::new();
    // svcc-ipvs0 with the VIPs, as the runtime makes it; on a kernel without the dummy
    // driver (this one), on lo: the glue only needs them to be local addresses.
    let dev = if Command::new("ip")
        .args(["-n", &t.node, "link", "add", "svcc-ipvs0", "type", "dummy"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        run("ip", &["-n", &t.node, "link", "set", "svcc-ipvs0", "up"]);
        "svcc-ipvs0"
    } else {
        "lo"
    };
    let dummy = section(&text, Section::DummyAddresses).unwrap();
    assert!(!dummy.is_empty());
    for a in dummy.lines() {
        run("ip", &["-n", &t.node, "addr", "add", a, "dev", dev]);
    }
    // The node's own listeners stand in for IPVS: service ports, a port that is no service,
    // a NodePort, the health-check NodePort.
    let listeners: Vec<TcpListener> = in_ns(&t.node, || {
        [80u16, 8081, 30080, 30082, 32002]
            .iter()
            .map(|p| TcpListener::bind(("0.0.0.0", *p)).unwrap())
            .collect()
    });

    let ext = "203.0.113.9"; // inside the LB's source range
    let denied = "203.0.113.99"; // outside it
    let pod = "10.0.5.5";
    use Outcome::*;
    let probe = |src: &str, dst: &str, port: u16| {
        if src == NODE {
            probe(&t.node, "0.0.0.0", dst, port)
        } else {
            probe(&t.client, src, dst, port)
        }
    };
    let cases: &[(&str, &str, &str, u16, Outcome)] = &[
        ("ClusterIP service port", ext, "172.30.0.10", 80, Connected),
        (
            "a VIP on a port that is no service (vip-filter)",
            ext,
            "172.30.0.10",
            8081,
            Refused,
        ),
        (
            "ClusterIP without endpoints",
            ext,
            "172.30.0.11",
            80,
            Refused,
        ),
        (
            "LB IP from an allowed source",
            ext,
            "198.51.100.10",
            80,
            Connected,
        ),
        (
            "LB IP from a source outside the ranges",
            denied,
            "198.51.100.10",
            80,
            TimedOut,
        ),
        (
            "the NodePort ignores the source ranges",
            denied,
            NODE_IP,
            30080,
            Connected,
        ),
        (
            "eTP Local without local endpoints: external IP",
            ext,
            "192.0.2.12",
            80,
            TimedOut,
        ),
        (
            "eTP Local without local endpoints: NodePort",
            ext,
            NODE_IP,
            30082,
            TimedOut,
        ),
        (
            "eTP Local without local endpoints: a pod gets through",
            pod,
            "192.0.2.12",
            80,
            Connected,
        ),
        (
            "eTP Local without local endpoints: a pod to the NodePort",
            pod,
            NODE_IP,
            30082,
            Connected,
        ),
        (
            "eTP Local: the ClusterIP is not affected",
            ext,
            "172.30.0.12",
            80,
            Connected,
        ),
        (
            "health-check NodePort on a VIP passes the vip-filter",
            ext,
            "192.0.2.12",
            32002,
            Connected,
        ),
        // The node itself (output path: checks at priority -110, before IPVS's LOCAL_OUT).
        ("node: ClusterIP", NODE, "172.30.0.10", 80, Connected),
        (
            "node: ClusterIP without endpoints",
            NODE,
            "172.30.0.11",
            80,
            Refused,
        ),
        (
            "node: a VIP on a port that is no service",
            NODE,
            "172.30.0.10",
            8081,
            Refused,
        ),
        (
            "node: LB IP, the node's source (the VIP) outside the ranges",
            NODE,
            "198.51.100.10",
            80,
            TimedOut,
        ),
        (
            "node: eTP Local without local endpoints is not dropped",
            NODE,
            "192.0.2.12",
            80,
            Connected,
        ),
    ];
    // Without the glue every probe reaches a listener: each expectation below can fail.
    for (name, src, dst, port, _) in cases {
        assert_eq!(probe(src, dst, *port), Connected, "without glue: {name}");
    }
    let glue = section(&text, Section::Nft).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.node, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(glue.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut wrong = Vec::new();
    for (name, src, dst, port, want) in cases {
        let got = probe(src, dst, *port);
        if got != *want {
            wrong.push(format!(
                "{name}: {src} -> {dst}:{port}: {got:?}, want {want:?}"
            ));
        }
    }
    drop(listeners);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
