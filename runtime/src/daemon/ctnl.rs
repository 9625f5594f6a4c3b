//! Conntrack over netlink (NETLINK_NETFILTER, subsystem ctnetlink): dump the UDP entries of one
//! family (IPCTNL_MSG_CT_GET + NLM_F_DUMP, filtered in the kernel when it can) and delete chosen
//! entries (IPCTNL_MSG_CT_DELETE, by original tuple *and* id, so an entry that was replaced by a
//! new one with the same tuple is never touched).
//!
//! No `unsafe`: the socket is nix's (safe wrappers over socket/bind/send/recv/setsockopt), and
//! messages are built and parsed as plain bytes here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

pub const IPPROTO_UDP: u8 = 17;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Deletes sent per `send` (each gets its own acknowledgement).
const DELETE_CHUNK: usize = 128;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry, as much of it as svcc looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub family: u8,
    pub orig: Tuple,
    pub reply: Tuple,
    pub id: Option<u32>,
    pub zone: Option<u16>,
    pub status: u32,
}

/// A ctnetlink socket in the caller's network namespace.
pub struct CtSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    /// Whether the kernel accepted a CTA_FILTER on dumps (None: not tried yet).
    kernel_filter: Option<bool>,
}

impl CtSocket {
    pub fn open() -> io::Result<CtSocket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        // Never hang a sync on a lost answer: a timed-out read is an error (retried next sync).
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::from(libc_timeval(Duration::from_secs(5))),
        )?;
        Ok(CtSocket {
            fd,
            seq: 1,
            buf: vec![0; 1 << 16],
            kernel_filter: None,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Every UDP entry of `family` (AF_INET / AF_INET6).
    pub fn dump_udp(&mut self, family: u8) -> io::Result<Vec<Entry>> {
        if self.kernel_filter != Some(false) {
            match self.dump(family, true) {
                Ok(v) => {
                    self.kernel_filter = Some(true);
                    return Ok(v);
                }
                // Kernels without CTA_FILTER (< 5.8) refuse it: filter here instead.
                Err(e) if self.kernel_filter.is_none() && is_filter_refusal(&e) => {
                    self.kernel_filter = Some(false);
                }
                Err(e) => return Err(e),
            }
        }
        let mut v = self.dump(family, false)?;
        v.retain(|e| e.orig.proto == IPPROTO_UDP);
        Ok(v)
    }

    fn dump(&mut self, family: u8, filter: bool) -> io::Result<Vec<Entry>> {
        let seq = self.next_seq();
        let mut m = Msg::new(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
        );
        if filter {
            let t = m.nest(CTA_TUPLE_ORIG);
            let p = m.nest(CTA_TUPLE_PROTO);
            m.attr(CTA_PROTO_NUM, &[IPPROTO_UDP]);
            m.end_nest(p);
            m.end_nest(t);
            let f = m.nest(CTA_FILTER);
            m.attr(
                CTA_FILTER_ORIG_FLAGS,
                &CTA_FILTER_F_CTA_PROTO_NUM.to_be_bytes(),
            );
            m.end_nest(f);
        }
        send(self.fd.as_raw_fd(), &m.finish(), MsgFlags::empty())?;
        let mut out = Vec::new();
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            for msg in messages(&self.buf[..n]) {
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = ack_errno(msg.payload);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    _ => {
                        if let Some(e) = parse_entry(msg.payload) {
                            out.push(e);
                        }
                    }
                }
            }
        }
    }

    /// Deletes the entries; returns how many the kernel deleted (entries already gone are not
    /// errors and not counted).
    pub fn delete(&mut self, entries: &[&Entry]) -> io::Result<usize> {
        let mut deleted = 0;
        for chunk in entries.chunks(DELETE_CHUNK) {
            let mut batch = Vec::new();
            let mut pending = std::collections::HashSet::new();
            for e in chunk {
                let seq = self.next_seq();
                pending.insert(seq);
                batch.extend_from_slice(&delete_msg(e, seq));
            }
            send(self.fd.as_raw_fd(), &batch, MsgFlags::empty())?;
            let mut first_err = None;
            while !pending.is_empty() {
                let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
                for msg in messages(&self.buf[..n]) {
                    if msg.ty != NLMSG_ERROR || !pending.remove(&msg.seq) {
                        continue;
                    }
                    match ack_errno(msg.payload) {
                        0 => deleted += 1,
                        e if e == libc_enoent() => {}
                        e => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(io::Error::from_raw_os_error(e));
            }
        }
        Ok(deleted)
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as nix::libc::time_t,
        tv_usec: d.subsec_micros() as nix::libc::suseconds_t,
    }
}

fn is_filter_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EINVAL | nix::errno::Errno::EOPNOTSUPP)
    )
}

