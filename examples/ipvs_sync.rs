//! IPVS programming benchmark (needs a kernel with IP_VS: run it inside the VM of
//! `scripts/vm-test.sh`, as root). Each measurement runs in a fresh network namespace
//! (`svcc-ipvsbench-<pid>-<n>`, removed on exit):
//!
//! 1. from scratch: S services × E endpoints through `IpvsApplier` (generic netlink) against
//!    `ipvsadm-restore` of the same virtual/real servers as text (`-A`/`-a` lines), same run;
//! 2. one endpoint changed at each of the `--change` sizes: messages and time of the apply.
//!
//!   cargo run --release --example ipvs_sync -- [--services 10000] [--endpoints 10] [--change 1000,10000,30000]
//!
//! Addresses are not bound to svcc-ipvs0 in (1) (ipvsadm-restore does not bind either); the
//! glue table is empty in both.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use svcc_runtime::ipvs::{Desired, IpvsApplier, SvcKey, SvcParams, WantedService};

fn arg(name: &str, default: &str) -> String {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// `services` ClusterIP-style TCP services of `endpoints` endpoints each.
fn model(services: usize, endpoints: usize) -> Desired {
    let mut d = Desired::default();
    for s in 0..services {
        let vip = Ipv4Addr::from(0x0a60_0000u32 + s as u32); // 10.96.x.y
        let mut dests = BTreeMap::new();
        for e in 0..endpoints {
            let ep = Ipv4Addr::from(0x0af4_0000u32 + (s * endpoints + e) as u32); // 10.244.x.y
            dests.insert((IpAddr::V4(ep), 8080), 1);
        }
        d.services.insert(
            SvcKey {
                addr: IpAddr::V4(vip),
                proto: 6,
                port: 80,
            },
            WantedService {
                params: SvcParams {
                    sched: "rr".into(),
                    flags: 0,
                    timeout: 0,
                    netmask: 32,
                },
                dests,
                origin: format!("bench/s{s}:http"),
            },
        );
    }
    d
}

/// The same servers as `ipvsadm-restore` input.
fn restore_text(d: &Desired) -> String {
    let mut s = String::new();
    for (k, w) in &d.services {
        s.push_str(&format!(
            "-A -t {}:{} -s {}\n",
            k.addr, k.port, w.params.sched
        ));
        for ((a, p), wt) in &w.dests {
            s.push_str(&format!(
                "-a -t {}:{} -r {a}:{p} -m -w {wt}\n",
                k.addr, k.port
            ));
        }
    }
    s
}

struct Ns(String);
impl Ns {
    fn new(n: usize) -> Ns {
        let name = format!("svcc-ipvsbench-{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        // IPVS refuses real servers (EINVAL) while the namespace's loopback is down.
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success());
        Ns(name)
    }
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
                // SAFETY: setns on a valid namespace descriptor; changes only this thread.
                assert_eq!(
                    unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                f()
            })
            .join()
            .unwrap()
        })
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn main() {
    let services: usize = arg("--services", "10000").parse().unwrap();
    let endpoints: usize = arg("--endpoints", "10").parse().unwrap();
    let changes: Vec<usize> = arg("--change", "1000,10000,30000")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        Ns::new(n)
    };

    let m = model(services, endpoints);
    let objects = services * (endpoints + 1);
    let ns = fresh();
    let (t, msgs) = ns.within(|| {
        let mut a = IpvsApplier::new().expect("IPVS applier");
        let t0 = Instant::now();
        let r = a.apply(&m).expect("apply");
        (t0.elapsed(), r.ipvs_messages)
    });
    println!(
        "from scratch, {services} services / {} endpoints: netlink {} ({msgs} IPVS requests, {objects} objects)",
        services * endpoints,
        secs(t)
    );
    drop(ns);

    let text = restore_text(&m);
    let ns = fresh();
    let t0 = Instant::now();
    let mut c = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ipvsadm-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ipvsadm-restore");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "ipvsadm-restore failed");
    let tr = t0.elapsed();
    println!(
        "from scratch, same servers: ipvsadm-restore {} ({} lines); netlink / restore = {:.2}",
        secs(tr),
        text.lines().count(),
        t.as_secs_f64() / tr.as_secs_f64()
    );
    drop(ns);

    for s in changes {
        let ns = fresh();
        let mut m = model(s, endpoints);
        let (full, one) = ns.within(|| {
            let mut a = IpvsApplier::new().expect("IPVS applier");
            let t0 = Instant::now();
            a.apply(&m).expect("apply");
            let full = t0.elapsed();
            // One endpoint of the middle service moves to a new address.
            let k = *m.services.keys().nth(s / 2).unwrap();
            let d = &mut m.services.get_mut(&k).unwrap().dests;
            let first = *d.keys().next().unwrap();
            d.remove(&first);
            d.insert((IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1)), 8080), 1);
            let t0 = Instant::now();
            let r = a.apply(&m).expect("apply one change");
            (full, (t0.elapsed(), r))
        });
        println!(
            "one endpoint changed at {s} services: {} IPVS + {} rtnetlink requests, {:.2} ms (full program {})",
            one.1.ipvs_messages,
            one.1.link_messages,
            one.0.as_secs_f64() * 1e3,
            secs(full)
        );
    }
}
