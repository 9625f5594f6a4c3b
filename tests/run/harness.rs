//! The test bench of `svcc run`: throwaway network namespaces (`svcc-run-<pid>-<n>`, removed on
//! drop — also on panic — and swept when left by a dead run), a small topology, TCP/UDP servers
//! that say who answered, clients, a tiny HTTP GET, and the daemon as a subprocess.
//!
//! ```text
//!   pod (10.0.0.9, 10.0.0.10)  ─┐
//!   ext (203.0.113.7)          ─┤
//!   e0..eN (10.0.1.1 ..)       ─┼─ veth ─ node (192.168.0.2 on node0; forwarding; svcc run)
//!   oth (198.51.100.9 + every ─┘          everything not routed to a leaf goes to oth
//!        Service IP: "untouched" traffic is answered by it)
//! ```
//! Every leaf address answers on TCP and UDP ports [`PORTS`]:
//! `backend=<local IP:port> src=<peer IP:port>\n`; a TCP connection answers once when accepted
//! and once more per line it receives (long-lived connections), until the client closes it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const PREFIX: &str = "svcc-run-";
const NETNS_DIR: &str = "/run/netns";
pub const NODE_IP: &str = "192.168.0.2";
pub const POD_IP: &str = "10.0.0.9";
pub const POD2_IP: &str = "10.0.0.10";
pub const EXT_IP: &str = "203.0.113.7";
pub const OTHER_IP: &str = "198.51.100.9";
pub const PORTS: &[u16] = &[80, 53, 8080, 5353, 30053];

/// Why these tests cannot run here (not root, no `ip`/`nft`/`conntrack`).
pub fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft", "conntrack"] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Some(format!("`{tool}` not found"));
        }
    }
    None
}

/// Skips the calling test (returns true) when it cannot run; fails instead with
/// `SVCC_RUN_REQUIRE=1`. Also removes namespaces left by dead runs, once.
pub fn skip() -> bool {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    if let Some(why) = unsupported() {
        if std::env::var("SVCC_RUN_REQUIRE").as_deref() == Ok("1") {
            panic!("svcc run tests cannot run: {why} (SVCC_RUN_REQUIRE=1)");
        }
        eprintln!("skipped: {why}");
        return true;
    }
    SWEEP.call_once(sweep_stale);
    false
}

pub fn ip_batch(ns: Option<&str>, lines: &[String]) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ip");
    let text = lines.join("\n") + "\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip -batch in {ns:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into the namespace (only on threads made for it).
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("{NETNS_DIR}/{ns}")).expect("netns file");
    // SAFETY: setns on a valid descriptor; changes only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a fresh thread inside `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// Runs a command inside a namespace; its stdout (panics on failure).
