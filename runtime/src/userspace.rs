//! The userspace mode's proxy (`svcc run --backend userspace`): one listener per service port
//! (and role, see `svcc_compiler::userspace::plan`), on the port the compiler's rules DNAT its
//! frontends to. Each accepted TCP connection or UDP client session gets an endpoint (round
//! robin over the endpoints of the listener's policy, kube-proxy's ClientIP affinity), and the
//! bytes are copied by tokio tasks (no thread per connection).
//!
//! Rules of the game, as kube-proxy's userspace proxier (`pkg/proxy/userspace`):
//! - TCP: a failed connect tries the next endpoint, up to 4 attempts with timeouts of
//!   250 ms, 500 ms, 1 s and 2 s (`EndpointDialTimeouts`); after the first failure affinity is
//!   ignored and rewritten. All attempts failed: the client connection is closed.
//! - UDP: a session per client `IP:port`, with a connected socket to its endpoint; it ends after
//!   `udp_idle_timeout` without a datagram either way. Replies leave from the address the
//!   client's datagram was delivered to (IP_PKTINFO), so conntrack turns them back into the
//!   frontend's address.
//! - A sync updates each listener's endpoints in place: listeners of unchanged service ports
//!   stay (same port, same socket); removed ones stop accepting, and their open TCP
//!   connections are left to finish (they end when either side closes); UDP sessions of a
//!   removed listener end after their idle timeout.
//! - SCTP is not supported (no listener; a warning names the service port).

use std::collections::{BTreeMap, HashMap};
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use svcc_compiler::ir::{Backend, Ir, ServicePort};
use svcc_compiler::nft::model::{Family, L4Proto};
use svcc_compiler::userspace::{self as us, ListenerKey, Ports, Role};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// kube-proxy's `EndpointDialTimeouts`: one connect attempt each, to the next endpoint.
pub const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// kube-proxy's default ClientIP affinity (3 h) when a Service gives 0.
const DEFAULT_AFFINITY: u32 = 10800;

/// Counters over every listener (bounded: no per-connection or per-endpoint labels).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub failed_connects: AtomicU64,
    pub retries: AtomicU64,
    pub bytes: AtomicU64,
    pub udp_sessions: AtomicU64,
}

/// What a listener needs to pick an endpoint; replaced at each sync.
struct Target {
    sp: Arc<ServicePort>,
    role: Role,
    cluster_cidrs: Arc<Vec<IpNet>>,
    local_addrs: Arc<Vec<IpAddr>>,
}

/// One listener's state, shared by its tasks.
struct Listener {
    target: RwLock<Target>,
    rr: AtomicUsize,
    /// ClientIP affinity: client → (endpoint, last use).
    affinity: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
    udp_timeout: Duration,
    /// The proxy's totals and this listener's own counters.
    counters: Arc<Counters>,
    own: Arc<Counters>,
}

fn sockaddr(b: &Backend) -> SocketAddr {
    SocketAddr::new(b.addr, b.port)
}

impl Listener {
    fn add(&self, which: fn(&Counters) -> &AtomicU64, n: u64) {
        which(&self.counters).fetch_add(n, Ordering::Relaxed);
        which(&self.own).fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, which: fn(&Counters) -> &AtomicU64, n: u64) {
        which(&self.counters).fetch_sub(n, Ordering::Relaxed);
        which(&self.own).fetch_sub(n, Ordering::Relaxed);
    }

    /// The endpoints for `client` now.
    fn endpoints(&self, client: IpAddr) -> (Vec<SocketAddr>, Option<Duration>) {
        let t = self.target.read().unwrap_or_else(|e| e.into_inner());
        let local = client.is_loopback() || t.local_addrs.contains(&client);
        let eps = us::endpoints_for(&t.sp, t.role, client, &t.cluster_cidrs, local);
        let aff =
            t.sp.policy
                .affinity_timeout
                .map(|s| Duration::from_secs(u64::from(if s == 0 { DEFAULT_AFFINITY } else { s })));
        (eps.iter().map(sockaddr).collect(), aff)
    }

