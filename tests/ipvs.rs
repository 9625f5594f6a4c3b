//! The IPVS applier against a kernel with IP_VS (inside the VM of `scripts/vm-test.sh`):
//! incremental applies cost only the difference, foreign virtual servers / addresses /
//! interfaces are byte-identical before and after, cleanup removes svcc's objects only, bad
//! inputs change nothing, and graceful termination keeps a live connection on a weight-0 real
//! server while new ones go elsewhere, then deletes it once its connections are gone.
//!
//! Every test skips unless `SVCC_IPVS=1`; with it, a test that cannot run fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use svcc_runtime::ipvs::{Desired, IpvsApplier, SvcKey, SvcParams, WantedService, DUMMY};

fn enabled() -> bool {
    if std::env::var("SVCC_IPVS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("note: SVCC_IPVS is not 1 (no IP_VS kernel): skipped");
    false
}

/// A throwaway node namespace plus a backend namespace joined by a veth pair:
/// node 10.200.0.1 / fd00:200::1, backend 10.200.0.2 / fd00:200::2.
struct Topo {
    node: String,
    be: String,
}

fn sh(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Topo {
    fn new(tag: &str) -> Topo {
        let node = format!("svcc-ipvs-{}-{tag}", std::process::id());
        let be = format!("{node}-be");
        let t = Topo { node, be };
        sh(&["ip", "netns", "add", &t.node]);
        sh(&["ip", "netns", "add", &t.be]);
        let (n, b) = (t.node.as_str(), t.be.as_str());
        for c in [
            vec!["ip", "-n", n, "link", "set", "lo", "up"],
            vec!["ip", "-n", b, "link", "set", "lo", "up"],
            vec![
                "ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                "netns", b,
            ],
            vec!["ip", "-n", n, "addr", "add", "10.200.0.1/24", "dev", "eth0"],
            vec!["ip", "-n", b, "addr", "add", "10.200.0.2/24", "dev", "eth0"],
            vec![
                "ip",
                "-n",
                n,
                "addr",
                "add",
                "fd00:200::1/64",
                "dev",
                "eth0",
                "nodad",
            ],
            vec![
                "ip",
                "-n",
                b,
                "addr",
                "add",
                "fd00:200::2/64",
                "dev",
                "eth0",
                "nodad",
            ],
            vec!["ip", "-n", n, "link", "set", "eth0", "up"],
            vec!["ip", "-n", b, "link", "set", "eth0", "up"],
            vec![
                "ip",
                "-n",
                b,
                "route",
                "add",
                "default",
                "via",
                "10.200.0.1",
            ],
            vec![
                "ip",
                "-n",
                b,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:200::1",
            ],
        ] {
            sh(&c);
        }
        t
    }

    /// Runs `f` on a thread inside namespace `ns`.
    fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let path = format!("/run/netns/{ns}");
                let fd = std::fs::File::open(&path).unwrap();
                // SAFETY: setns on a valid namespace descriptor; changes only this thread.
                let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}");
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Topo::within(&self.node, f)
    }

    fn in_node(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", self.node.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A TCP server in the backend namespace on `port`: greets with `name`, then echoes lines.
    fn server(&self, addr: &str, port: u16, name: &'static str) {
        let l = Topo::within(&self.be, || {
            TcpListener::bind(SocketAddr::new(addr.parse().unwrap(), port)).unwrap()
        });
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                std::thread::spawn(move || {
                    let _ = writeln!(c, "{name}");
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                        let _ = c.write_all(line.as_bytes());
                        line.clear();
                    }
                });
            }
        });
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.be]).status();
    }
}

fn key(addr: &str, proto: u16, port: u16) -> SvcKey {
    SvcKey {
        addr: addr.parse().unwrap(),
        proto,
        port,
    }
}