pub fn ns_cmd(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn delete_ns(names: &[String]) {
    for n in names {
        if Path::new(NETNS_DIR).join(n).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let stale: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix(PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    delete_ns(&stale);
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn new_ns() -> String {
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// One test's namespaces, servers and watch directory; all removed on drop.
pub struct Topo {
    pub node: String,
    pub pod: String,
    pub ext: String,
    pub oth: String,
    /// e0, e1, ...
    pub eps: Vec<String>,
    pub dir: PathBuf,
    names: Vec<String>,
    servers: Vec<Server>,
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.servers.clear();
        delete_ns(&self.names);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn ep_ip(i: usize) -> String {
    format!("10.0.1.{}", i + 1)
}

impl Topo {
    /// `n` endpoint namespaces; `service_ips` are owned by `oth` (so untouched traffic to them
    /// is answered by "oth").
    pub fn new(n: usize, service_ips: &[&str]) -> Topo {
        let names: Vec<String> = (0..4 + n).map(|_| new_ns()).collect();
        let dir = std::env::temp_dir().join(format!("{}-dir", names[0]));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Topo {
            node: names[0].clone(),
            pod: names[1].clone(),
            ext: names[2].clone(),
            oth: names[3].clone(),
            eps: names[4..].to_vec(),
            dir,
            names: names.clone(),
            servers: Vec::new(),
        };
        ip_batch(
            None,
            &names
                .iter()
                .map(|n| format!("netns add {n}"))
                .collect::<Vec<_>>(),
        );
        // Leaves: (namespace, addresses).
        let mut leaves: Vec<(String, Vec<String>)> = vec![
            (t.pod.clone(), vec![POD_IP.into(), POD2_IP.into()]),
            (t.ext.clone(), vec![EXT_IP.into()]),
            (
                t.oth.clone(),
                std::iter::once(OTHER_IP.to_string())
                    .chain(service_ips.iter().map(|s| s.to_string()))
                    .collect(),
            ),
        ];
        for (i, e) in t.eps.iter().enumerate() {
            leaves.push((e.clone(), vec![ep_ip(i)]));
        }
        let node_sysctls = [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
            ("net/ipv4/icmp_ratemask", "0"),
        ];
        let node = t.node.clone();
        in_ns(&node, move || {
            for (k, v) in node_sysctls {
                std::fs::write(format!("/proc/sys/{k}"), v).unwrap();
            }
        });
        let mut nl = vec![
            "link set lo up".to_string(),
            "link add node0 type veth peer name node0p".into(),
            "link set node0 up".into(),
            "link set node0p up".into(),
            format!("addr add {NODE_IP}/32 dev node0"),
        ];
        for (i, (ns, addrs)) in leaves.iter().enumerate() {
            let v = format!("v{i}");
            let mac = format!("02:00:00:00:00:{:02x}", i + 1);
            nl.push(format!(
                "link add {v} address ee:ee:ee:ee:ee:ee type veth peer name eth0 address {mac} netns {ns}"
            ));
            nl.push(format!("link set {v} up"));
            if *ns == t.oth {
                nl.push(format!(
                    "neigh add 169.254.1.2 lladdr {mac} dev {v} nud permanent"
                ));
                nl.push(format!(
                    "route add 0.0.0.0/0 via 169.254.1.2 dev {v} onlink"
                ));
            } else {
                for a in addrs {
                    nl.push(format!("route add {a}/32 dev {v}"));
                    nl.push(format!("neigh add {a} lladdr {mac} dev {v} nud permanent"));
                }
            }
        }
        ip_batch(Some(&t.node), &nl);
        for (ns, addrs) in &leaves {
            let dev = if *ns == t.oth { "lo" } else { "eth0" };
            let mut l = vec!["link set lo up".to_string(), "link set eth0 up".into()];
            for a in addrs {
                l.push(format!("addr add {a}/32 dev {dev}"));
            }
            l.push("neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent".into());
            l.push("route add 0.0.0.0/0 via 169.254.1.1 dev eth0 onlink".into());
            ip_batch(Some(ns), &l);
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
            t.servers.push(Server::start(ns, &ips, PORTS));
        }
        t
    }

    /// Writes a file of the watch directory atomically (hidden temp file + rename).
    pub fn write(&self, name: &str, text: &str) {
        let p = self.dir.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        let tmp = p.with_file_name(format!(".{}.tmp", p.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    /// Writes in place (truncate + write + close), as `>` in a shell does.
    pub fn write_in_place(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    pub fn remove(&self, name: &str) {
        let p = self.dir.join(name);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    /// The node's nft ruleset text.
    pub fn nft(&self, args: &[&str]) -> String {
        let mut a = vec!["nft"];
        a.extend_from_slice(args);
        ns_cmd(&self.node, &a)
    }
}

/// TCP and UDP answerers on every (address, port) of a namespace; one poll loop; stopped on drop.
pub struct Server {
    stop: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

pub fn answer(local: SocketAddr, peer: SocketAddr) -> String {
    format!("backend={local} src={peer}\n")
}

impl Server {
    pub fn start(ns: &str, addrs: &[IpAddr], ports: &[u16]) -> Server {
        let (addrs, ports, ns2) = (addrs.to_vec(), ports.to_vec(), ns.to_string());
        let socks = in_ns(ns, move || {
            let mut v = Vec::new();
            for a in &addrs {
                for p in &ports {
                    let sa = SocketAddr::new(*a, *p);
                    let t =
                        TcpListener::bind(sa).unwrap_or_else(|e| panic!("{ns2}: tcp {sa}: {e}"));
                    t.set_nonblocking(true).unwrap();
                    v.push(Sock::Tcp(t));
                    let u = UdpSocket::bind(sa).unwrap_or_else(|e| panic!("{ns2}: udp {sa}: {e}"));
                    u.set_nonblocking(true).unwrap();
                    v.push(Sock::Udp(u));
                }
            }
            v
        });
        let (tx, rx) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || serve(socks, rx));
        Server {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socks: Vec<Sock>, stop: UnixStream) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: match s {
                Sock::Tcp(t) => t.as_raw_fd(),
                Sock::Udp(u) => u.as_raw_fd(),
            },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    fds.push(libc::pollfd {
        fd: stop.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
        if n < 0 {
            continue;
        }
        if fds.last().is_some_and(|p| p.revents != 0) {
            return;
        }
        for (i, s) in socks.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            fds[i].revents = 0;
            match s {
                Sock::Tcp(l) => {
                    while let Ok((c, peer)) = l.accept() {
                        std::thread::spawn(move || talk(c, peer));
                    }
                }
                Sock::Udp(u) => {
                    while let Ok((_, peer)) = u.recv_from(&mut buf) {
                        if let Ok(local) = u.local_addr() {
                            let _ = u.send_to(answer(local, peer).as_bytes(), peer);
                        }
                    }
                }
            }
        }
    }
}

/// One TCP connection: answer now, then once per line received, until EOF.
fn talk(mut c: TcpStream, peer: SocketAddr) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(local) = c.local_addr() else { return };
    let a = answer(local, peer);
    if c.write_all(a.as_bytes()).is_err() {
        return;
    }
    let Ok(r) = c.try_clone() else { return };
    for line in BufReader::new(r).lines() {
        if line.is_err() || c.write_all(a.as_bytes()).is_err() {
            return;
        }
    }
}

/// The backend named by an answer line.
pub fn backend_of(answer: &str) -> Option<String> {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("backend="))
        .map(str::to_string)
}

/// One TCP connection (on the calling thread, which must be in the client's namespace):
/// Ok(backend) or Err(what happened).
pub fn tcp_once(dst: &str, timeout: Duration) -> Result<String, String> {
    let sa: SocketAddr = dst.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| match e.kind() {
        ErrorKind::ConnectionRefused => "refused".to_string(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".to_string(),
        _ => e.to_string(),
    })?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut line = String::new();
    let mut b = [0u8; 256];
    while !line.ends_with('\n') {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => line.push_str(&String::from_utf8_lossy(&b[..n])),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    backend_of(&line).ok_or_else(|| format!("odd answer {line:?}"))
}

/// One UDP exchange from a fresh socket: Ok(backend) or Err.
pub fn udp_once(dst: &str, timeout: Duration) -> Result<String, String> {
    let sa: SocketAddr = dst.parse().unwrap();
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect(sa).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send(b"ping\n").map_err(|e| e.to_string())?;
    let mut b = [0u8; 256];
    let n = s.recv(&mut b).map_err(|e| match e.kind() {
        ErrorKind::ConnectionRefused => "refused".to_string(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".to_string(),
        _ => e.to_string(),
    })?;
    backend_of(&String::from_utf8_lossy(&b[..n])).ok_or_else(|| "odd answer".into())
}

/// `tcp_once` from a namespace.
pub fn tcp_from(ns: &str, dst: &str) -> Result<String, String> {
    let dst = dst.to_string();
    in_ns(ns, move || tcp_once(&dst, Duration::from_millis(500)))
}

/// Retries `f` until it returns true or `limit` passes; returns the time it took.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if f() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// HTTP/1.0 GET (on the calling thread's namespace): (status, headers+body).
pub fn http_get_here(addr: &str, path: &str) -> Result<(u16, String), String> {
    let sa: SocketAddr = addr.parse().unwrap();
    let mut s =
        TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {out:?}"))?;
    Ok((status, out))
}

pub fn http_get(ns: &str, addr: &str, path: &str) -> Result<(u16, String), String> {
    let (a, p) = (addr.to_string(), path.to_string());
    in_ns(ns, move || http_get_here(&a, &p))
}

/// The body of an HTTP answer.
pub fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// Samples of a Prometheus text page: `name{labels}` -> value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub const METRICS: &str = "127.0.0.1:10249";
pub const HEALTHZ: &str = "127.0.0.1:10256";

/// `svcc run` in the node namespace; killed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    node: String,
}

impl Daemon {
    /// Starts `svcc run --watch DIR` with the topology's node flags (plus `extra`), and waits
    /// for its first sync (healthz 200).
    pub fn start(t: &Topo, extra: &[&str]) -> Daemon {
        let log = t.dir.with_extension("log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            t.node.clone(),
            env!("CARGO_BIN_EXE_svcc").into(),
            "run".into(),
            "--watch".into(),
            t.dir.display().to_string(),
            "--hostname-override".into(),
            "node-a".into(),
            "--node-ip".into(),
            NODE_IP.into(),
            "--cluster-cidr".into(),
            "10.0.0.0/16".into(),
            "--metrics-bind-address".into(),
            METRICS.into(),
            "--healthz-bind-address".into(),
            HEALTHZ.into(),
            "-v".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start svcc run");
        let mut d = Daemon {
            child: Some(child),
            log,
            node: t.node.clone(),
        };
        let up = eventually(Duration::from_secs(10), || {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("svcc run exited: {st}\n{}", d.log_text());
            }
            matches!(http_get(&d.node, HEALTHZ, "/healthz"), Ok((200, _)))
        });
        assert!(up.is_some(), "svcc run not healthy:\n{}", d.log_text());
        d
    }

    /// Starts `svcc run ARGS` in the node namespace (metrics and healthz on the usual
    /// addresses, `-v`), without waiting for anything (tests/api.rs: no `--watch`).
    pub fn spawn(t: &Topo, args: &[String]) -> Daemon {
        let log = t.dir.with_extension("log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &t.node, env!("CARGO_BIN_EXE_svcc"), "run"])
            .args(args)
            .args([
                "--metrics-bind-address",
                METRICS,
                "--healthz-bind-address",
                HEALTHZ,
                "-v",
            ])
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start svcc run");
        Daemon {
            child: Some(child),
            log,
            node: t.node.clone(),
        }
    }

    /// Panics (with the log) if the daemon exited.
    pub fn assert_running(&mut self) {
        if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("svcc run exited: {st}\n{}", self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's pid (`ip netns exec` execs it), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (st, text) = http_get(&self.node, METRICS, "/metrics").expect("GET /metrics");
        assert_eq!(st, 200);
        parse_metrics(body(&text))
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(f64::NAN)
    }

    /// SIGTERM; the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                panic!("svcc run did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- svcc run log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A Service (+ optional spec lines) and its EndpointSlice, as YAML.
/// `ports`: (name, protocol, port, targetPort, nodePort or 0); `eps`: (IP, node, ready).
pub fn service(
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, &str, u16, u16, u16)],
    eps: &[(String, &str, bool)],
    spec_extra: &str,
) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  clusterIP: {cluster_ip}\n{spec_extra}  ports:\n"
    );
    for (pn, proto, port, target, np) in ports {
        s.push_str(&format!(
            "  - {{name: {pn}, protocol: {proto}, port: {port}, targetPort: {target}"
        ));
        if *np != 0 {
            s.push_str(&format!(", nodePort: {np}"));
        }
        s.push_str("}\n");
    }
    s.push_str("---\n");
    s.push_str(&slice(name, ports, eps));
    s
}

pub fn slice(
    name: &str,
    ports: &[(&str, &str, u16, u16, u16)],
    eps: &[(String, &str, bool)],
) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports:\n"
    );
    for (pn, proto, _, target, _) in ports {
        s.push_str(&format!(
            "- {{name: {pn}, protocol: {proto}, port: {target}}}\n"
        ));
    }
    if eps.is_empty() {
        s.push_str("endpoints: []\n");
    } else {
        s.push_str("endpoints:\n");
        for (ip, node, ready) in eps {
            s.push_str(&format!(
                "- {{addresses: [{ip}], conditions: {{ready: {ready}}}, nodeName: {node}}}\n"
            ));
        }
    }
    s
}

/// Endpoints on node-a, ready, from endpoint indexes.
pub fn eps(idx: &[usize]) -> Vec<(String, &'static str, bool)> {
    idx.iter().map(|i| (ep_ip(*i), "node-a", true)).collect()
}

/// How long the `expect_*` helpers wait for the kernel to follow a change.
pub const WAIT: Duration = Duration::from_secs(5);

/// Waits until TCP to `dst` from the pod is answered by `want` (or fails the test).
pub fn expect_tcp(t: &Topo, d: &Daemon, dst: &str, want: &str) {
    let mut last = Ok(String::new());
    let ok = eventually(WAIT, || {
        last = tcp_from(&t.pod, dst);
        last.as_deref() == Ok(want)
    });
    assert!(
        ok.is_some(),
        "{dst}: wanted {want}, last saw {last:?}\n{}",
        d.log_text()
    );
}

/// Waits until the daemon's metric `name` is `want` (or fails the test).
pub fn expect_metric(d: &Daemon, name: &str, want: f64) {
    let mut last = f64::NAN;
    let ok = eventually(WAIT, || {
        last = d.metric(name);
        last == want
    });
    assert!(
        ok.is_some(),
        "{name}: wanted {want}, last {last}\n{}",
        d.log_text()
    );
}
