//! The IPVS generic-netlink client (family "IPVS", include/uapi/linux/ip_vs.h).
//!
//! Written by hand over `nl.rs` rather than on a crate: the only IPVS crate
//! (`netlink-packet-ipvs` 0.0.1) is a single, unmaintained release whose destination code
//! panics on forward methods other than masquerade and mixes port byte orders, and the
//! generic-netlink crates (`netlink-packet-generic`, `neli`) would only give us the 4-byte
//! genl header and family lookup — which is a dozen lines here — while the IPVS attributes
//! (about 30, listed below) would still be ours to write. One framing for nf_tables, genl and
//! rtnetlink keeps the parsing (fuzzed in `nl.rs`) in one place.

use std::io;
use std::net::IpAddr;

use super::sock::{self, Answer, KernelError, Sock, NLM_F_DUMP};
use crate::nl;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const IPVS_GENL_VERSION: u8 = 1;

const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;
const CMD_SET_CONFIG: u8 = 12;
const CMD_GET_CONFIG: u8 = 13;
const CMD_GET_INFO: u8 = 15;

const ATTR_SERVICE: u16 = 1;
const ATTR_DEST: u16 = 2;
const ATTR_TIMEOUT_TCP: u16 = 4;
const ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const ATTR_TIMEOUT_UDP: u16 = 6;

const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;
const SVC_PE_NAME: u16 = 11;

const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_PERSIST_CONNS: u16 = 9;
const DEST_ADDR_FAMILY: u16 = 11;

const INFO_VERSION: u16 = 1;

/// `IP_VS_SVC_F_PERSISTENT`.
pub const F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_HASHED`: kernel-internal, masked out when reading back.
const F_HASHED: u32 = 0x2;
/// `IP_VS_SVC_F_SCHED1` (`sh-fallback` / `mh-fallback`).
pub const F_SCHED1: u32 = 0x8;
/// `IP_VS_SVC_F_SCHED2` (`sh-port` / `mh-port`).
pub const F_SCHED2: u32 = 0x10;
/// `IP_VS_SVC_F_SCHED3`.
pub const F_SCHED3: u32 = 0x20;
/// Forwarding method NAT (`IP_VS_CONN_F_MASQ`).
pub const FWD_MASQ: u32 = 0;

/// What identifies a virtual server: (address, protocol number, port). Address family follows
/// the address. Fwmark services (which svcc never makes) are listed as [`Listed::Fwmark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcKey {
    pub addr: IpAddr,
    pub proto: u16,
    pub port: u16,
}

impl std::fmt::Display for SvcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            6 => "TCP",
            17 => "UDP",
            132 => "SCTP",
            _ => "proto",
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{p} {a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "{p} [{a}]:{}", self.port),
        }
    }
}

/// The settable parameters of a virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcParams {
    pub sched: String,
    /// `IP_VS_SVC_F_*` (without HASHED).
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with [`F_PERSISTENT`]).
    pub timeout: u32,
    /// Persistence granularity as a prefix length (32 / 128: per client address).
    pub netmask: u8,
}

/// A real server as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub addr: IpAddr,
    pub port: u16,
    pub fwd: u32,
    pub weight: u32,
    pub u_thresh: u32,
    pub l_thresh: u32,
    pub active: u32,
    pub inactive: u32,
    pub persist: u32,
}

/// One virtual server of a GET_SERVICE dump, everything the kernel says about it except its
/// statistics (which change with traffic): what "byte-identical" means for foreign services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Addr {
        key: SvcKey,
        params: SvcParams,
        netmask: u32,
        pe: Option<String>,
    },
    Fwmark {
        af: u16,
        mark: u32,
        params: SvcParams,
    },
}

/// An IPVS request the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Kernel(KernelError),
    #[error("the IPVS netlink family is not available: load the module with `modprobe ip_vs`")]
    NoFamily,
}

pub struct Ipvs {
    sock: Sock,
    family: u16,
}

fn af_of(a: &IpAddr) -> u16 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u16,
        IpAddr::V6(_) => libc::AF_INET6 as u16,
    }
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The kernel lists addresses as a 16-byte `union nf_inet_addr`.
fn parse_addr(af: u16, d: &[u8]) -> Option<IpAddr> {
    if af == libc::AF_INET as u16 {
        let o: [u8; 4] = d.get(0..4)?.try_into().ok()?;
        Some(IpAddr::from(o))
    } else if af == libc::AF_INET6 as u16 {
        let o: [u8; 16] = d.get(0..16)?.try_into().ok()?;
        Some(IpAddr::from(o))
    } else {
        None
    }
}

