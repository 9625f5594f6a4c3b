//! The asking side: one connection (TCP) or one datagram exchange (UDP) per try, from a fresh
//! socket (so a fresh source port and a fresh conntrack entry), with a short timeout.

use std::fmt;
use std::io::{ErrorKind, Read};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::schema::Proto;
use crate::server::parse_answer;

/// What one try saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seen {
    /// Answered: by `backend` (its local address), which saw the connection come from `src`;
    /// `client` is the client's own address for the try.
    Answer {
        backend: SocketAddr,
        src: SocketAddr,
        client: SocketAddr,
    },
    /// No answer in time.
    Timeout,
    /// ECONNREFUSED: TCP RST or ICMP port unreachable.
    Refused,
    /// Another ICMP error (host/net unreachable, administratively prohibited).
    Unreachable(String),
    /// The OUTPUT path dropped the packet before it left (`send` fails with EPERM).
    LocalDrop,
    /// Anything else (a bug of the framework or an odd answer).
    Error(String),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Answer {
                backend,
                src,
                client,
            } => {
                if src == client {
                    write!(f, "answered by {backend}, source kept ({src})")
                } else {
                    write!(
                        f,
                        "answered by {backend}, source seen {src} (client {client})"
                    )
                }
            }
            Seen::Timeout => f.write_str("no answer (timeout)"),
            Seen::Refused => f.write_str("refused (ECONNREFUSED)"),
            Seen::Unreachable(e) => write!(f, "unreachable ({e})"),
            Seen::LocalDrop => f.write_str("dropped on output (EPERM)"),
            Seen::Error(e) => write!(f, "error: {e}"),
        }
    }
}

fn classify(e: &std::io::Error) -> Seen {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => return Seen::Timeout,
        ErrorKind::ConnectionRefused => return Seen::Refused,
        _ => {}
    }
    match e.raw_os_error() {
        Some(libc::EPERM) => Seen::LocalDrop,
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) | Some(libc::EACCES) => {
            Seen::Unreachable(e.to_string())
        }
        _ => Seen::Error(e.to_string()),
    }
}

fn sa(s: &SockAddr) -> SocketAddr {
    s.as_socket()
        .unwrap_or_else(|| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0))
}

/// One try, from source port `sport`. Must run on a thread that is inside the client's
/// namespace.
///
/// The caller gives every try of a case its own source port: two connections from one client
/// that are DNATed to one backend would otherwise share a reply tuple whenever the kernel
/// picks the same ephemeral port for them, and conntrack would then remap the source port —
/// which looks exactly like masquerading when the client is the node itself.
pub fn try_once(
    proto: Proto,
    bind: Option<IpAddr>,
    sport: u16,
    dst: SocketAddr,
    timeout: Duration,
) -> Seen {
    let r = match proto {
        Proto::Tcp => tcp(bind, sport, dst, timeout),
        Proto::Udp => udp(bind, sport, dst, timeout),
    };
    r.unwrap_or_else(|s| s)
}

fn socket(
    ty: Type,
    proto: Protocol,
    bind: Option<IpAddr>,
    sport: u16,
    dst: SocketAddr,
) -> Result<Socket, Seen> {
    let s = Socket::new(Domain::for_address(dst), ty, Some(proto))
        .map_err(|e| Seen::Error(format!("socket: {e}")))?;
    let ip = bind.unwrap_or(match dst {
        SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    });
    s.set_reuse_address(true)
        .map_err(|e| Seen::Error(format!("SO_REUSEADDR: {e}")))?;
    let local = SocketAddr::new(ip, sport);
    s.bind(&local.into())
        .map_err(|e| Seen::Error(format!("bind {local}: {e}")))?;
    Ok(s)
}

