//! The netfilter netlink socket: generation id, table look-ups, and sending one batch in one
//! `sendmsg` and reading the kernel's verdict on it.
//!
//! Only failing messages are answered (no per-message ACK), plus one ACK that closes the answer:
//! on BATCH_END since Linux 6.10, else on the last message. `NETLINK_CAP_ACK` keeps error
//! messages small and the receive buffer is sized for one error per message, so the answer
//! cannot overflow; if it does anyway (ENOBUFS) the outcome is reported as unknown, never as
//! success or failure.

use std::io;
use std::os::fd::RawFd;

use crate::batch::Batch;
use crate::nl::{self, Ack};
use crate::sys;

const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;

/// Messages of an answer: (type, payload).
type Replies = Vec<(u16, Vec<u8>)>;

pub struct Conn {
    _sock: mnl::Socket,
    fd: RawFd,
    seq: u32,
    buf: Vec<u8>,
}

/// What the kernel said about a batch.
pub enum Outcome {
    Committed,
    /// The generation id was stale (ERESTART on BATCH_BEGIN): nothing applied.
    Stale,
    /// Refused: every error the kernel reported (nothing applied).
    Refused(Vec<Ack>),
    /// The answer was lost (ENOBUFS): applied or not, we cannot tell from here.
    Unknown,
}

impl Conn {
    pub fn open() -> io::Result<Conn> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let fd = sys::fd_of(&sock);
        sys::set_int_opt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
        sys::set_int_opt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Conn {
            _sock: sock,
            fd,
            seq,
            buf: vec![0; 1 << 16],
        })
    }

    pub fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    /// Sends one request and collects its answer until the ACK (or error) for its seq.
    fn request(&mut self, msg: &[u8], seq: u32) -> io::Result<(Replies, i32)> {
        sys::send_iov(self.fd, &[msg])?;
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
                    continue; // a late answer to something else
                }
                if let Some(a) = nl::parse_ack(&m) {
                    return Ok((replies, a.errno));
                }
                if m.ty == nl::NLMSG_DONE {
                    return Ok((replies, 0));
                }
                replies.push((m.ty, m.payload.to_vec()));
            }
        }
    }

    /// The ruleset's generation id (NFT_MSG_GETGEN).
    pub fn genid(&mut self) -> io::Result<u32> {
        let seq = self.next_seq(1);
        let mut m = Vec::new();
        let s = nl::begin(
            &mut m,
            nl::nft_type(nl::NFT_MSG_GETGEN),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            seq,
            0,
            0,
        );
        nl::end(&mut m, s);
        let (replies, err) = self.request(&m, seq)?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        for (ty, payload) in &replies {
            if *ty == nl::nft_type(nl::NFT_MSG_NEWGEN) {
                for (a, d) in nl::nft_attrs(payload) {
                    if a == nl::NFTA_GEN_ID && d.len() == 4 {
                        return Ok(u32::from_be_bytes(d.try_into().unwrap()));
                    }
                }
            }
        }
        Err(io::Error::other("no generation id in the kernel's answer"))
    }

    /// The user data of table `family name`, or None if the table does not exist.
    pub fn table_udata(&mut self, family: u16, name: &str) -> io::Result<Option<Vec<u8>>> {
        let seq = self.next_seq(1);
        let mut m = Vec::new();
        let s = nl::begin(
            &mut m,
            nl::nft_type(nl::NFT_MSG_GETTABLE),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            seq,
            family as u8,
            0,
        );
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        nl::attr(&mut m, nl::NFTA_TABLE_NAME, &n);
        nl::end(&mut m, s);
        let (replies, err) = self.request(&m, seq)?;
        match err {
            0 => {}
            e if e == libc::ENOENT => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
        for (ty, payload) in &replies {
            if *ty == nl::nft_type(nl::NFT_MSG_NEWTABLE) {
                let ud = nl::nft_attrs(payload)
                    .find(|(t, _)| *t == nl::NFTA_TABLE_USERDATA)
                    .map(|(_, d)| d.to_vec());
                return Ok(Some(ud.unwrap_or_default()));
            }
        }
        Ok(None)
    }

    /// Raises the socket buffers to fit `bytes` to send and `messages` possible errors.
    fn size_buffers(&mut self, bytes: usize, messages: usize) -> io::Result<()> {
        let want_snd = (bytes + (1 << 16)).min(i32::MAX as usize / 2) as i32;
        if sys::get_int_opt(self.fd, libc::SOL_SOCKET, libc::SO_SNDBUF)? < want_snd {
            sys::set_int_opt(self.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want_snd)?;
        }
        // An error costs ~1 KiB of skb in the receive queue whatever its payload.
        let want_rcv = (messages.saturating_mul(2048) + (1 << 20)).min(1 << 29) as i32;
        if sys::get_int_opt(self.fd, libc::SOL_SOCKET, libc::SO_RCVBUF)? < want_rcv {
            sys::set_int_opt(self.fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want_rcv)?;
        }
        Ok(())
    }

    /// Sends the batch in one `sendmsg` and reads the kernel's answer.
    ///
    /// The kernel processes a netlink message synchronously in `sendmsg`, so a GETGEN sent right
    /// after the batch is answered after every error of the batch: its answer closes the read,
    /// whether or not the kernel acknowledges BATCH_END (it does so only for a committed batch,
    /// since Linux 6.10), and tells the generation after the commit.
    /// `after_send` runs between the batch and the probe (the applier re-joins the event group
    /// there, so that the probe's generation id tells whether any commit slipped by unseen).
    pub fn commit(
        &mut self,
        batch: &mut Batch,
        after_send: impl FnOnce(),
    ) -> io::Result<(Outcome, Option<u32>)> {
        let end_seq = batch.finish(true);
        let begin_seq = batch.begin_seq;
        self.size_buffers(batch.bytes(), batch.messages)?;
        let pages = batch.pages();
        if let Some(path) = std::env::var_os("SVCC_DUMP_BATCH") {
            // Debug aid: the raw batch, for decoding with a netlink dissector.
            let _ = std::fs::write(path, pages.concat());
        }
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let sent = sys::send_iov(self.fd, &pages)?;
        if sent != total {
            return Err(io::Error::other(format!(
                "sendmsg sent {sent} of {total} bytes"
            )));
        }
        after_send();
        let probe = self.next_seq(1);
        let mut m = Vec::new();
        let s = nl::begin(
            &mut m,
            nl::nft_type(nl::NFT_MSG_GETGEN),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            probe,
            0,
            0,
        );
        nl::end(&mut m, s);
        sys::send_iov(self.fd, &[&m])?;

        let mut errors = Vec::new();
        let mut begin_err: Option<Ack> = None;
        let mut genid = None;
        let mut lost = None;
        'read: loop {
            let n = match sys::recv(self.fd, &mut self.buf, false) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Some answers were dropped: keep reading up to the probe, then say "unknown".
                    lost = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for m in nl::msgs(&self.buf[..n.min(self.buf.len())]) {
                if m.seq == probe {
                    if m.ty == nl::nft_type(nl::NFT_MSG_NEWGEN) {
                        genid = nl::nft_attrs(m.payload)
                            .find(|(t, d)| *t == nl::NFTA_GEN_ID && d.len() == 4)
                            .map(|(_, d)| u32::from_be_bytes(d.try_into().unwrap()));
                    } else if nl::parse_ack(&m).is_some() {
                        break 'read;
                    }
                    continue;
                }
                let Some(ack) = nl::parse_ack(&m) else {
                    continue;
                };
                if ack.errno == 0 {
                    continue; // the BATCH_END acknowledgement
                }
                if ack.seq == begin_seq {
                    begin_err = Some(ack);
                } else if ack.seq.wrapping_sub(begin_seq) <= end_seq.wrapping_sub(begin_seq) {
                    errors.push(ack);
                }
            }
        }
        let outcome = match (begin_err, lost) {
            (_, Some(_)) => Outcome::Unknown,
            (Some(b), None) if b.errno == libc::ERESTART && errors.is_empty() => Outcome::Stale,
            (Some(b), None) => {
                errors.push(b);
                Outcome::Refused(errors)
            }
            (None, None) if errors.is_empty() => Outcome::Committed,
            (None, None) => Outcome::Refused(errors),
        };
        Ok((outcome, genid))
    }
}