    /// kube-proxy's `NextEndpoint`: the client's affinity endpoint if still valid (unless
    /// `reset`), else the next one round robin (recorded for affinity).
    fn next_endpoint(&self, client: IpAddr, reset: bool) -> Option<SocketAddr> {
        let (eps, aff) = self.endpoints(client);
        if eps.is_empty() {
            return None;
        }
        let now = Instant::now();
        if let Some(ttl) = aff {
            let mut m = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
            if !reset {
                if let Some((ep, last)) = m.get_mut(&client) {
                    if now.duration_since(*last) < ttl && eps.contains(ep) {
                        *last = now;
                        return Some(*ep);
                    }
                }
            }
            let ep = eps[self.rr.fetch_add(1, Ordering::Relaxed) % eps.len()];
            m.insert(client, (ep, now));
            // Stale entries go as the map is used (kube-proxy: CleanupStaleStickySessions).
            if m.len() > 1024 {
                m.retain(|_, (_, t)| now.duration_since(*t) < ttl);
            }
            return Some(ep);
        }
        Some(eps[self.rr.fetch_add(1, Ordering::Relaxed) % eps.len()])
    }
}

struct Handle {
    port: u16,
    state: Arc<Listener>,
    task: JoinHandle<()>,
}

/// The proxy: its tokio runtime and its listeners.
pub struct Proxy {
    rt: tokio::runtime::Runtime,
    range: (u16, u16),
    udp_timeout: Duration,
    listeners: BTreeMap<ListenerKey, Handle>,
    warned: std::collections::BTreeSet<String>,
    targets: BTreeMap<Family, IpAddr>,
    pub counters: Arc<Counters>,
}

/// The result of a sync: the listener ports to write into the rules, and what went wrong.
pub struct SyncResult {
    pub ports: Ports,
    /// Service ports without a listener (SCTP, no port left in the range): one line each.
    pub problems: Vec<String>,
}

fn local_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for i in ifs {
            if let Some(a) = i.address {
                if let Some(v4) = a.as_sockaddr_in() {
                    out.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = a.as_sockaddr_in6() {
                    out.push(IpAddr::V6(v6.ip()));
                }
            }
        }
    }
    out
}

/// A service port of a family, by name.
type SpKey<'a> = (Family, &'a svcc_compiler::ir::ServicePortName);

/// Every listener and every proxied TCP connection holds descriptors (a connection: two
/// sockets and two pipes): raise the soft RLIMIT_NOFILE to the hard limit (kube-proxy's
/// userspace proxier set 64000).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => {
                    tracing::debug!(target: "svcc::userspace", from = soft, to = hard, "raised the open-file limit")
                }
                Err(e) => {
                    tracing::warn!(target: "svcc::userspace", error = %e, "cannot raise the open-file limit")
                }
            }
        }
    }
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// Binds the wildcard address of the family on `port` (IPv6: v6only, so an IPv4 and an IPv6
/// listener may share a number).
fn bind(fam: Family, proto: L4Proto, port: u16) -> std::io::Result<Bound> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, addr) = match fam {
        Family::Ip => (
            Domain::IPV4,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
        ),
        Family::Ip6 => (
            Domain::IPV6,
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        ),
    };
    let (ty, p) = match proto {
        L4Proto::Tcp => (Type::STREAM, Protocol::TCP),
        L4Proto::Udp => (Type::DGRAM, Protocol::UDP),
        L4Proto::Sctp => {
            return Err(std::io::Error::other(
                "SCTP is not supported in userspace mode",
            ))
        }
    };
    let s = Socket::new(domain, ty, Some(p))?;
    if fam == Family::Ip6 {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    match proto {
        L4Proto::Tcp => {
            s.listen(1024)?;
            Ok(Bound::Tcp(s.into()))
        }
        _ => {
            match fam {
                Family::Ip => setsockopt(&s, sockopt::Ipv4PacketInfo, &true),
                Family::Ip6 => setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true),
            }
            .map_err(std::io::Error::from)?;
            Ok(Bound::Udp(s.into()))
        }
    }
}

impl Proxy {
    pub fn new(range: (u16, u16), udp_timeout: Duration) -> std::io::Result<Proxy> {
        raise_fd_limit();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("svcc-proxy")
            .enable_all()
            .build()?;
        Ok(Proxy {
            rt,
            range,
            udp_timeout,
            listeners: BTreeMap::new(),
            warned: Default::default(),
            targets: BTreeMap::new(),
            counters: Arc::default(),
        })
    }

    /// The rules for `ir` and the listeners now bound.
    pub fn ruleset(&self, ir: &Ir) -> svcc_compiler::nft::model::Ruleset {
        us::build_with_targets(ir, &self.ports(), &self.targets)
    }

