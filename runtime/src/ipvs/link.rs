//! rtnetlink for svcc's dummy interface: find or create it, list every interface's addresses,
//! add and remove addresses on it, delete it. Raw messages over `nl.rs` (the same framing as
//! the IPVS client) rather than the `rtnetlink` crate, which is async-only (tokio) and would
//! bring a second netlink stack for five messages. Only the interface named [`DUMMY`] is ever
//! changed.

use std::io;
use std::net::IpAddr;

use super::sock::{self, KernelError, Sock, NLM_F_DUMP, NLM_F_EXCL};
use crate::nl;

/// svcc's dummy interface (kube-proxy's is `kube-ipvs0`).
pub const DUMMY: &str = "svcc-ipvs0";

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{what}: {err}")]
    Kernel { what: String, err: KernelError },
}

/// One address of some interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IfAddr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
}

pub struct Links {
    sock: Sock,
}

fn ifinfomsg(index: i32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn ifaddrmsg(addr: &IpAddr, index: u32) -> [u8; 8] {
    let (fam, plen, flags) = match addr {
        IpAddr::V4(_) => (libc::AF_INET as u8, 32, 0),
        // No duplicate address detection: the address must answer at once (a dummy
        // interface is NOARP, the kernel skips DAD anyway; this says so explicitly).
        IpAddr::V6(_) => (libc::AF_INET6 as u8, 128, IFA_F_NODAD),
    };
    let mut h = [0u8; 8];
    h[0] = fam;
    h[1] = plen;
    h[2] = flags;
    h[3] = 0; // RT_SCOPE_UNIVERSE
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl Links {
    pub fn open() -> io::Result<Links> {
        Ok(Links {
            sock: Sock::open(mnl::Bus::Route)?,
        })
    }

    pub fn sent(&self) -> u64 {
        self.sock.sent
    }

    /// The index of interface `name`, or None.
    pub fn index(&mut self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut m = Vec::new();
        let s = self
            .sock
            .begin(&mut m, RTM_GETLINK, nl::NLM_F_ACK, &ifinfomsg(0));
        sock::attr_str(&mut m, IFLA_IFNAME, name);
        nl::end(&mut m, s);
        match self.sock.call(&m)? {
            Err(e) if e.errno == libc::ENODEV => Ok(None),
            Err(err) => Err(LinkError::Kernel {
                what: format!("looking up interface {name}"),
                err,
            }),
            Ok(r) => Ok(r
                .iter()
                .find(|(t, p)| *t == RTM_NEWLINK && p.len() >= 16)
                .map(|(_, p)| i32::from_ne_bytes(p[4..8].try_into().unwrap()) as u32)),
        }
    }

    /// The name of interface `index` (for error messages).
    pub fn name(&mut self, index: u32) -> Result<Option<String>, LinkError> {
        let mut m = Vec::new();
        let s = self
            .sock
            .begin(&mut m, RTM_GETLINK, nl::NLM_F_ACK, &ifinfomsg(index as i32));
        nl::end(&mut m, s);
        match self.sock.call(&m)? {
            Err(e) if e.errno == libc::ENODEV => Ok(None),
            Err(err) => Err(LinkError::Kernel {
                what: format!("looking up interface #{index}"),
                err,
            }),
            Ok(r) => Ok(r
                .iter()
                .filter(|(t, p)| *t == RTM_NEWLINK && p.len() >= 16)
                .flat_map(|(_, p)| nl::Attrs(&p[16..]))
                .find(|(t, _)| *t == IFLA_IFNAME)
                .map(|(_, d)| sock::get_str(d))),
        }
    }

    /// The index of [`DUMMY`], creating it (kind dummy, left down as kube-proxy does: its
    /// addresses still get local routes) if it does not exist.
    pub fn ensure_dummy(&mut self) -> Result<u32, LinkError> {
        if let Some(i) = self.index(DUMMY)? {
            return Ok(i);
        }
        let mut m = Vec::new();
        let s = self.sock.begin(
            &mut m,
            RTM_NEWLINK,
            nl::NLM_F_ACK | nl::NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0),
        );
        sock::attr_str(&mut m, IFLA_IFNAME, DUMMY);
        sock::nest(&mut m, IFLA_LINKINFO, |m| {
            sock::attr_str(m, IFLA_INFO_KIND, "dummy")
        });
        nl::end(&mut m, s);
        match self.sock.call(&m)? {
            Ok(_) => {}
            // Created by a concurrent svcc between the look-up and here: fine.
            Err(e) if e.errno == libc::EEXIST => {}
            Err(err) => {
                let hint = if err.errno == libc::EOPNOTSUPP {
                    " (is the `dummy` module available? `modprobe dummy`)"
                } else {
                    ""
                };
                return Err(LinkError::Kernel {
                    what: format!("creating interface {DUMMY} (kind dummy){hint}"),
                    err,
                });
            }
        }
        self.index(DUMMY)?.ok_or_else(|| {
            LinkError::Io(io::Error::other(format!("{DUMMY} vanished after creation")))
        })
    }

    /// Deletes [`DUMMY`] (and with it its addresses); Ok(false) if it did not exist.
    pub fn delete_dummy(&mut self) -> Result<bool, LinkError> {
        let Some(i) = self.index(DUMMY)? else {
            return Ok(false);
        };
        let mut m = Vec::new();
        let s = self
            .sock
            .begin(&mut m, RTM_DELLINK, nl::NLM_F_ACK, &ifinfomsg(i as i32));
        nl::end(&mut m, s);
        match self.sock.call(&m)? {
            Ok(_) => Ok(true),
            Err(e) if e.errno == libc::ENODEV => Ok(false),
            Err(err) => Err(LinkError::Kernel {
                what: format!("deleting interface {DUMMY}"),
                err,
            }),
        }
    }

    /// Every address of every interface (one RTM_GETADDR dump).
    pub fn addresses(&mut self) -> Result<Vec<IfAddr>, LinkError> {
        let mut m = Vec::new();
        let s = self.sock.begin(&mut m, RTM_GETADDR, NLM_F_DUMP, &[0u8; 8]);
        nl::end(&mut m, s);
        let r = self.sock.call(&m)?.map_err(|err| LinkError::Kernel {
            what: "listing addresses".into(),
            err,
        })?;
        let mut out = Vec::new();
        for (t, p) in &r {
            if *t != RTM_NEWADDR || p.len() < 8 {
                continue;
            }
            let (fam, prefix) = (p[0], p[1]);
            let index = u32::from_ne_bytes(p[4..8].try_into().unwrap());
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 sends only IFA_ADDRESS.
            let (mut local, mut address) = (None, None);
            for (a, d) in nl::Attrs(&p[8..]) {
                let ip = match (fam as i32, d.len()) {
                    (libc::AF_INET, 4) => IpAddr::from(<[u8; 4]>::try_from(d).unwrap()),
                    (libc::AF_INET6, 16) => IpAddr::from(<[u8; 16]>::try_from(d).unwrap()),
                    _ => continue,
                };
                match a {
                    IFA_LOCAL => local = Some(ip),
                    IFA_ADDRESS => address = Some(ip),
                    _ => {}
                }
            }
            if let Some(addr) = local.or(address) {
                out.push(IfAddr {
                    index,
                    addr,
                    prefix,
                });
            }
        }
        Ok(out)
    }

    fn addr_msg(&mut self, ty: u16, flags: u16, index: u32, a: &IpAddr) -> Vec<u8> {
        let mut m = Vec::new();
        let s = self.sock.begin(&mut m, ty, flags, &ifaddrmsg(a, index));
        if a.is_ipv4() {
            nl::attr(&mut m, IFA_LOCAL, &octets(a));
        }
        nl::attr(&mut m, IFA_ADDRESS, &octets(a));
        nl::end(&mut m, s);
        m
    }

    /// Adds `a` (/32 or /128) to interface `index`; an address already there is fine.
    pub fn add_addr(&mut self, index: u32, a: &IpAddr) -> Result<(), LinkError> {
        let m = self.addr_msg(
            RTM_NEWADDR,
            nl::NLM_F_ACK | nl::NLM_F_CREATE | NLM_F_EXCL,
            index,
            a,
        );
        match self.sock.call(&m)? {
            Ok(_) => Ok(()),
            Err(e) if e.errno == libc::EEXIST => Ok(()),
            Err(err) => Err(LinkError::Kernel {
                what: format!("adding address {a} to {DUMMY}"),
                err,
            }),
        }
    }

    /// Removes `a` from interface `index`; an address already gone is fine.
    pub fn del_addr(&mut self, index: u32, a: &IpAddr) -> Result<(), LinkError> {
        let m = self.addr_msg(RTM_DELADDR, nl::NLM_F_ACK, index, a);
        match self.sock.call(&m)? {
            Ok(_) => Ok(()),
            Err(e) if e.errno == libc::EADDRNOTAVAIL || e.errno == libc::ENXIO => Ok(()),
            Err(err) => Err(LinkError::Kernel {
                what: format!("removing address {a} from {DUMMY}"),
                err,
            }),
        }
    }
}
