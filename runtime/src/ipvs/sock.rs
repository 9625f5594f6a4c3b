//! A request/answer netlink socket for generic netlink and rtnetlink, on the framing of
//! `nl.rs` and the socket calls of `sys.rs` (no new `unsafe`).
//!
//! Unlike nf_tables these buses have no batches: every request is applied on its own and
//! acknowledged on its own (`NLM_F_ACK`). The socket counts the requests it sends, so tests
//! and benchmarks can tell how many kernel messages a sync cost.

use std::io;
use std::os::fd::RawFd;

use crate::nl;
use crate::sys;

const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;

/// A refused request: errno plus the kernel's extended-ACK text, if any.
#[derive(Debug, Clone)]
pub struct KernelError {
    pub errno: i32,
    pub msg: Option<String>,
}

impl KernelError {
    pub fn io(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.io())?;
        if let Some(m) = &self.msg {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

/// The answer to one request: the messages (type, payload after the 16-byte header), or the
/// kernel's refusal. `Err(io)` is a socket failure.
pub type Answer = Result<Vec<(u16, Vec<u8>)>, KernelError>;

pub struct Sock {
    _sock: mnl::Socket,
    fd: RawFd,
    seq: u32,
    buf: Vec<u8>,
    /// Requests sent since creation (every one is one kernel operation).
    pub sent: u64,
}

impl Sock {
    pub fn open(bus: mnl::Bus) -> io::Result<Sock> {
        let sock = mnl::Socket::new(bus)?;
        let fd = sys::fd_of(&sock);
        sys::set_int_opt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
        sys::set_int_opt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        Ok(Sock {
            _sock: sock,
            fd,
            seq: 1,
            // Dump datagrams are at most 32 KiB (or one page more); 1 MiB leaves room.
            buf: vec![0; 1 << 20],
            sent: 0,
        })
    }

    /// Starts a message: `nlmsghdr` with a fresh seq, then `fixed` (the family header).
    /// Returns its start for [`nl::end`].
    pub fn begin(&mut self, out: &mut Vec<u8>, ty: u16, flags: u16, fixed: &[u8]) -> usize {
        self.seq = self.seq.wrapping_add(1);
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&(flags | nl::NLM_F_REQUEST).to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(fixed);
        start
    }

    /// Sends the message just built (with [`Sock::begin`]) and reads its whole answer: the
    /// ACK, or every part of a dump until `NLMSG_DONE`.
    pub fn call(&mut self, msg: &[u8]) -> io::Result<Answer> {
        let seq = self.seq;
        sys::send_iov(self.fd, &[msg])?;
        self.sent += 1;
        let mut replies = Vec::new();
        loop {
            let n = sys::recv(self.fd, &mut self.buf, false)?;
            if n > self.buf.len() {
                return Err(io::Error::other(
                    "netlink reply larger than the receive buffer",
                ));
            }
            for m in nl::msgs(&self.buf[..n]) {
                if m.seq != seq {
                    continue; // a late answer to an earlier request
                }
                if let Some(a) = nl::parse_ack(&m) {
                    if a.errno != 0 {
                        return Ok(Err(KernelError {
                            errno: a.errno,
                            msg: a.msg,
                        }));
                    }
                    return Ok(Ok(replies));
                }
                if m.ty == nl::NLMSG_DONE {
                    // A dump's DONE carries an int error (0 or -errno).
                    if let Some(e) = m.payload.get(0..4) {
                        let e = i32::from_ne_bytes(e.try_into().unwrap());
                        if e < 0 {
                            return Ok(Err(KernelError {
                                errno: e.saturating_neg(),
                                msg: None,
                            }));
                        }
                    }
                    return Ok(Ok(replies));
                }
                replies.push((m.ty, m.payload.to_vec()));
            }
        }
    }
}

/// Appends a nested attribute: `f` writes its members.
pub fn nest(out: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    const NLA_F_NESTED: u16 = 0x8000;
    let start = out.len();
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A NUL-terminated string attribute.
pub fn attr_str(out: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    nl::attr(out, ty, &v);
}

pub fn get_u16(d: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(d.get(0..2)?.try_into().ok()?))
}

pub fn get_u32(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.get(0..4)?.try_into().ok()?))
}

pub fn get_str(d: &[u8]) -> String {
    let s = d.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8_lossy(s).into_owned()
}
