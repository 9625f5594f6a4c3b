//! The answering side: one thread per case serves every (address, port) of every namespace,
//! TCP and UDP, with one `poll()` loop. Sockets are created by a helper thread that enters each
//! namespace in turn (a socket stays in the namespace it was created in).
//!
//! Answer: `svcc-flow backend=<local IP:port> src=<peer IP:port>\n`. TCP: written right after
//! accept, then the connection is closed. UDP: one datagram back per datagram received.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use crate::netns;

pub fn answer(local: SocketAddr, peer: SocketAddr) -> String {
    format!("svcc-flow backend={local} src={peer}\n")
}

/// Parses an answer: (backend, source seen by the backend).
pub fn parse_answer(s: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = s.trim().strip_prefix("svcc-flow ")?;
    let mut backend = None;
    let mut src = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("backend=") {
            backend = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("src=") {
            src = v.parse().ok();
        }
    }
    Some((backend?, src?))
}

enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A running server; stops (and closes every socket) on drop.
pub struct Server {
    stop: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// `binds`: (namespace, addresses) — each address is served on every port in `ports`.
    pub fn start(
        binds: &[(String, Vec<std::net::IpAddr>)],
        ports: &[u16],
    ) -> Result<Server, String> {
        let socks: Vec<Sock> = std::thread::scope(|s| {
            s.spawn(|| {
                let mut v = Vec::new();
                for (ns, addrs) in binds {
                    netns::enter(ns)?;
                    for a in addrs {
                        for p in ports {
                            let sa = SocketAddr::new(*a, *p);
                            let t = TcpListener::bind(sa)
                                .map_err(|e| format!("{ns}: bind tcp {sa}: {e}"))?;
                            t.set_nonblocking(true).map_err(|e| e.to_string())?;
                            v.push(Sock::Tcp(t));
                            let u = UdpSocket::bind(sa)
                                .map_err(|e| format!("{ns}: bind udp {sa}: {e}"))?;
                            u.set_nonblocking(true).map_err(|e| e.to_string())?;
                            v.push(Sock::Udp(u));
                        }
                    }
                }
                Ok::<_, String>(v)
            })
            .join()
            .unwrap_or_else(|_| Err("server setup thread panicked".to_string()))
        })?;
        let (stop_tx, stop_rx) = UnixStream::pair().map_err(|e| e.to_string())?;
        let thread = std::thread::Builder::new()
            .name("flow-server".into())
            .spawn(move || serve(socks, stop_rx))
            .map_err(|e| e.to_string())?;
        Ok(Server {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
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
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds.last().map(|p| p.revents != 0).unwrap_or(true) {
            return; // stop requested (the other end was closed)
        }
        for (i, s) in socks.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            fds[i].revents = 0;
            match s {
                Sock::Tcp(l) => {
                    while let Ok((mut c, peer)) = l.accept() {
                        let _ = c.set_nonblocking(false);
                        if let Ok(local) = c.local_addr() {
                            let _ = c.write_all(answer(local, peer).as_bytes());
                        }
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
