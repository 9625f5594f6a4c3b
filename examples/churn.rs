//! Churn benchmark for `svcc run`: its memory over time while the watched files change fast.
//!
//! Writes a generated cluster (default 10k services / 100k endpoints, `fixtures/gen`) into a
//! temporary directory, starts `svcc run --watch` on it, waits for the first sync, then churns
//! for a while: every `--interval-ms`, one of `--slots` small files (one Service + its
//! EndpointSlice each) changes: an endpoint replaced, added or removed, or the Service removed
//! (file deleted) or added (file created, under a name never used before, with new addresses,
//! so that anything kept per name or address would pile up). Files are written beside and
//! renamed into place, as a controller would. Meanwhile the daemon's VmRSS
//! (`/proc/PID/status`) is sampled every second.
//!
//! Prints the changes made, the syncs the daemon did (by kind, from `/metrics`), and its RSS:
//! after the first sync, peak (VmHWM), at the end, and the slope (least squares over the churn
//! phase after a warm-up, in MiB per hour); then whether the kernel holds exactly what the
//! files compile to (`svcc diff`) and the daemon's object counts (its metrics). Run it in a throwaway network namespace (the
//! daemon programs the current one), as root:
//!
//!   ip netns add c; ip netns exec c target/release/examples/churn --seconds 60; ip netns del c
//!   # an hour: --seconds 3600 (add --samples rss.tsv to keep the samples)
//!
//! Options: --services N (10000) --endpoints N (100000) --seconds S (60) --interval-ms MS (50)
//! --slots N (100) --min-sync-period D (100ms) --sync-period D (30s; the daemon compiles and
//! compares everything at one verification in 120, so `--sync-period 1s` shows that transient
//! every 2 minutes) --warmup S (30) --svcc PATH (the svcc beside this example,
//! target/release/svcc) --samples FILE (time, VmRSS KiB per line).

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    services: usize,
    endpoints: usize,
    seconds: u64,
    interval: Duration,
    slots: usize,
    min_sync: String,
    sync_period: String,
    warmup: u64,
    svcc: PathBuf,
    samples: Option<PathBuf>,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter().position(|a| a == k).map(|i| {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{k} needs a value"))
                .clone()
        })
    };
    let num =
        |k: &str, d: u64| get(k).map_or(d, |v| v.parse().unwrap_or_else(|_| panic!("{k} {v}")));
    let exe = std::env::current_exe().expect("current_exe");
    let beside = exe.parent().and_then(Path::parent).map(|d| d.join("svcc"));
    Opts {
        services: num("--services", 10_000) as usize,
        endpoints: num("--endpoints", 100_000) as usize,
        seconds: num("--seconds", 60),
        interval: Duration::from_millis(num("--interval-ms", 50)),
        slots: num("--slots", 100).max(1) as usize,
        min_sync: get("--min-sync-period").unwrap_or_else(|| "100ms".into()),
        sync_period: get("--sync-period").unwrap_or_else(|| "30s".into()),
        warmup: num("--warmup", 30),
        svcc: get("--svcc")
            .map(PathBuf::from)
            .or(beside)
            .expect("--svcc PATH"),
        samples: get("--samples").map(PathBuf::from),
    }
}

/// A deterministic xorshift (the same churn every run).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One churn file's Service: a name and endpoint addresses, both never reused.
struct Svc {
    name: String,
    cluster_ip: u32,
    endpoints: Vec<u32>,
}

/// Counters that make every new name and address unique (addresses wrap after 2^20 or 2^16,
/// far beyond what is alive at once).
#[derive(Default)]
struct Fresh {
    service: u64,
    address: u32,
}

impl Fresh {
    fn service(&mut self) -> (String, u32) {
        self.service += 1;
        // 10.100.0.0/16: outside the generator's 10.96/16 Service range.
        let ip = u32::from_be_bytes([10, 100, 0, 0]) + (self.service as u32 % 65_000) + 1;
        (format!("churn-{}", self.service), ip)
    }
    fn address(&mut self) -> u32 {
        self.address += 1;
        // 10.200.0.0/12 region of the pod CIDR (10.128.0.0/9).
        u32::from_be_bytes([10, 200, 0, 0]) + (self.address % (1 << 20)) + 1
    }
}