    /// Each listener's counters, with its Prometheus labels (one series per listener: the
    /// number of service ports bounds the cardinality; never per client or endpoint).
    pub fn listener_counters(&self) -> Vec<(String, Arc<Counters>)> {
        self.listeners
            .iter()
            .map(|(k, h)| {
                let labels = format!(
                    "service_port=\"{}\",protocol=\"{}\",family=\"{}\",role=\"{}\"",
                    k.name,
                    k.name.protocol.keyword(),
                    k.family.keyword(),
                    k.role.keyword()
                );
                (labels, h.state.own.clone())
            })
            .collect()
    }

    /// The port of each listener now bound.
    pub fn ports(&self) -> Ports {
        self.listeners
            .iter()
            .map(|(k, h)| (k.clone(), h.port))
            .collect()
    }

    /// Makes the listeners those of `ir`: keeps unchanged ones (updating their endpoints),
    /// closes removed ones, binds new ones on ports assigned from the range (a port that
    /// cannot be bound is skipped).
    pub fn sync(&mut self, ir: &Ir) -> SyncResult {
        let mut problems = Vec::new();
        for f in &ir.families {
            for sp in &f.service_ports {
                if sp.protocol == L4Proto::Sctp {
                    let msg = format!(
                        "{} ({}): SCTP is not supported in userspace mode: no listener, its traffic is not proxied",
                        sp.name,
                        f.family.keyword()
                    );
                    if self.warned.insert(msg.clone()) {
                        tracing::warn!(target: "svcc::userspace", "{msg}");
                    }
                    problems.push(msg);
                }
            }
        }
        let keys = us::listener_keys(ir);
        let wanted: std::collections::BTreeSet<&ListenerKey> = keys.iter().collect();
        let gone: Vec<ListenerKey> = self
            .listeners
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(h) = self.listeners.remove(&k) {
                // Stops accepting; connections already accepted run in their own tasks.
                h.task.abort();
                tracing::info!(target: "svcc::userspace", listener = %k, port = h.port, "listener closed");
            }
        }
        let previous = self.ports();
        let mut bound: HashMap<ListenerKey, (u16, Bound)> = HashMap::new();
        let mut failures: BTreeMap<String, String> = BTreeMap::new();
        let a = us::assign(&keys, self.range, &previous, |k, p| {
            match bind(k.family, k.name.protocol, p) {
                Ok(b) => {
                    bound.insert(k.clone(), (p, b));
                    true
                }
                Err(e) => {
                    failures.insert(k.to_string(), format!("{p}: {e}"));
                    false
                }
            }
        });
        for k in &a.unassigned {
            let last = failures.get(&k.to_string()).cloned().unwrap_or_default();
            let msg = format!(
                "{k}: no port of --proxy-port-range {}-{} can be bound (last: {last}); not proxied",
                self.range.0, self.range.1
            );
            tracing::error!(target: "svcc::userspace", "{msg}");
            problems.push(msg);
        }
        let local = Arc::new(local_addrs());
        // Families without a node IP: the rules DNAT to the first global address of the node
        // (kube-proxy's `hostIP` came from the default route's interface).
        self.targets = [Family::Ip, Family::Ip6]
            .into_iter()
            .filter_map(|fam| {
                local
                    .iter()
                    .find(|a| {
                        Family::of(a) == fam
                            && !a.is_loopback()
                            && !a.is_unspecified()
                            && !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
                    })
                    .map(|a| (fam, *a))
            })
            .collect();
        let sps: HashMap<SpKey<'_>, (&Arc<ServicePort>, Arc<Vec<IpNet>>)> = ir
            .families
            .iter()
            .flat_map(|f| {
                let cidrs = Arc::new(f.cluster_cidrs.clone());
                f.service_ports
                    .iter()
                    .map(move |sp| ((f.family, &sp.name), (sp, cidrs.clone())))
            })
            .collect();
        for k in &keys {
            let Some((sp, cidrs)) = sps.get(&(k.family, &k.name)) else {
                continue;
            };
            let target = Target {
                sp: (*sp).clone(),
                role: k.role,
                cluster_cidrs: cidrs.clone(),
                local_addrs: local.clone(),
            };
            if let Some(h) = self.listeners.get(k) {
                *h.state.target.write().unwrap_or_else(|e| e.into_inner()) = target;
                continue;
            }
            let Some((port, sock)) = bound.remove(k) else {
                continue;
            };
            let state = Arc::new(Listener {
                target: RwLock::new(target),
                rr: AtomicUsize::new(0),
                affinity: Mutex::new(HashMap::new()),
                udp_timeout: self.udp_timeout,
                counters: self.counters.clone(),
                own: Arc::default(),
            });
            let _guard = self.rt.enter();
            let task = match sock {
                Bound::Tcp(l) => match TcpListener::from_std(l) {
                    Ok(l) => self.rt.spawn(serve_tcp(l, state.clone())),
                    Err(e) => {
                        problems.push(format!("{k}: {e}"));
                        continue;
                    }
                },
                Bound::Udp(u) => match UdpSocket::from_std(u) {
                    Ok(u) => self
                        .rt
                        .spawn(serve_udp(Arc::new(u), k.family, state.clone())),
                    Err(e) => {
                        problems.push(format!("{k}: {e}"));
                        continue;
                    }
                },
            };
            tracing::info!(target: "svcc::userspace", listener = %k, port, "listening");
            self.listeners
                .insert(k.clone(), Handle { port, state, task });
        }
        SyncResult {
            ports: self.ports(),
            problems,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for h in self.listeners.values() {
            h.task.abort();
        }
    }
}

