//! The daemon's HTTP side: `/metrics`, `/healthz` + `/livez`, and one responder per
//! healthCheckNodePort, all served by ONE thread (a `mio` poll loop; requests parsed with
//! `httparse`). Every answer is small and computed on the spot, so nothing blocks.
//!
//! Why not tiny_http: it costs an accept thread plus a pool of at least four threads per
//! listening port, and a node can have hundreds of healthCheckNodePorts; an accept error ends its
//! accept loop silently; idle keep-alive clients hold a thread each with no timeout. Here: one
//! thread whatever the number of ports, `Connection: close` after one answer, at most
//! [`MAX_CONNS`] open connections, each closed after [`CONN_TIMEOUT`], and a port that cannot be
//! bound (in use) is retried every few seconds.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn6,
};

use super::health::{self, Answer, ProxyHealth};
use super::metrics::Metrics;

const WAKER: Token = Token(0);
const FIRST_TOKEN: usize = 1;
pub const MAX_CONNS: usize = 256;
pub const CONN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 16 << 10;
const BIND_RETRY: Duration = Duration::from_secs(5);

/// State read by the HTTP thread, written by the sync loop.
pub struct Shared {
    pub metrics: Mutex<Metrics>,
    pub health: Mutex<ProxyHealth>,
}

/// One Service answering on a healthCheckNodePort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcService {
    pub namespace: String,
    pub name: String,
    /// Local endpoints (kube-proxy: local ready endpoints of the service, all ports).
    pub local: usize,
}

enum Cmd {
    HealthChecks(BTreeMap<u16, HcService>),
    Stop,
}