fn ip(a: u32) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn yaml(s: &Svc) -> String {
    let mut eps = String::new();
    for e in &s.endpoints {
        eps.push_str(&format!(
            "- addresses: [{}]\n  conditions: {{ready: true}}\n",
            ip(*e)
        ));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: churn}}\nspec:\n  clusterIP: {cip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {n}-1\n  namespace: churn\n  labels: {{kubernetes.io/service-name: {n}}}\naddressType: IPv4\nendpoints:\n{eps}ports:\n- {{name: http, port: 8080, protocol: TCP}}\n",
        n = s.name,
        cip = ip(s.cluster_ip),
    )
}

/// Writes beside the file (a hidden name the daemon ignores) and renames into place.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).expect("write a churn file");
    std::fs::rename(&tmp, path).expect("rename a churn file");
}

/// VmRSS and VmHWM of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `GET /metrics` from the daemon.
fn metrics(port: u16) -> Option<String> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

/// The value of one sample line (`name{labels} value`) of a metrics text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A daemon killed (SIGTERM, then waited for) when dropped, also on a panic.
struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Least-squares slope of (seconds, KiB) samples, in MiB per hour.
fn slope_mib_per_hour(s: &[(f64, u64)]) -> f64 {
    let n = s.len() as f64;
    if s.len() < 2 {
        return 0.0;
    }
    let mx = s.iter().map(|p| p.0).sum::<f64>() / n;
    let my = s.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxy: f64 = s.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
    let sxx: f64 = s.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    sxy / sxx * 3600.0 / 1024.0
}