/// The service nest's identifying members.
fn put_key(out: &mut Vec<u8>, k: &SvcKey) {
    nl::attr(out, SVC_AF, &af_of(&k.addr).to_ne_bytes());
    nl::attr(out, SVC_PROTOCOL, &k.proto.to_ne_bytes());
    nl::attr(out, SVC_ADDR, &addr_bytes(&k.addr));
    nl::attr(out, SVC_PORT, &k.port.to_be_bytes());
}

fn put_params(out: &mut Vec<u8>, k: &SvcKey, p: &SvcParams) {
    sock::attr_str(out, SVC_SCHED_NAME, &p.sched);
    let mut fl = p.flags.to_ne_bytes().to_vec();
    fl.extend_from_slice(&u32::MAX.to_ne_bytes()); // mask: every flag is ours to set
    nl::attr(out, SVC_FLAGS, &fl);
    nl::attr(out, SVC_TIMEOUT, &p.timeout.to_ne_bytes());
    // IPv4: a mask (all ones, one address); IPv6: a prefix length the kernel reads raw.
    let nm: u32 = if k.addr.is_ipv4() {
        // IPv4 reads it as __be32: the mask in network order.
        u32::from_ne_bytes(
            (u32::MAX
                .checked_shl(32 - u32::from(p.netmask.min(32)))
                .unwrap_or(0))
            .to_be_bytes(),
        )
    } else {
        u32::from(p.netmask)
    };
    nl::attr(out, SVC_NETMASK, &nm.to_ne_bytes());
}

fn put_dest(out: &mut Vec<u8>, addr: &IpAddr, port: u16, weight: Option<u32>) {
    nl::attr(out, DEST_ADDR, &addr_bytes(addr));
    nl::attr(out, DEST_PORT, &port.to_be_bytes());
    nl::attr(out, DEST_ADDR_FAMILY, &af_of(addr).to_ne_bytes());
    if let Some(w) = weight {
        nl::attr(out, DEST_FWD_METHOD, &FWD_MASQ.to_ne_bytes());
        nl::attr(out, DEST_WEIGHT, &w.to_ne_bytes());
        nl::attr(out, DEST_U_THRESH, &0u32.to_ne_bytes());
        nl::attr(out, DEST_L_THRESH, &0u32.to_ne_bytes());
    }
}

fn parse_flags(d: &[u8]) -> u32 {
    sock::get_u32(d).unwrap_or(0) & !F_HASHED
}

fn parse_service(payload: &[u8]) -> Option<Listed> {
    let nest = nl::nft_attrs(payload).find(|(t, _)| *t == ATTR_SERVICE)?.1;
    let (mut af, mut proto, mut addr, mut port, mut mark) = (0u16, 0u16, None, 0u16, None);
    let mut params = SvcParams {
        sched: String::new(),
        flags: 0,
        timeout: 0,
        netmask: 0,
    };
    let (mut netmask, mut pe) = (0u32, None);
    let mut addr_raw: &[u8] = &[];
    for (t, d) in nl::Attrs(nest) {
        match t {
            SVC_AF => af = sock::get_u16(d)?,
            SVC_PROTOCOL => proto = sock::get_u16(d)?,
            SVC_ADDR => addr_raw = d,
            SVC_PORT => port = u16::from_be_bytes(d.get(0..2)?.try_into().ok()?),
            SVC_FWMARK => mark = sock::get_u32(d),
            SVC_SCHED_NAME => params.sched = sock::get_str(d),
            SVC_FLAGS => params.flags = parse_flags(d),
            SVC_TIMEOUT => params.timeout = sock::get_u32(d)?,
            SVC_NETMASK => netmask = sock::get_u32(d)?,
            SVC_PE_NAME => pe = Some(sock::get_str(d)),
            _ => {}
        }
    }
    if !addr_raw.is_empty() {
        addr = parse_addr(af, addr_raw);
    }
    params.netmask = if af == libc::AF_INET as u16 {
        u32::from_be_bytes(netmask.to_ne_bytes()).count_ones() as u8
    } else {
        netmask.min(128) as u8
    };
    match (mark, addr) {
        (Some(mark), _) if mark != 0 => Some(Listed::Fwmark { af, mark, params }),
        (_, Some(addr)) => Some(Listed::Addr {
            key: SvcKey { addr, proto, port },
            params,
            netmask,
            pe,
        }),
        _ => None,
    }
}