const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_DROP_MEMBERSHIP: i32 = 2;
const NFNLGRP_NFTABLES: i32 = 7;

/// A second socket subscribed to nf_tables events: every commit by anyone else shows up here
/// as messages naming the tables it touched. Left during our own commits (their events would
/// only cost time), re-joined before the post-commit generation probe.
pub struct Monitor {
    _sock: mnl::Socket,
    fd: RawFd,
    buf: Vec<u8>,
    joined: bool,
}

impl Monitor {
    pub fn open() -> io::Result<Monitor> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let fd = sys::fd_of(&sock);
        // Room for the events of a large foreign change; an overflow just means "unknown".
        sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
        let mut m = Monitor {
            _sock: sock,
            fd,
            buf: vec![0; 1 << 16],
            joined: false,
        };
        m.join()?;
        Ok(m)
    }

    pub fn join(&mut self) -> io::Result<()> {
        if !self.joined {
            sys::set_int_opt(
                self.fd,
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                NFNLGRP_NFTABLES,
            )?;
            self.joined = true;
        }
        Ok(())
    }

    pub fn leave(&mut self) -> io::Result<()> {
        if self.joined {
            sys::set_int_opt(
                self.fd,
                SOL_NETLINK,
                NETLINK_DROP_MEMBERSHIP,
                NFNLGRP_NFTABLES,
            )?;
            self.joined = false;
        }
        Ok(())
    }

    /// Reads every pending event; true if one touched a table in `watched` (or events were
    /// lost, or the monitor was not listening).
    pub fn drain(&mut self, watched: &[(u8, &str)]) -> io::Result<bool> {
        let mut touched = !self.joined;
        loop {
            let n = match sys::recv(self.fd, &mut self.buf, true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(touched),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    touched = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if n > self.buf.len() {
                touched = true; // truncated: cannot tell what it was about
                continue;
            }
            for m in nl::msgs(&self.buf[..n]) {
                if m.ty >> 8 != nl::NFNL_SUBSYS_NFTABLES || m.ty & 0xff == nl::NFT_MSG_NEWGEN {
                    continue;
                }
                let family = m.payload.first().copied().unwrap_or(0);
                // Attribute 1 is the table's name in every nf_tables object message.
                let table = nl::nft_attrs(m.payload)
                    .find(|(t, _)| *t == 1)
                    .map(|(_, d)| d);
                let hit = table.is_some_and(|t| {
                    let t = t.split(|b| *b == 0).next().unwrap_or(&[]);
                    watched
                        .iter()
                        .any(|(f, n)| *f == family && n.as_bytes() == t)
                });
                touched |= hit;
            }
        }
    }
}