fn main() {
    let o = opts();
    let dir = TempDir(std::env::temp_dir().join(format!("svcc-churn-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("churn")).expect("create the work directory");
    std::fs::write(
        dir.0.join("cluster.yaml"),
        cluster::generate(&cluster::GenOptions {
            services: o.services,
            endpoints: o.endpoints,
            ..Default::default()
        }),
    )
    .expect("write the cluster");
    let mut rng = Rng(0x00c4_a2e5);
    let mut fresh = Fresh::default();
    let slot_path = |i: usize| dir.0.join("churn").join(format!("slot-{i}.yaml"));
    // Every other slot starts with a Service.
    let mut slots: Vec<Option<Svc>> = (0..o.slots)
        .map(|i| {
            (i % 2 == 0).then(|| {
                let (name, cluster_ip) = fresh.service();
                let endpoints = (0..3).map(|_| fresh.address()).collect();
                let s = Svc {
                    name,
                    cluster_ip,
                    endpoints,
                };
                write_atomic(&slot_path(i), &yaml(&s));
                s
            })
        })
        .collect();

    // /metrics is read on the namespace's loopback, down in a new namespace.
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let log = std::fs::File::create(dir.0.join("svcc-run.log")).expect("log file");
    let child = Command::new(&o.svcc)
        .args(["run", "--watch"])
        .arg(&dir.0)
        .args(["--hostname-override", "node-1", "--node-ip", "192.168.0.2"])
        .args(["--cluster-cidr", "10.128.0.0/9"])
        .args([
            "--min-sync-period",
            &o.min_sync,
            "--sync-period",
            &o.sync_period,
        ])
        .args(["--metrics-bind-address", &format!("127.0.0.1:{port}")])
        .args(["--healthz-bind-address", ""])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", o.svcc.display()));
    let mut daemon = Daemon(child);
    let pid = daemon.0.id();

    // The first sync: a full one in the metrics.
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = daemon.0.try_wait() {
            panic!("svcc run exited ({st}); see its log");
        }
        let full = metrics(port).map_or(0.0, |m| metric(&m, "svcc_syncs_total{type=\"full\"}"));
        if full >= 1.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no first sync in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let first_sync = t0.elapsed();
    // The daemon's model size: stable under churn unless something is never removed.
    let objects = |m: &str| {
        [
            "svcc_service_ports",
            "svcc_nftables_chains",
            "svcc_nftables_rules",
            "svcc_nftables_elements",
        ]
        .map(|k| metric(m, k) as u64)
    };
    let objects_start = objects(&metrics(port).unwrap_or_default());
    let (rss_start, _) = rss_kib(pid).expect("the daemon's /proc status");
    eprintln!(
        "churn: first sync after {:.1} s, {} MiB; churning for {} s",
        first_sync.as_secs_f64(),
        rss_start / 1024,
        o.seconds
    );

    let mut samples: Vec<(f64, u64)> = Vec::new();
    let (mut replaced, mut added, mut removed, mut svc_added, mut svc_removed) = (0, 0, 0, 0, 0);
    let start = Instant::now();
    let end = start + Duration::from_secs(o.seconds);
    let mut next_sample = start;
    let mut next_change = start;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            if let Some((rss, _)) = rss_kib(pid) {
                samples.push(((now - start).as_secs_f64(), rss));
            }
            next_sample += Duration::from_secs(1);
            if let Ok(Some(st)) = daemon.0.try_wait() {
                panic!("svcc run exited ({st}) during the churn; see its log");
            }
        }
        if now >= next_change {
            let i = rng.below(o.slots);
            match &mut slots[i] {
                None => {
                    let (name, cluster_ip) = fresh.service();
                    let n = 1 + rng.below(5);
                    let s = Svc {
                        name,
                        cluster_ip,
                        endpoints: (0..n).map(|_| fresh.address()).collect(),
                    };
                    write_atomic(&slot_path(i), &yaml(&s));
                    slots[i] = Some(s);
                    svc_added += 1;
                }
                Some(s) => {
                    let roll = rng.below(100);
                    if roll < 10 {
                        std::fs::remove_file(slot_path(i)).expect("remove a churn file");
                        slots[i] = None;
                        svc_removed += 1;
                    } else {
                        if roll < 40 {
                            let k = rng.below(s.endpoints.len());
                            s.endpoints[k] = fresh.address();
                            replaced += 1;
                        } else if roll < 70 || s.endpoints.len() == 1 {
                            s.endpoints.push(fresh.address());
                            added += 1;
                        } else {
                            let k = rng.below(s.endpoints.len());
                            s.endpoints.swap_remove(k);
                            removed += 1;
                        }
                        // Bounded: a Service that grew past 20 endpoints loses its oldest.
                        if s.endpoints.len() > 20 {
                            s.endpoints.remove(0);
                        }
                        write_atomic(&slot_path(i), &yaml(s));
                    }
                }
            }
            next_change += o.interval;
        }
        let wake = next_sample.min(next_change);
        if let Some(d) = wake.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    // Let the last changes be applied before the final figures.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_end, hwm) = rss_kib(pid).expect("the daemon's /proc status");
    let m = metrics(port).unwrap_or_default();
    let kind = |k: &str| metric(&m, &format!("svcc_syncs_total{{type=\"{k}\"}}"));
    let failures = metric(
        &m,
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
    );
    let changes = replaced + added + removed + svc_added + svc_removed;
    let warm: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|s| s.0 >= o.warmup as f64)
        .collect();
    // Too short a run for a slope after the warm-up: none.
    let slope = if warm.len() >= 10 {
        format!("{:.1}", slope_mib_per_hour(&warm))
    } else {
        "n/a".into()
    };
    let min = samples.iter().map(|s| s.1).min().unwrap_or(rss_end);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(rss_end);
    if let Some(f) = &o.samples {
        let mut t = String::new();
        for (s, k) in &samples {
            t.push_str(&format!("{s:.1}\t{k}\n"));
        }
        std::fs::write(f, t).expect("write the samples");
    }
    println!(
        "cluster {} services / {} endpoints; {} s; changes {changes} ({:.1}/s): endpoints replaced {replaced}, added {added}, removed {removed}; Services added {svc_added}, removed {svc_removed}",
        o.services,
        o.endpoints,
        o.seconds,
        changes as f64 / o.seconds as f64
    );
    println!(
        "syncs: full {}, partial {}, unchanged {}; failures {failures}",
        kind("full"),
        kind("partial"),
        kind("unchanged")
    );
    println!(
        "rss_mib after_first_sync {} peak {} churn_min {} churn_max {} end {} slope_mib_per_hour {slope} (after {} s warm-up, {} samples)",
        rss_start / 1024,
        hwm / 1024,
        min / 1024,
        max / 1024,
        rss_end / 1024,
        o.warmup,
        warm.len()
    );
    // The kernel holds exactly what the files compile to (exit 0: no difference).
    let diff = Command::new(&o.svcc)
        .arg("diff")
        .args(["--hostname-override", "node-1", "--node-ip", "192.168.0.2"])
        .args(["--cluster-cidr", "10.128.0.0/9"])
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("svcc diff");
    println!(
        "kernel == compile of the files at the end (svcc diff): {}",
        if diff.success() {
            "yes".to_string()
        } else {
            format!("NO ({diff})")
        }
    );
    let objects_end = objects(&m);
    println!(
        "objects (service ports, chains, rules, elements): after first sync {objects_start:?}, end {objects_end:?}"
    );
    drop(daemon);
}