async fn serve_tcp(l: TcpListener, st: Arc<Listener>) {
    loop {
        let (client, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (kube-proxy panicked).
                tracing::warn!(target: "svcc::userspace", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        st.add(|c| &c.accepted, 1);
        tokio::spawn(proxy_tcp(client, peer, st.clone()));
    }
}

/// kube-proxy's `TryConnectEndpoints`: up to 4 endpoints, one dial timeout each.
async fn connect(st: &Listener, client: IpAddr) -> Option<TcpStream> {
    for (i, t) in DIAL_TIMEOUTS.iter().enumerate() {
        let ep = st.next_endpoint(client, i > 0)?;
        if i > 0 {
            st.add(|c| &c.retries, 1);
        }
        match tokio::time::timeout(*t, TcpStream::connect(ep)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => {
                st.add(|c| &c.failed_connects, 1);
                tracing::debug!(target: "svcc::userspace", endpoint = %ep, error = %e, "connect failed; trying the next endpoint");
            }
            Err(_) => {
                st.add(|c| &c.failed_connects, 1);
                tracing::debug!(target: "svcc::userspace", endpoint = %ep, timeout = ?t, "connect timed out; trying the next endpoint");
            }
        }
    }
    None
}

async fn proxy_tcp(mut client: TcpStream, peer: SocketAddr, st: Arc<Listener>) {
    let Some(mut backend) = connect(&st, peer.ip()).await else {
        // Nothing to connect to: the client sees its connection closed (as kube-proxy).
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    st.add(|c| &c.active, 1);
    // splice(2) through a pipe per direction: the bytes never enter userspace. Without pipes
    // (fd limit), copy through buffers.
    let copied = match (pipe(), pipe()) {
        (Ok(p1), Ok(p2)) => tokio::try_join!(
            splice_half(&client, &backend, p1),
            splice_half(&backend, &client, p2)
        )
        .ok(),
        _ => tokio::io::copy_bidirectional(&mut client, &mut backend)
            .await
            .ok(),
    };
    if let Some((a, b)) = copied {
        st.add(|c| &c.bytes, a + b);
    }
    st.sub(|c| &c.active, 1);
}

type Pipe = (std::os::fd::OwnedFd, std::os::fd::OwnedFd);

fn pipe() -> std::io::Result<Pipe> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(std::io::Error::from)
}

/// One direction of a TCP connection with splice(2): socket → pipe → socket, 64 KiB at a
/// time, until EOF (then the write side is shut down: half-close is kept) or an error.
async fn splice_half(from: &TcpStream, to: &TcpStream, (pr, pw): Pipe) -> std::io::Result<u64> {
    use nix::fcntl::{splice, SpliceFFlags};
    use tokio::io::Interest;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_io(Interest::READABLE, || {
            splice(from, None, &pw, None, 1 << 16, flags).map_err(std::io::Error::from)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pr, None, to, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(m) => {
                    left -= m;
                    total += m as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One UDP client session: a connected socket to its endpoint.
struct UdpSession {
    backend: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
}

/// Milliseconds since `epoch`, for the sessions' last activity.
fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// A datagram and the local address it was delivered to (IP_PKTINFO).
fn recv_pktinfo(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    sock.try_io(tokio::io::Interest::READABLE, || {
        let mut iov = [IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
        let m = recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let mut local = None;
        for c in m.cmsgs().map_err(std::io::Error::from)? {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    local = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        let peer = m
            .address
            .and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v| SocketAddr::new(IpAddr::V4(v.ip()), v.port()))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|v| SocketAddr::new(IpAddr::V6(v.ip()), v.port()))
                    })
            })
            .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
        Ok((m.bytes, peer, local))
    })
}

/// Sends `data` to `to` from the local address `from` (so conntrack un-NATs the reply).
fn send_from(
    sock: &UdpSocket,
    data: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<()> {
    sock.try_io(tokio::io::Interest::WRITABLE, || {
        let iov = [IoSlice::new(data)];
        let dst = SockaddrStorage::from(to);
        let r = match from {
            Some(IpAddr::V4(a)) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                sendmsg(
                    sock.as_raw_fd(),
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&info)],
                    MsgFlags::empty(),
                    Some(&dst),
                )
            }
            Some(IpAddr::V6(a)) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                sendmsg(
                    sock.as_raw_fd(),
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&info)],
                    MsgFlags::empty(),
                    Some(&dst),
                )
            }
            None => sendmsg(sock.as_raw_fd(), &iov, &[], MsgFlags::empty(), Some(&dst)),
        };
        r.map(|_| ()).map_err(std::io::Error::from)
    })
}