/// A non-blocking connect that also watches the socket's soft error.
///
/// Here the SYN, the REJECT and the ICMP error all happen synchronously inside `connect()`,
/// while the socket is locked; IPv6 TCP then only records the error as a soft error
/// (`TcpExtLockDroppedIcmps`) and would report it after the SYN retransmission, a second
/// later. `SO_ERROR` returns the soft error, so a refusal is seen at once either way.
fn connect(s: &Socket, dst: SocketAddr, deadline: Instant) -> Result<(), Seen> {
    s.set_nonblocking(true)
        .map_err(|e| Seen::Error(e.to_string()))?;
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Seen::Timeout);
            }
            let mut pfd = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let slice = left.min(Duration::from_millis(20)).as_millis() as libc::c_int;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, slice.max(1)) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(Seen::Error(format!("poll: {e}")));
            }
            match s.take_error() {
                Ok(Some(e)) => return Err(classify(&e)),
                Ok(None) if n > 0 => break,
                Ok(None) => {}
                Err(e) => return Err(Seen::Error(format!("SO_ERROR: {e}"))),
            }
        },
        Err(e) => return Err(classify(&e)),
    }
    s.set_nonblocking(false)
        .map_err(|e| Seen::Error(e.to_string()))
}

fn tcp(bind: Option<IpAddr>, sport: u16, dst: SocketAddr, timeout: Duration) -> Result<Seen, Seen> {
    let s = socket(Type::STREAM, Protocol::TCP, bind, sport, dst)?;
    let deadline = Instant::now() + timeout;
    connect(&s, dst, deadline)?;
    let client = sa(&s.local_addr().map_err(|e| Seen::Error(e.to_string()))?);
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(200));
    s.set_read_timeout(Some(left))
        .map_err(|e| Seen::Error(e.to_string()))?;
    let mut stream: std::net::TcpStream = s.into();
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => {}
        Err(e) if text.is_empty() => {
            return Err(match classify(&e) {
                Seen::Timeout => Seen::Error("connected, but no answer was sent".into()),
                other => Seen::Error(format!("connected, then {other}")),
            })
        }
        Err(_) => {}
    }
    match parse_answer(&text) {
        Some((backend, src)) => Ok(Seen::Answer {
            backend,
            src,
            client,
        }),
        None => Err(Seen::Error(format!("connected, odd answer {text:?}"))),
    }
}

fn udp(bind: Option<IpAddr>, sport: u16, dst: SocketAddr, timeout: Duration) -> Result<Seen, Seen> {
    let s = socket(Type::DGRAM, Protocol::UDP, bind, sport, dst)?;
    s.connect(&dst.into()).map_err(|e| classify(&e))?;
    let client = sa(&s.local_addr().map_err(|e| Seen::Error(e.to_string()))?);
    s.set_read_timeout(Some(timeout))
        .map_err(|e| Seen::Error(e.to_string()))?;
    if let Err(e) = s.send(b"svcc-flow ping\n") {
        let seen = classify(&e);
        if seen != Seen::LocalDrop {
            return Err(seen);
        }
        // Dropped on the way out (EPERM). A REJECT in the OUTPUT path drops too, but first
        // sends the ICMP error to us: it shows as ECONNREFUSED on the next receive.
        s.set_read_timeout(Some(timeout.min(Duration::from_millis(200))))
            .map_err(|e| Seen::Error(e.to_string()))?;
        let mut buf = [MaybeUninit::<u8>::uninit(); 64];
        return Err(match s.recv(&mut buf).map_err(|e| classify(&e)) {
            Err(Seen::Refused) => Seen::Refused,
            Err(Seen::Unreachable(u)) => Seen::Unreachable(u),
            _ => Seen::LocalDrop,
        });
    }
    let mut buf = [MaybeUninit::<u8>::uninit(); 512];
    let n = s.recv(&mut buf).map_err(|e| classify(&e))?;
    // SAFETY: recv initialised the first n bytes.
    let bytes: Vec<u8> = buf[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect();
    let text = String::from_utf8_lossy(&bytes);
    match parse_answer(&text) {
        Some((backend, src)) => Ok(Seen::Answer {
            backend,
            src,
            client,
        }),
        None => Err(Seen::Error(format!("odd answer {text:?}"))),
    }
}