fn parse_dest(svc_af: u16, payload: &[u8]) -> Option<Dest> {
    let nest = nl::nft_attrs(payload).find(|(t, _)| *t == ATTR_DEST)?.1;
    let mut af = svc_af;
    let mut raw: &[u8] = &[];
    let mut d = Dest {
        addr: IpAddr::from([0u8; 4]),
        port: 0,
        fwd: 0,
        weight: 0,
        u_thresh: 0,
        l_thresh: 0,
        active: 0,
        inactive: 0,
        persist: 0,
    };
    for (t, v) in nl::Attrs(nest) {
        match t {
            DEST_ADDR => raw = v,
            DEST_PORT => d.port = u16::from_be_bytes(v.get(0..2)?.try_into().ok()?),
            DEST_FWD_METHOD => d.fwd = sock::get_u32(v)?,
            DEST_WEIGHT => d.weight = sock::get_u32(v)?,
            DEST_U_THRESH => d.u_thresh = sock::get_u32(v)?,
            DEST_L_THRESH => d.l_thresh = sock::get_u32(v)?,
            DEST_ACTIVE_CONNS => d.active = sock::get_u32(v)?,
            DEST_INACT_CONNS => d.inactive = sock::get_u32(v)?,
            DEST_PERSIST_CONNS => d.persist = sock::get_u32(v)?,
            DEST_ADDR_FAMILY => af = sock::get_u16(v)?,
            _ => {}
        }
    }
    d.addr = parse_addr(af, raw)?;
    Some(d)
}

/// The IPVS timeouts (seconds) of this network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

impl Ipvs {
    /// Opens a generic-netlink socket and resolves the "IPVS" family. If the family is not
    /// registered, loads `ip_vs` with `modprobe` once (as kube-proxy does) and asks again.
    pub fn open() -> Result<Ipvs, GenlError> {
        let mut sock = Sock::open(mnl::Bus::Generic)?;
        let family = match resolve(&mut sock)? {
            Some(f) => f,
            None => {
                let _ = std::process::Command::new("modprobe")
                    .arg("ip_vs")
                    .stderr(std::process::Stdio::null())
                    .status();
                resolve(&mut sock)?.ok_or(GenlError::NoFamily)?
            }
        };
        Ok(Ipvs { sock, family })
    }

    /// Requests sent so far (each is one IPVS operation or dump).
    pub fn sent(&self) -> u64 {
        self.sock.sent
    }