/// The running HTTP thread; stopped on drop.
pub struct HttpServer {
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds the metrics and healthz addresses now (errors are the caller's), then serves.
    pub fn start(
        shared: Arc<Shared>,
        metrics: Option<SocketAddr>,
        healthz: Option<SocketAddr>,
    ) -> io::Result<HttpServer> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut lp = Loop {
            poll,
            shared,
            listeners: HashMap::new(),
            hc_ports: BTreeMap::new(),
            hc: BTreeMap::new(),
            hc_failed: BTreeMap::new(),
            conns: HashMap::new(),
            next_token: FIRST_TOKEN,
        };
        for (addr, kind, what) in [
            (metrics, Kind::Metrics, "--metrics-bind-address"),
            (healthz, Kind::Healthz, "--healthz-bind-address"),
        ] {
            if let Some(a) = addr {
                let l = std::net::TcpListener::bind(a)
                    .map_err(|e| io::Error::new(e.kind(), format!("{what} {a}: {e}")))?;
                l.set_nonblocking(true)?;
                lp.listen(TcpListener::from_std(l), kind)?;
            }
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("svcc-http".into())
            .spawn(move || lp.run(rx))?;
        Ok(HttpServer {
            tx,
            waker,
            thread: Some(thread),
        })
    }

    /// The healthCheckNodePorts to answer on, and what to answer (replaces the previous set).
    pub fn set_health_checks(&self, hc: BTreeMap<u16, HcService>) {
        if self.tx.send(Cmd::HealthChecks(hc)).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Metrics,
    Healthz,
    HealthCheck(u16),
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    since: Instant,
    answering: bool,
}

struct Loop {
    poll: Poll,
    shared: Arc<Shared>,
    listeners: HashMap<Token, (TcpListener, Kind)>,
    /// healthCheckNodePort -> its listener's token.
    hc_ports: BTreeMap<u16, Token>,
    /// What each healthCheckNodePort answers.
    hc: BTreeMap<u16, HcService>,
    /// Ports that could not be bound, with the time of the last try.
    hc_failed: BTreeMap<u16, Instant>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
}

/// A listening socket on every address (IPv6 socket accepting IPv4 too; IPv4 only if the node
/// has no IPv6), with SO_REUSEADDR so a port freed a moment ago can be bound again.
fn bind_any(port: u16) -> io::Result<std::net::TcpListener> {
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    );
    let fd = match fd {
        Ok(fd) => fd,
        Err(nix::errno::Errno::EAFNOSUPPORT) => {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            return Ok(l);
        }
        Err(e) => return Err(e.into()),
    };
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    bind(fd.as_raw_fd(), &addr)?;
    listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

impl Loop {
    fn token(&mut self) -> Token {
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_TOKEN);
        Token(self.next_token)
    }

    fn listen(&mut self, mut l: TcpListener, kind: Kind) -> io::Result<Token> {
        let t = self.token();
        self.poll
            .registry()
            .register(&mut l, t, Interest::READABLE)?;
        self.listeners.insert(t, (l, kind));
        Ok(t)
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(500)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "http: poll failed; HTTP answers stop");
                    return;
                }
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    for cmd in rx.try_iter() {
                        match cmd {
                            Cmd::Stop => return,
                            Cmd::HealthChecks(hc) => self.set_health_checks(hc),
                        }
                    }
                } else if self.listeners.contains_key(&t) {
                    self.accept(t);
                } else {
                    self.conn_ready(t, ev.is_writable());
                }
            }
            let now = Instant::now();
            let old: Vec<Token> = self
                .conns
                .iter()
                .filter(|(_, c)| now.duration_since(c.since) > CONN_TIMEOUT)
                .map(|(t, _)| *t)
                .collect();
            for t in old {
                self.close(t);
            }
            let retry: Vec<u16> = self
                .hc_failed
                .iter()
                .filter(|(_, at)| now.duration_since(**at) >= BIND_RETRY)
                .map(|(p, _)| *p)
                .collect();
            if !retry.is_empty() {
                for p in retry {
                    self.open_hc(p);
                }
                self.publish_hc();
            }
        }
    }

    fn set_health_checks(&mut self, hc: BTreeMap<u16, HcService>) {
        let gone: Vec<u16> = self
            .hc_ports
            .keys()
            .filter(|p| !hc.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            if let Some(t) = self.hc_ports.remove(&p) {
                if let Some((mut l, _)) = self.listeners.remove(&t) {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                tracing::info!(port = p, "health check node port closed");
            }
        }
        self.hc_failed.retain(|p, _| hc.contains_key(p));
        let new: Vec<u16> = hc
            .keys()
            .filter(|p| !self.hc_ports.contains_key(p) && !self.hc_failed.contains_key(p))
            .copied()
            .collect();
        self.hc = hc;
        for p in new {
            self.open_hc(p);
        }
        self.publish_hc();
    }

    fn open_hc(&mut self, port: u16) {
        let svc = self
            .hc
            .get(&port)
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .unwrap_or_default();
        match bind_any(port)
            .and_then(|l| self.listen(TcpListener::from_std(l), Kind::HealthCheck(port)))
        {
            Ok(t) => {
                self.hc_ports.insert(port, t);
                if self.hc_failed.remove(&port).is_some() {
                    tracing::info!(port, service = %svc, "health check node port bound after retry");
                } else {
                    tracing::info!(port, service = %svc, "health check node port listening");
                }
            }
            Err(e) => {
                if !self.hc_failed.contains_key(&port) {
                    tracing::error!(port, service = %svc, error = %e, "cannot listen on health check node port (retrying every 5s)");
                }
                self.hc_failed.insert(port, Instant::now());
            }
        }
    }

    fn publish_hc(&self) {
        if let Ok(mut m) = self.shared.metrics.lock() {
            m.hc_listening = self.hc_ports.len() as u64;
            m.hc_failed = self.hc_failed.len() as u64;
        }
    }

    fn accept(&mut self, t: Token) {
        loop {
            let Some((l, kind)) = self.listeners.get(&t) else {
                return;
            };
            let kind = *kind;
            match l.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_CONNS {
                        continue; // dropped: closed at once
                    }
                    let ct = self.token();
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, ct, Interest::READABLE)
                        .is_ok()
                    {
                        self.conns.insert(
                            ct,
                            Conn {
                                stream,
                                kind,
                                input: Vec::new(),
                                output: Vec::new(),
                                sent: 0,
                                since: Instant::now(),
                                answering: false,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: the listener stays; try again on the next event.
                    tracing::warn!(error = %e, "http: accept failed");
                    return;
                }
            }
        }
    }

    fn close(&mut self, t: Token) {
        if let Some(mut c) = self.conns.remove(&t) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn conn_ready(&mut self, t: Token, _writable: bool) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        if !c.answering {
            let mut buf = [0u8; 4096];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        self.close(t);
                        return;
                    }
                    Ok(n) => {
                        c.input.extend_from_slice(&buf[..n]);
                        if c.input.len() > MAX_REQUEST {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.close(t);
                        return;
                    }
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let answer = match req.parse(&c.input) {
                Ok(httparse::Status::Complete(_)) => {
                    let method = req.method.unwrap_or("GET").to_string();
                    let path = req.path.unwrap_or("/").to_string();
                    let kind = c.kind;
                    let a = self.answer(kind, &path);
                    Some((a, method == "HEAD"))
                }
                Ok(httparse::Status::Partial) if c.input.len() <= MAX_REQUEST => None,
                Ok(httparse::Status::Partial) => Some((plain(431, "request too large\n"), false)),
                Err(httparse::Error::TooManyHeaders) => {
                    Some((plain(431, "too many headers\n"), false))
                }
                Err(_) => Some((plain(400, "bad request\n"), false)),
            };
            let Some((a, head)) = answer else {
                return;
            };
            let c = self.conns.get_mut(&t).expect("connection");
            c.output = encode(&a, head);
            c.answering = true;
        }
        let c = self.conns.get_mut(&t).expect("connection");
        while c.sent < c.output.len() {
            match c.stream.write(&c.output[c.sent..]) {
                Ok(0) => break,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.poll.registry().reregister(
                        &mut c.stream,
                        t,
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(t);
    }

    fn answer(&mut self, kind: Kind, target: &str) -> Answer {
        let path = target.split(['?', '#']).next().unwrap_or("/");
        match kind {
            Kind::Metrics => match path {
                "/metrics" => Answer {
                    status: 200,
                    body: self
                        .shared
                        .metrics
                        .lock()
                        .map(|m| m.render())
                        .unwrap_or_default(),
                    headers: vec![(
                        "Content-Type",
                        "text/plain; version=0.0.4; charset=utf-8".into(),
                    )],
                },
                _ => plain(404, "404 page not found\n"),
            },
            Kind::Healthz => {
                let healthz = match path {
                    "/healthz" => true,
                    "/livez" => false,
                    _ => return plain(404, "404 page not found\n"),
                };
                let a = match self.shared.health.lock() {
                    Ok(h) => h.answer(healthz, SystemTime::now(), Instant::now()),
                    Err(_) => plain(503, "unavailable\n"),
                };
                if let Ok(mut m) = self.shared.metrics.lock() {
                    let map = if healthz {
                        &mut m.healthz
                    } else {
                        &mut m.livez
                    };
                    *map.entry(a.status).or_default() += 1;
                }
                a
            }
            Kind::HealthCheck(port) => {
                let healthy = self
                    .shared
                    .health
                    .lock()
                    .map(|h| h.is_healthy(Instant::now()))
                    .unwrap_or(false);
                match self.hc.get(&port) {
                    Some(s) => health::service_answer(&s.namespace, &s.name, s.local, healthy),
                    None => plain(503, "no service on this port\n"),
                }
            }
        }
    }
}

fn plain(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.into(),
        headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The whole HTTP/1.1 response; the connection is closed after it.
fn encode(a: &Answer, head_only: bool) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {} {}\r\n", a.status, reason(a.status));
    for (k, v) in &a.headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        a.body.len()
    ));
    let mut out = h.into_bytes();
    if !head_only {
        out.extend_from_slice(a.body.as_bytes());
    }
    out
}