fn svc(sched: &str, dests: &[(&str, u16)]) -> WantedService {
    WantedService {
        params: SvcParams {
            sched: sched.into(),
            flags: 0,
            timeout: 0,
            netmask: 32,
        },
        dests: dests
            .iter()
            .map(|(a, p)| ((a.parse::<IpAddr>().unwrap(), *p), 1))
            .collect(),
        origin: "test/svc:port".into(),
    }
}

/// ClusterIP-style TCP v4 + UDP v4 + TCP v6 services, a NodePort-style one on the node address.
fn model() -> Desired {
    let mut d = Desired::default();
    d.services
        .insert(key("10.96.0.10", 6, 80), svc("rr", &[("10.200.0.2", 8080)]));
    d.services.insert(
        key("10.96.0.10", 17, 53),
        svc("wrr", &[("10.200.0.2", 5353)]),
    );
    d.services.insert(
        key("fd00:96::10", 6, 80),
        svc("lc", &[("fd00:200::2", 8080)]),
    );
    d.services.insert(
        key("10.200.0.1", 6, 30080),
        svc("sh", &[("10.200.0.2", 8080)]),
    );
    for (k, s) in d.services.iter_mut() {
        if k.addr.is_ipv6() {
            s.params.netmask = 128;
        }
    }
    d.bind = ["10.96.0.10", "fd00:96::10"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    d
}

/// The lines of `ipvsadm -Sn` (one per service or real server).
fn ipvs_lines(t: &Topo) -> BTreeSet<String> {
    t.in_node(&["ipvsadm", "-Sn"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `ip -o addr` and `ip -o link` lines of interfaces other than svcc-ipvs0. The kernel's own
/// duplicate-address detection ends by itself (a new link-local address is `tentative` for
/// a second or so), so that flag is not a change anybody made.
fn foreign_links(t: &Topo) -> String {
    let a = t.in_node(&["ip", "-o", "addr", "show"]);
    let l = t.in_node(&["ip", "-o", "link", "show"]);
    a.lines()
        .chain(l.lines())
        .filter(|l| !l.contains(DUMMY))
        .map(|l| l.replace(" tentative ", " "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn add_foreign(t: &Topo) {
    t.in_node(&[
        "ipvsadm",
        "-A",
        "-t",
        "10.1.1.1:80",
        "-s",
        "wlc",
        "-p",
        "300",
    ]);
    t.in_node(&[
        "ipvsadm",
        "-a",
        "-t",
        "10.1.1.1:80",
        "-r",
        "10.200.0.2:9090",
        "-m",
        "-w",
        "3",
    ]);
    t.in_node(&["ipvsadm", "-A", "-u", "10.200.0.1:30053", "-s", "rr"]);
    t.in_node(&["ipvsadm", "-A", "-f", "7", "-s", "rr"]);
    t.in_node(&["ip", "link", "add", "foreign0", "type", "dummy"]);
    t.in_node(&["ip", "addr", "add", "10.9.9.9/32", "dev", "foreign0"]);
}

const FOREIGN_IPVS: [&str; 4] = [
    "-A -t 10.1.1.1:80 -s wlc -p 300",
    "-a -t 10.1.1.1:80 -r 10.200.0.2:9090 -m -w 3",
    "-A -u 10.200.0.1:30053 -s rr",
    "-A -f 7 -s rr",
];

fn foreign_ipvs(t: &Topo) -> BTreeSet<String> {
    ipvs_lines(t)
        .into_iter()
        .filter(|l| FOREIGN_IPVS.iter().any(|f| l.starts_with(f)))
        .collect()
}

#[test]
fn incremental_apply_sends_only_the_difference_and_leaves_foreign_objects_alone() {
    if !enabled() {
        return;
    }
    let t = Topo::new("inc");
    add_foreign(&t);
    let (ipvs_before, links_before) = (foreign_ipvs(&t), foreign_links(&t));
    assert_eq!(ipvs_before.len(), 4, "{ipvs_before:?}");

    let reps = t.node(|| {
        let mut a = IpvsApplier::new().expect("IPVS applier");
        let mut m = model();
        let first = a.apply(&m).expect("first apply");
        let again = a.apply(&m).expect("same model again");
        // One endpoint replaced on the TCP ClusterIP service.
        m.services.get_mut(&key("10.96.0.10", 6, 80)).unwrap().dests =
            BTreeMap::from([(("10.200.0.2".parse().unwrap(), 8081), 1)]);
        let changed = a.apply(&m).expect("one endpoint changed");
        // A fresh process (no memory of the last apply) finds the same state by dumping.
        let mut fresh = IpvsApplier::new().unwrap();
        let fresh_rep = fresh.apply(&m).expect("fresh apply of the same model");
        (first, again, changed, fresh_rep)
    });
    let (first, again, changed, fresh) = reps;
    assert_eq!(
        (first.services_added, first.dests_added, first.addrs_added),
        (4, 4, 2)
    );
    // GET_SERVICE dump + 4 GET_DEST dumps? No: on a first apply nothing of svcc's exists,
    // so 1 dump, 4 NEW_SERVICE, 4 NEW_DEST.
    assert_eq!(first.ipvs_messages, 1 + 4 + 4, "{first:?}");
    assert!(!again.changed(), "{again:?}");
    assert_eq!(again.ipvs_messages, 0, "{again:?}");
    // NEW_DEST of the new one, SET_DEST weight 0 of the old one, and the GET_DEST that
    // reads its connection count (none: it is deleted at once, one DEL_DEST).
    assert_eq!(
        (
            changed.dests_added,
            changed.dests_quiesced,
            changed.dests_deleted
        ),
        (1, 1, 1),
        "{changed:?}"
    );
    assert_eq!(changed.ipvs_messages, 4, "{changed:?}");
    assert!(!fresh.changed(), "{fresh:?}");

    let lines = ipvs_lines(&t);
    for l in [
        "-A -t 10.96.0.10:80 -s rr",
        "-a -t 10.96.0.10:80 -r 10.200.0.2:8081 -m -w 1",
        "-A -u 10.96.0.10:53 -s wrr",
        "-A -t [fd00:96::10]:80 -s lc",
        "-A -t 10.200.0.1:30080 -s sh",
    ] {
        assert!(lines.contains(l), "missing {l:?} in {lines:#?}");
    }
    assert!(!lines
        .iter()
        .any(|l| l.contains(":8080 -m") && l.contains("10.96.0.10:80 ")));
    let addrs = t.in_node(&["ip", "-o", "addr", "show", "dev", DUMMY]);
    assert!(
        addrs.contains("10.96.0.10/32") && addrs.contains("fd00:96::10/128"),
        "{addrs}"
    );

    // Cleanup: svcc's objects gone, foreign ones byte-identical.
    let n = t.node(|| IpvsApplier::new().unwrap().cleanup().expect("cleanup"));
    assert_eq!(n, 4);
    assert_eq!(
        ipvs_lines(&t),
        ipvs_before,
        "only foreign services are left"
    );
    assert_eq!(foreign_links(&t), links_before);
    let links = t.in_node(&["ip", "-o", "link", "show"]);
    assert!(!links.contains(DUMMY), "{links}");
}

#[test]
fn removed_services_and_addresses_go_and_a_nodeport_server_is_remembered() {
    if !enabled() {
        return;
    }
    let t = Topo::new("rm");
    add_foreign(&t);
    let before = foreign_ipvs(&t);
    t.node(|| {
        let mut m = model();
        IpvsApplier::new().unwrap().apply(&m).unwrap();
        // A new process: the NodePort server (on a node address, not on svcc-ipvs0) is known
        // as svcc's from the ownership record.
        m.services.remove(&key("10.200.0.1", 6, 30080));
        m.services.remove(&key("fd00:96::10", 6, 80));
        m.bind.remove(&"fd00:96::10".parse::<IpAddr>().unwrap());
        let r = IpvsApplier::new().unwrap().apply(&m).unwrap();
        assert_eq!((r.services_deleted, r.addrs_deleted), (2, 1), "{r:?}");
    });
    let lines = ipvs_lines(&t);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("30080") || l.contains("fd00:96::10")),
        "{lines:#?}"
    );
    assert_eq!(foreign_ipvs(&t), before);
    t.node(|| IpvsApplier::new().unwrap().cleanup().unwrap());
}

#[test]
fn bad_inputs_change_nothing() {
    if !enabled() {
        return;
    }
    let t = Topo::new("bad");
    add_foreign(&t);
    let (ipvs0, links0) = (ipvs_lines(&t), foreign_links(&t));
    let errs = t.node(|| {
        let mut a = IpvsApplier::new().unwrap();
        // An address that is on another interface.
        let mut m = model();
        m.bind.insert("10.9.9.9".parse().unwrap());
        m.services.insert(key("10.9.9.9", 6, 80), svc("rr", &[]));
        let e1 = a.apply(&m).unwrap_err().to_string();
        // A virtual server someone else made.
        let mut m = model();
        m.services.insert(key("10.1.1.1", 6, 80), svc("rr", &[]));
        let e2 = a.apply(&m).unwrap_err().to_string();
        // A scheduler that does not exist.
        let mut m = model();
        m.services
            .get_mut(&key("10.96.0.10", 6, 80))
            .unwrap()
            .params
            .sched = "nosuch".into();
        let e3 = a.apply(&m).unwrap_err().to_string();
        // A timeout IPVS refuses (beyond MAX_SCHEDULE_TIMEOUT / HZ).
        let mut m = model();
        m.timeouts.tcp = u32::MAX;
        let e4 = a.apply(&m).unwrap_err().to_string();
        (e1, e2, e3, e4)
    });
    assert!(
        errs.0.contains("10.9.9.9 is already on interface foreign0"),
        "{}",
        errs.0
    );
    assert!(errs.0.contains("nothing applied"), "{}", errs.0);
    assert!(
        errs.1.contains("TCP 10.1.1.1:80") && errs.1.contains("not svcc's"),
        "{}",
        errs.1
    );
    assert!(errs.2.contains("modprobe ip_vs_nosuch"), "{}", errs.2);
    assert!(errs.3.contains("tcpTimeout"), "{}", errs.3);
    assert_eq!(ipvs_lines(&t), ipvs0);
    assert_eq!(foreign_links(&t), links0);
    assert!(!t.in_node(&["ip", "-o", "link", "show"]).contains(DUMMY));
}

fn greet(c: &mut TcpStream) -> String {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim().to_string()
}

#[test]
fn graceful_termination_keeps_live_connections_and_deletes_when_drained() {
    if !enabled() {
        return;
    }
    let t = Topo::new("grace");
    t.server("10.200.0.2", 8080, "A");
    t.server("10.200.0.2", 8081, "B");
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    t.node(|| {
        let mut a = IpvsApplier::new().unwrap();
        let mut m = Desired::default();
        m.services
            .insert(key("10.96.0.10", 6, 80), svc("rr", &[("10.200.0.2", 8080)]));
        m.bind.insert(vip.ip());
        a.apply(&m).unwrap();
        let mut live = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).expect("connect");
        live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(greet(&mut live), "A");

        // A terminates, B takes over.
        m.services.get_mut(&key("10.96.0.10", 6, 80)).unwrap().dests =
            BTreeMap::from([(("10.200.0.2".parse().unwrap(), 8081), 1)]);
        let r = a.apply(&m).unwrap();
        assert_eq!(
            (r.dests_quiesced, r.dests_deleted, r.draining),
            (1, 0, 1),
            "{r:?}"
        );
        let k = key("10.96.0.10", 6, 80);
        let d = a.ipvs().dests(&k).unwrap();
        let wa = d.iter().find(|d| d.port == 8080).map(|d| d.weight);
        assert_eq!(wa, Some(0), "A at weight 0: {d:?}");
        // The live connection still works; new ones go to B.
        live.write_all(b"ping\n").unwrap();
        let mut echo = String::new();
        BufReader::new(live.try_clone().unwrap())
            .read_line(&mut echo)
            .unwrap();
        assert_eq!(echo, "ping\n");
        for _ in 0..4 {
            let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(greet(&mut c), "B");
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        // Still connected: not deleted.
        assert_eq!(a.drain().unwrap().dests_deleted, 0);
        // Close with RST: the IPVS connection goes to CLOSE (10 s) instead of TIME_WAIT.
        socket2::SockRef::from(&live)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(live);
        let t0 = Instant::now();
        loop {
            let r = a.drain().unwrap();
            if r.dests_deleted == 1 {
                assert_eq!(r.draining, 0);
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "A never drained: {r:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let d = a.ipvs().dests(&k).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].port, 8081);
        a.cleanup().unwrap();
    });
}

/// `svcc apply|diff|cleanup --backend ipvs` end to end: apply programs the case, diff then
/// shows nothing (exit 0), cleanup leaves only the foreign objects.
#[test]
fn cli_apply_diff_cleanup() {
    if !enabled() {
        return;
    }
    let t = Topo::new("cli");
    add_foreign(&t);
    let (ipvs0, links0) = (ipvs_lines(&t), foreign_links(&t));
    let svcc = env!("CARGO_BIN_EXE_svcc");
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/cases/clusterip-basic"
    );
    let manifests = format!("{dir}/manifests.yaml");
    let run = |cmd: &str| {
        Command::new("ip")
            .args(["netns", "exec", &t.node, svcc, cmd, "--backend", "ipvs"])
            .args([
                "--node-ip",
                "10.200.0.1",
                "--hostname-override",
                "node-a",
                &manifests,
            ])
            .output()
            .unwrap()
    };
    let o = run("apply");
    assert!(
        o.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines = ipvs_lines(&t);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-A -t 172.30.0.10:80 -s rr")),
        "{lines:#?}"
    );
    let o = run("diff");
    assert_eq!(
        o.status.code(),
        Some(0),
        "diff after apply: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.node,
            svcc,
            "cleanup",
            "--backend",
            "ipvs",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(ipvs_lines(&t), ipvs0);
    assert_eq!(foreign_links(&t), links0);
    let tables = t.in_node(&["nft", "list", "tables"]);
    assert!(!tables.contains("svcc"), "{tables}");
}

/// `svcc run --backend ipvs` programs the watched manifests through the IPVS applier and
/// follows an endpoint change.
#[test]
fn run_syncs_through_the_ipvs_applier() {
    if !enabled() {
        return;
    }
    let t = Topo::new("run");
    let svcc = env!("CARGO_BIN_EXE_svcc");
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/cases/clusterip-basic/manifests.yaml"
    );
    let dir = std::env::temp_dir().join(format!("svcc-ipvs-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.yaml");
    let text = std::fs::read_to_string(src).unwrap();
    std::fs::write(&file, &text).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.node, svcc, "run", "--backend", "ipvs"])
        .args(["--node-ip", "10.200.0.1", "--hostname-override", "node-a"])
        .args(["--metrics-bind-address", "", "--healthz-bind-address", ""])
        .args(["--min-sync-period", "0s", "--watch"])
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let wait_for = |what: &str| {
        let t0 = Instant::now();
        loop {
            let l = t.in_node(&["ipvsadm", "-Sn"]);
            if l.contains(what) {
                return l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no {what:?} in:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let _ = child.try_wait();
    let guard = Kill(child);
    let first = wait_for("-A -t 172.30.0.10:80 -s rr");
    // Move the first endpoint address of the manifests to a new one.
    let old = first
        .lines()
        .find_map(|l| l.strip_prefix("-a -t 172.30.0.10:80 -r "))
        .and_then(|r| r.split(':').next())
        .expect("a real server")
        .to_string();
    std::fs::write(&file, text.replacen(&old, "10.0.77.7", 1)).unwrap();
    wait_for("-r 10.0.77.7:");
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