async fn serve_udp(sock: Arc<UdpSocket>, fam: Family, st: Arc<Listener>) {
    let sessions: Arc<Mutex<HashMap<SocketAddr, UdpSession>>> = Arc::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        if sock.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let (n, peer, local) = match recv_pktinfo(&sock, &mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => continue,
        };
        let existing = {
            let m = sessions.lock().unwrap_or_else(|e| e.into_inner());
            m.get(&peer).map(|s| (s.backend.clone(), s.last.clone()))
        };
        let (backend, last) = match existing {
            Some(x) => x,
            None => {
                let Some(ep) = st.next_endpoint(peer.ip(), false) else {
                    continue;
                };
                let any: SocketAddr = match fam {
                    Family::Ip => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    Family::Ip6 => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let Ok(b) = UdpSocket::bind(any).await else {
                    continue;
                };
                if b.connect(ep).await.is_err() {
                    st.add(|c| &c.failed_connects, 1);
                    continue;
                }
                let b = Arc::new(b);
                let last = Arc::new(AtomicU64::new(since(epoch)));
                sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    peer,
                    UdpSession {
                        backend: b.clone(),
                        last: last.clone(),
                    },
                );
                st.add(|c| &c.udp_sessions, 1);
                tokio::spawn(udp_replies(
                    sock.clone(),
                    b.clone(),
                    peer,
                    local,
                    last.clone(),
                    epoch,
                    sessions.clone(),
                    st.clone(),
                ));
                (b, last)
            }
        };
        last.store(since(epoch), Ordering::Relaxed);
        if backend.send(&buf[..n]).await.is_ok() {
            st.add(|c| &c.bytes, n as u64);
        }
    }
}

/// Copies a session's replies back to its client until it has been idle for the timeout.
#[allow(clippy::too_many_arguments)]
async fn udp_replies(
    sock: Arc<UdpSocket>,
    backend: Arc<UdpSocket>,
    client: SocketAddr,
    local: Option<IpAddr>,
    last: Arc<AtomicU64>,
    epoch: Instant,
    sessions: Arc<Mutex<HashMap<SocketAddr, UdpSession>>>,
    st: Arc<Listener>,
) {
    let idle = st.udp_timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let quiet =
            Duration::from_millis(since(epoch).saturating_sub(last.load(Ordering::Relaxed)));
        if quiet >= idle {
            break;
        }
        match tokio::time::timeout(idle - quiet, backend.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last.store(since(epoch), Ordering::Relaxed);
                loop {
                    if sock.writable().await.is_err() {
                        break;
                    }
                    match send_from(&sock, &buf[..n], client, local) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Ok(()) => {
                            st.add(|c| &c.bytes, n as u64);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            // ICMP errors (a dead endpoint): keep the session until it is idle.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => {}
        }
    }
    let mut m = sessions.lock().unwrap_or_else(|e| e.into_inner());
    if m.get(&client)
        .is_some_and(|s| Arc::ptr_eq(&s.backend, &backend))
    {
        m.remove(&client);
    }
}