/// The delete request for one entry: original tuple, id (and zone when it has one).
pub fn delete_msg(e: &Entry, seq: u32) -> Vec<u8> {
    let mut m = Msg::new(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        e.family,
    );
    let t = m.nest(CTA_TUPLE_ORIG);
    let ip = m.nest(CTA_TUPLE_IP);
    match (e.orig.src, e.orig.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            m.attr(CTA_IP_V4_SRC, &s.octets());
            m.attr(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            m.attr(CTA_IP_V6_SRC, &v6(s).octets());
            m.attr(CTA_IP_V6_DST, &v6(d).octets());
        }
    }
    m.end_nest(ip);
    let p = m.nest(CTA_TUPLE_PROTO);
    m.attr(CTA_PROTO_NUM, &[e.orig.proto]);
    m.attr(CTA_PROTO_SRC_PORT, &e.orig.sport.to_be_bytes());
    m.attr(CTA_PROTO_DST_PORT, &e.orig.dport.to_be_bytes());
    m.end_nest(p);
    m.end_nest(t);
    if let Some(z) = e.zone {
        m.attr(CTA_ZONE, &z.to_be_bytes());
    }
    if let Some(id) = e.id {
        m.attr(CTA_ID, &id.to_be_bytes());
    }
    m.finish()
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// A netlink message under construction (header + nfgenmsg + attributes).
struct Msg {
    b: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32, family: u8) -> Msg {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        b.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
        Msg { b }
    }
    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.b.extend_from_slice(&(len as u16).to_ne_bytes());
        self.b.extend_from_slice(&ty.to_ne_bytes());
        self.b.extend_from_slice(data);
        self.pad();
    }
    fn nest(&mut self, ty: u16) -> usize {
        let at = self.b.len();
        self.b.extend_from_slice(&0u16.to_ne_bytes());
        self.b.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }
    fn end_nest(&mut self, at: usize) {
        let len = (self.b.len() - at) as u16;
        self.b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn pad(&mut self) {
        while !self.b.len().is_multiple_of(4) {
            self.b.push(0);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.b.len() as u32;
        self.b[0..4].copy_from_slice(&len.to_ne_bytes());
        self.b
    }
}

struct NlMsg<'a> {
    ty: u16,
    seq: u32,
    /// After the netlink header.
    payload: &'a [u8],
}

fn messages(mut b: &[u8]) -> impl Iterator<Item = NlMsg<'_>> {
    std::iter::from_fn(move || {
        if b.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > b.len() {
            return None;
        }
        let m = NlMsg {
            ty: u16::from_ne_bytes(b[4..6].try_into().unwrap()),
            seq: u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            payload: &b[16..len],
        };
        b = &b[align4(len).min(b.len())..];
        Some(m)
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The errno of an NLMSG_ERROR payload (0 = acknowledgement).
fn ack_errno(p: &[u8]) -> i32 {
    p.get(0..4)
        .map(|b| -i32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// Attributes (type without flags, data).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(b[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(b[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, data))
    })
}

fn be16(d: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(0..2)?.try_into().ok()?))
}
fn be32(d: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(0..4)?.try_into().ok()?))
}

fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for (ty, d) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (t, a) in attrs(d) {
                    let addr = match (t, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(a).ok()?))
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?))
                        }
                        _ => continue,
                    };
                    if t == CTA_IP_V4_SRC || t == CTA_IP_V6_SRC {
                        src = Some(addr);
                    } else {
                        dst = Some(addr);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (t, a) in attrs(d) {
                    match t {
                        CTA_PROTO_NUM => proto = a.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = be16(a)?,
                        CTA_PROTO_DST_PORT => dport = be16(a)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        sport,
        dport,
    })
}

/// Parses one IPCTNL_MSG_CT_NEW message of a dump (nfgenmsg + attributes).
pub fn parse_entry(p: &[u8]) -> Option<Entry> {
    let family = *p.first()?;
    let (mut orig, mut reply, mut id, mut zone, mut status) = (None, None, None, None, 0);
    for (ty, d) in attrs(p.get(4..)?) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_tuple(d),
            CTA_TUPLE_REPLY => reply = parse_tuple(d),
            CTA_ID => id = be32(d),
            CTA_ZONE => zone = be16(d),
            CTA_STATUS => status = be32(d).unwrap_or(0),
            _ => {}
        }
    }
    Some(Entry {
        family,
        orig: orig?,
        reply: reply?,
        id,
        zone,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            family: AF_INET,
            orig: Tuple {
                src: "10.0.0.9".parse().unwrap(),
                dst: "172.30.0.10".parse().unwrap(),
                proto: IPPROTO_UDP,
                sport: 40000,
                dport: 53,
            },
            reply: Tuple {
                src: "10.0.1.1".parse().unwrap(),
                dst: "10.0.0.9".parse().unwrap(),
                proto: IPPROTO_UDP,
                sport: 5353,
                dport: 40000,
            },
            id: Some(0xdead_beef),
            zone: None,
            status: 0,
        }
    }

    /// A delete request carries the same attributes a dump gives: parse it back.
    #[test]
    fn delete_message_round_trips() {
        let e = entry();
        let m = delete_msg(&e, 7);
        let msgs: Vec<_> = messages(&m).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(
            msgs[0].ty,
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        );
        let p = parse_tuple(
            attrs(&msgs[0].payload[4..])
                .find(|(t, _)| *t == CTA_TUPLE_ORIG)
                .unwrap()
                .1,
        )
        .unwrap();
        assert_eq!(p, e.orig);
        let id = attrs(&msgs[0].payload[4..]).find(|(t, _)| *t == CTA_ID);
        assert_eq!(be32(id.unwrap().1), Some(0xdead_beef));
    }

    #[test]
    fn entry_parses() {
        // Build an entry message the way the kernel lays it out: both tuples, id.
        let e = entry();
        let mut m = Msg::new(0, 0, 1, AF_INET);
        for (ty, t) in [(CTA_TUPLE_ORIG, e.orig), (CTA_TUPLE_REPLY, e.reply)] {
            let n = m.nest(ty);
            let ip = m.nest(CTA_TUPLE_IP);
            if let (IpAddr::V4(s), IpAddr::V4(d)) = (t.src, t.dst) {
                m.attr(CTA_IP_V4_SRC, &s.octets());
                m.attr(CTA_IP_V4_DST, &d.octets());
            }
            m.end_nest(ip);
            let p = m.nest(CTA_TUPLE_PROTO);
            m.attr(CTA_PROTO_NUM, &[t.proto]);
            m.attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            m.attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
            m.end_nest(p);
            m.end_nest(n);
        }
        m.attr(CTA_ID, &0xdead_beefu32.to_be_bytes());
        let b = m.finish();
        let got = parse_entry(&b[16..]).unwrap();
        assert_eq!(got, e);
    }
}
