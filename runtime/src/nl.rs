//! Netlink framing in safe Rust: the few messages libnftnl does not build for us (batch
//! begin/end with a generation id, GETGEN, GETTABLE) and the parsing of the kernel's replies.

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_CAPPED: u16 = 0x100;
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFNL_BATCH_GENID: u16 = 1;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_DELSETELEM: u16 = 14;
pub const NFT_MSG_NEWGEN: u16 = 15;
pub const NFT_MSG_GETGEN: u16 = 16;

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_USERDATA: u16 = 6;
pub const NFTA_GEN_ID: u16 = 1;

pub const NLMSGERR_ATTR_MSG: u16 = 1;
pub const NLMSGERR_ATTR_OFFS: u16 = 2;

/// The nf_tables message type `m` as it goes on the wire.
pub fn nft_type(m: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m
}

const HDR: usize = 16;
const NFGEN: usize = 4;

/// Starts a message in `out`: `nlmsghdr` + `nfgenmsg`. Returns its offset for [`end`].
pub fn begin(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `end`
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    start
}

pub fn attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + (align4(len) - len), 0);
}

pub fn end(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One message of a reply.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

/// Attributes of an nf_tables message payload (after its `nfgenmsg`).
pub fn nft_attrs(payload: &[u8]) -> Attrs<'_> {
    Attrs(payload.get(NFGEN..).unwrap_or(&[]))
}

/// Splits a datagram into messages; stops at the first malformed header.
pub fn msgs(mut buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < HDR {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < HDR || len > buf.len() {
            return None;
        }
        let m = Msg {
            ty: u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[HDR..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(m)
    })
}

/// Iterator over netlink attributes: (type without flag bits, payload).
#[derive(Clone, Copy)]
pub struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(self.0[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(self.0[2..4].try_into().unwrap()) & 0x3fff;
        if len < 4 || len > self.0.len() {
            return None;
        }
        let data = &self.0[4..len];
        self.0 = &self.0[align4(len).min(self.0.len())..];
        Some((ty, data))
    }
}

/// A decoded `NLMSG_ERROR`: errno (0 = ACK), the seq it answers, extended-ACK text/offset.
#[derive(Debug, Clone)]
pub struct Ack {
    pub errno: i32,
    pub seq: u32,
    pub msg: Option<String>,
    /// Offset, in the refused message, of the attribute the kernel blamed.
    pub offset: Option<u32>,
}

pub fn parse_ack(m: &Msg) -> Option<Ack> {
    if m.ty != NLMSG_ERROR || m.payload.len() < 4 + HDR {
        return None;
    }
    let err = i32::from_ne_bytes(m.payload[0..4].try_into().unwrap());
    let orig = &m.payload[4..4 + HDR];
    let seq = u32::from_ne_bytes(orig[8..12].try_into().unwrap());
    let orig_len = u32::from_ne_bytes(orig[0..4].try_into().unwrap()) as usize;
    let mut ack = Ack {
        // Saturating: the kernel sends -errno, but a reply is untrusted input (i32::MIN).
        errno: err.saturating_neg(),
        seq,
        msg: None,
        offset: None,
    };
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the original payload is left out (NLM_F_CAPPED).
        let skip = if m.flags & NLM_F_CAPPED != 0 {
            4 + HDR
        } else {
            4 + align4(orig_len)
        };
        for (ty, d) in Attrs(m.payload.get(skip..).unwrap_or(&[])) {
            match ty {
                NLMSGERR_ATTR_MSG => {
                    let s = d.split(|b| *b == 0).next().unwrap_or(&[]);
                    ack.msg = Some(String::from_utf8_lossy(s).into_owned());
                }
                NLMSGERR_ATTR_OFFS if d.len() >= 4 => {
                    ack.offset = Some(u32::from_ne_bytes(d[0..4].try_into().unwrap()));
                }
                _ => {}
            }
        }
    }
    Some(ack)
}

/// Walks the `nftnl_udata` TLVs (u8 type, u8 len) of a user-data blob.
pub fn udata(mut d: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        if d.len() < 2 {
            return None;
        }
        let (ty, len) = (d[0], d[1] as usize);
        if d.len() < 2 + len {
            return None;
        }
        let v = &d[2..2 + len];
        d = &d[2 + len..];
        Some((ty, v))
    })
}

/// Appends one user-data TLV.
pub fn put_udata(out: &mut Vec<u8>, ty: u8, v: &[u8]) {
    debug_assert!(v.len() <= 255);
    out.push(ty);
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_msg(err: i32, flags: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let s = begin(&mut out, NLMSG_ERROR, flags, 7, 0, 0);
        out.truncate(s + HDR); // an NLMSG_ERROR has no nfgenmsg: errno, then the request header
        out.extend_from_slice(&err.to_ne_bytes());
        let orig = begin(&mut out, nft_type(NFT_MSG_NEWRULE), NLM_F_REQUEST, 7, 2, 0);
        out.truncate(orig + HDR);
        end(&mut out, orig);
        end(&mut out, s);
        out
    }

    #[test]
    fn ack_errno() {
        let buf = error_msg(-17, 0);
        let m = msgs(&buf).next().unwrap();
        let a = parse_ack(&m).unwrap();
        assert_eq!((a.errno, a.seq), (17, 7));
    }

    /// Found by `fuzz/` (target `netlink`): `-err` overflowed on i32::MIN (a panic in debug).
    #[test]
    fn ack_with_the_most_negative_errno_does_not_panic() {
        let buf = error_msg(i32::MIN, NLM_F_ACK_TLVS);
        let m = msgs(&buf).next().unwrap();
        assert_eq!(parse_ack(&m).unwrap().errno, i32::MAX);
    }
}