    fn call(&mut self, cmd: u8, flags: u16, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Answer> {
        let mut m = Vec::new();
        let s = self
            .sock
            .begin(&mut m, self.family, flags, &[cmd, IPVS_GENL_VERSION, 0, 0]);
        body(&mut m);
        nl::end(&mut m, s);
        self.sock.call(&m)
    }

    fn exec(&mut self, cmd: u8, body: impl FnOnce(&mut Vec<u8>)) -> Result<(), GenlError> {
        match self.call(cmd, nl::NLM_F_ACK, body)? {
            Ok(_) => Ok(()),
            Err(e) => Err(GenlError::Kernel(e)),
        }
    }

    /// The IPVS version the kernel reports (GET_INFO), e.g. 0x010201 for 1.2.1.
    pub fn version(&mut self) -> Result<u32, GenlError> {
        let r = self.call(CMD_GET_INFO, nl::NLM_F_ACK, |_| {})?;
        let r = r.map_err(GenlError::Kernel)?;
        Ok(r.iter()
            .flat_map(|(_, p)| nl::nft_attrs(p))
            .find(|(t, _)| *t == INFO_VERSION)
            .and_then(|(_, d)| sock::get_u32(d))
            .unwrap_or(0))
    }

    /// Every virtual server of this network namespace (GET_SERVICE dump).
    pub fn services(&mut self) -> Result<Vec<Listed>, GenlError> {
        let r = self.call(CMD_GET_SERVICE, NLM_F_DUMP, |_| {})?;
        let r = r.map_err(GenlError::Kernel)?;
        Ok(r.iter().filter_map(|(_, p)| parse_service(p)).collect())
    }

    /// The real servers of virtual server `k` (GET_DEST dump).
    pub fn dests(&mut self, k: &SvcKey) -> Result<Vec<Dest>, GenlError> {
        let r = self.call(CMD_GET_DEST, NLM_F_DUMP, |m| {
            sock::nest(m, ATTR_SERVICE, |m| put_key(m, k))
        })?;
        let r = r.map_err(GenlError::Kernel)?;
        let af = af_of(&k.addr);
        Ok(r.iter().filter_map(|(_, p)| parse_dest(af, p)).collect())
    }

    /// The real servers of a fwmark service (for the foreign-state fingerprint).
    pub fn fwmark_dests(&mut self, af: u16, mark: u32) -> Result<Vec<Dest>, GenlError> {
        let r = self.call(CMD_GET_DEST, NLM_F_DUMP, |m| {
            sock::nest(m, ATTR_SERVICE, |m| {
                nl::attr(m, SVC_AF, &af.to_ne_bytes());
                nl::attr(m, SVC_FWMARK, &mark.to_ne_bytes());
            })
        })?;
        let r = r.map_err(GenlError::Kernel)?;
        Ok(r.iter().filter_map(|(_, p)| parse_dest(af, p)).collect())
    }

    pub fn new_service(&mut self, k: &SvcKey, p: &SvcParams) -> Result<(), GenlError> {
        self.exec(CMD_NEW_SERVICE, |m| {
            sock::nest(m, ATTR_SERVICE, |m| {
                put_key(m, k);
                put_params(m, k, p);
            })
        })
    }

    /// Changes scheduler/flags/timeout in place: the VIP keeps serving (no delete + add).
    pub fn set_service(&mut self, k: &SvcKey, p: &SvcParams) -> Result<(), GenlError> {
        self.exec(CMD_SET_SERVICE, |m| {
            sock::nest(m, ATTR_SERVICE, |m| {
                put_key(m, k);
                put_params(m, k, p);
            })
        })
    }

    /// Deletes a virtual server and its real servers.
    pub fn del_service(&mut self, k: &SvcKey) -> Result<(), GenlError> {
        self.exec(CMD_DEL_SERVICE, |m| {
            sock::nest(m, ATTR_SERVICE, |m| put_key(m, k))
        })
    }

    /// Adds (`set == false`) or re-weights (`set == true`) a masquerading real server.
    pub fn put_dest(
        &mut self,
        k: &SvcKey,
        addr: &IpAddr,
        port: u16,
        weight: u32,
        set: bool,
    ) -> Result<(), GenlError> {
        let cmd = if set { CMD_SET_DEST } else { CMD_NEW_DEST };
        self.exec(cmd, |m| {
            sock::nest(m, ATTR_SERVICE, |m| put_key(m, k));
            sock::nest(m, ATTR_DEST, |m| put_dest(m, addr, port, Some(weight)));
        })
    }

    pub fn del_dest(&mut self, k: &SvcKey, addr: &IpAddr, port: u16) -> Result<(), GenlError> {
        self.exec(CMD_DEL_DEST, |m| {
            sock::nest(m, ATTR_SERVICE, |m| put_key(m, k));
            sock::nest(m, ATTR_DEST, |m| put_dest(m, addr, port, None));
        })
    }

    /// The namespace's connection timeouts (GET_CONFIG).
    pub fn timeouts(&mut self) -> Result<Timeouts, GenlError> {
        let r = self.call(CMD_GET_CONFIG, nl::NLM_F_ACK, |_| {})?;
        let r = r.map_err(GenlError::Kernel)?;
        let mut t = Timeouts::default();
        for (_, p) in &r {
            for (a, d) in nl::nft_attrs(p) {
                let v = sock::get_u32(d).unwrap_or(0);
                match a {
                    ATTR_TIMEOUT_TCP => t.tcp = v,
                    ATTR_TIMEOUT_TCP_FIN => t.tcp_fin = v,
                    ATTR_TIMEOUT_UDP => t.udp = v,
                    _ => {}
                }
            }
        }
        Ok(t)
    }

    /// SET_CONFIG; a 0 keeps the kernel's value (kube-proxy's `ConfigureTimeouts`).
    pub fn set_timeouts(&mut self, t: Timeouts) -> Result<(), GenlError> {
        self.exec(CMD_SET_CONFIG, |m| {
            for (a, v) in [
                (ATTR_TIMEOUT_TCP, t.tcp),
                (ATTR_TIMEOUT_TCP_FIN, t.tcp_fin),
                (ATTR_TIMEOUT_UDP, t.udp),
            ] {
                if v > 0 {
                    nl::attr(m, a, &v.to_ne_bytes());
                }
            }
        })
    }
}

/// The numeric id of the "IPVS" generic-netlink family, or None if it is not registered.
fn resolve(sock: &mut Sock) -> Result<Option<u16>, GenlError> {
    let mut m = Vec::new();
    let s = sock.begin(
        &mut m,
        GENL_ID_CTRL,
        nl::NLM_F_ACK,
        &[CTRL_CMD_GETFAMILY, 1, 0, 0],
    );
    sock::attr_str(&mut m, CTRL_ATTR_FAMILY_NAME, "IPVS");
    nl::end(&mut m, s);
    match sock.call(&m)? {
        Err(e) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(GenlError::Kernel(e)),
        Ok(r) => Ok(r
            .iter()
            .flat_map(|(_, p)| nl::nft_attrs(p))
            .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, d)| sock::get_u16(d))),
    }
}
