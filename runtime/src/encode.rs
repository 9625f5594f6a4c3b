//! The object model as nf_tables netlink messages, byte for byte what `nft -f` sends for the
//! rendered text (checked with `nft --debug=netlink` / strace and by the namespace tests):
//! registers, 4-byte padding of concatenations, byte orders, set user data (nft's type hints),
//! interval ends, verdict data, timeouts in ms, dynset and NAT registers and flags.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::net::IpAddr;

use ipnet::IpNet;
use nftnl::nftnl_sys as s;

use crate::batch::Batch;
use crate::model::*;
use crate::nl::{self, put_udata};
use crate::sys::{cstr, Elem, Expr, Kind, Obj};

// Constants from <linux/netfilter.h> / <linux/netfilter/nf_tables.h> / nft's datatype ids.
const NFPROTO_IPV4: u16 = 2;
const NFPROTO_IPV6: u16 = 10;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_CONCAT: u32 = 0x80;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_LOOKUP_F_INV: u32 = 0x1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_MARK: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_BITWISE_BOOL: u32 = 0;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const NFTA_FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const NFT_NG_RANDOM: u32 = 1;
const NFT_BYTEORDER_HTON: u32 = 1;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const IP_CT_NEW_BIT: u32 = 1 << 3;
const IPS_DST_NAT: u32 = 1 << 5;
// nft's expression types and payload protocol/field ids, as its typeof user data names them.
const EXPR_VERDICT: u32 = 1;
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;
const PROTO_DESC_TH: u32 = 11;
const PROTO_DESC_IP: u32 = 12;
const PROTO_DESC_IP6: u32 = 13;
const THDR_DPORT: u32 = 2;
const IPHDR_DADDR: u32 = 12;
const IP6HDR_DADDR: u32 = 9;
const BYTEORDER_HOST_ENDIAN: u32 = 1;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
// nftnl_udata types nft writes (libnftnl/udata.h).
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_TYPEOF: u8 = 4;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_SET_COMMENT: u8 = 7;
const UDATA_ELEM_COMMENT: u8 = 0;
const UDATA_ELEM_FLAGS: u8 = 1;
const NFTNL_SET_ELEM_F_INTERVAL_OPEN: u32 = 1;
const UDATA_COMMENT: u8 = 0; // table, chain and rule comments
/// svcc's own table user-data entry (nft ignores types it does not know).
pub const UDATA_TABLE_SVCC: u8 = 0xf0;

/// Element payload budget per message: the element-list attribute must stay under 64 KiB.
const ELEM_BUDGET: usize = 48 * 1024;

pub type EncResult<T> = Result<T, String>;

pub fn family_code(f: Family) -> u16 {
    match f {
        Family::Ip => NFPROTO_IPV4,
        Family::Ip6 => NFPROTO_IPV6,
    }
}

/// A comment exactly as nft stores it after parsing the rendered text.
pub fn comment_text(c: &str) -> std::borrow::Cow<'_, str> {
    if c.len() <= crate::model::MAX_COMMENT && !c.contains(['"', '\n']) {
        return c.into(); // what quote() would keep, without its allocations
    }
    let q = crate::model::quote(c);
    q[1..q.len() - 1].to_string().into()
}

/// A small value on the stack (keys and data are at most 64 bytes: 16 registers).
#[derive(Clone, Copy)]
struct Buf<const N: usize> {
    b: [u8; N],
    n: usize,
}

impl<const N: usize> Buf<N> {
    fn new() -> Self {
        Buf { b: [0; N], n: 0 }
    }
    fn of(s: &[u8]) -> Self {
        let mut b = Self::new();
        b.push(s);
        b
    }
    /// Appends; the callers check lengths against N before (concatenations ≤ 64 bytes).
    fn push(&mut self, s: &[u8]) {
        self.b[self.n..self.n + s.len()].copy_from_slice(s);
        self.n += s.len();
    }
    fn pad4(&mut self) {
        self.n = pad4(self.n);
    }
}

impl<const N: usize> std::ops::Deref for Buf<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

type Val = Buf<64>;

fn comment_udata(ty: u8, c: &str) -> Vec<u8> {
    let t = comment_text(c);
    let mut out = Vec::with_capacity(t.len() + 3);
    out.push(ty);
    out.push((t.len() + 1) as u8);
    out.extend_from_slice(t.as_bytes());
    out.push(0);
    out
}

fn type_id(t: DataType) -> u32 {
    match t {
        DataType::Ipv4Addr => 7,
        DataType::Ipv6Addr => 8,
        DataType::InetProto => 12,
        DataType::InetService => 13,
        DataType::Integer => 4,
    }
}

fn concat_type(ts: &[DataType]) -> u32 {
    ts.iter().fold(0, |acc, t| (acc << 6) | type_id(*t))
}

fn concat_len(ts: &[DataType]) -> usize {
    if ts.len() == 1 {
        ts[0].len()
    } else {
        ts.iter().map(|t| pad4(t.len())).sum()
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// nft's typeof user data of one expression: its type and its own attributes.
fn typeof_expr_udata(out: &mut Vec<u8>, t: DataType) {
    let (expr, attrs): (u32, &[u32]) = match t {
        DataType::Ipv4Addr => (EXPR_PAYLOAD, &[PROTO_DESC_IP, IPHDR_DADDR]),
        DataType::Ipv6Addr => (EXPR_PAYLOAD, &[PROTO_DESC_IP6, IP6HDR_DADDR]),
        DataType::InetProto => (EXPR_META, &[NFT_META_L4PROTO]),
        DataType::InetService => (EXPR_PAYLOAD, &[PROTO_DESC_TH, THDR_DPORT]),
        // numgen random (type 1), modulus 1, offset 0
        DataType::Integer => (EXPR_NUMGEN, &[NFT_NG_RANDOM, 1, 0]),
    };
    put_udata(out, 0, &expr.to_ne_bytes());
    let mut data = Vec::new();
    for (i, a) in attrs.iter().enumerate() {
        put_udata(&mut data, i as u8, &a.to_ne_bytes());
    }
    put_udata(out, 1, &data);
}

/// The typeof user data of a key or data declared with `typeof` (exprs as in
/// [`DataType::typeof_expr`]); a concatenation lists its expressions in order.
fn typeof_udata(ts: &[DataType]) -> Vec<u8> {
    let mut u = Vec::new();
    if let [t] = ts {
        typeof_expr_udata(&mut u, *t);
        return u;
    }
    put_udata(&mut u, 0, &EXPR_CONCAT.to_ne_bytes());
    let mut list = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        let mut one = Vec::new();
        typeof_expr_udata(&mut one, *t);
        put_udata(&mut list, i as u8, &one);
    }
    put_udata(&mut u, 1, &list);
    u
}

/// The set user data nft writes: byte orders, typeof hints for concatenations (or the whole
/// typeof declaration of a set that needs one, see [`Set::uses_typeof`]), comment.
fn set_udata(st: &Set) -> Vec<u8> {
    let mut u = Vec::new();
    let typeof_ = st.uses_typeof();
    let order = |ts: &[DataType]| -> u32 {
        match ts {
            // A typeof expression has its own byte order: numgen and meta are host order.
            [DataType::Integer | DataType::InetProto] if typeof_ => BYTEORDER_HOST_ENDIAN,
            [t] if *t != DataType::InetProto => BYTEORDER_BIG_ENDIAN,
            _ => 0,
        }
    };
    put_udata(
        &mut u,
        UDATA_SET_KEYBYTEORDER,
        &order(&st.key).to_ne_bytes(),
    );
    if let Some(d) = &st.data {
        let o = match d {
            SetData::Verdict => 0,
            SetData::Values(v) => order(v),
        };
        put_udata(&mut u, UDATA_SET_DATABYTEORDER, &o.to_ne_bytes());
    }
    let concat_typeof = |u: &mut Vec<u8>, ty: u8| {
        let mut inner = Vec::new();
        put_udata(&mut inner, 0, &EXPR_CONCAT.to_ne_bytes());
        put_udata(&mut inner, 1, &[]);
        put_udata(u, ty, &inner);
    };
    if typeof_ {
        put_udata(&mut u, UDATA_SET_KEY_TYPEOF, &typeof_udata(&st.key));
        match &st.data {
            Some(SetData::Values(v)) => {
                put_udata(&mut u, UDATA_SET_DATA_TYPEOF, &typeof_udata(v));
            }
            Some(SetData::Verdict) => {
                let mut inner = Vec::new();
                put_udata(&mut inner, 0, &EXPR_VERDICT.to_ne_bytes());
                put_udata(&mut inner, 1, &[]);
                put_udata(&mut u, UDATA_SET_DATA_TYPEOF, &inner);
            }
            None => {}
        }
    } else {
        if st.key.len() > 1 {
            concat_typeof(&mut u, UDATA_SET_KEY_TYPEOF);
        }
        if let Some(SetData::Values(v)) = &st.data {
            if v.len() > 1 {
                concat_typeof(&mut u, UDATA_SET_DATA_TYPEOF);
            }
        }
    }
    if st.data.is_some() {
        put_udata(&mut u, UDATA_SET_DATA_INTERVAL, &0u32.to_ne_bytes());
    }
    if let Some(c) = &st.comment {
        let mut v = comment_text(c).into_owned().into_bytes();
        v.push(0);
        put_udata(&mut u, UDATA_SET_COMMENT, &v);
    }
    u
}

fn addr_bytes(a: &IpAddr) -> Val {
    match a {
        IpAddr::V4(a) => Val::of(&a.octets()),
        IpAddr::V6(a) => Val::of(&a.octets()),
    }
}

/// A big-endian value + 1, or None past the end of its range.
fn next_value(v: &[u8]) -> Option<Val> {
    let mut n = Val::of(v);
    for i in (0..n.n).rev() {
        let (b, carry) = n.b[i].overflowing_add(1);
        n.b[i] = b;
        if !carry {
            return Some(n);
        }
    }
    None
}

fn check_type(v: &Value, t: DataType, interval: bool) -> EncResult<()> {
    let ok = matches!(
        (v, t),
        (Value::Addr(IpAddr::V4(_)), DataType::Ipv4Addr)
            | (Value::Addr(IpAddr::V6(_)), DataType::Ipv6Addr)
            | (Value::Proto(_), DataType::InetProto)
            | (Value::Port(_), DataType::InetService)
            | (Value::Num(_), DataType::Integer)
    ) || (interval
        && matches!(
            (v, t),
            (Value::Prefix(IpNet::V4(_)), DataType::Ipv4Addr)
                | (Value::Prefix(IpNet::V6(_)), DataType::Ipv6Addr)
                | (Value::Range(..), DataType::Integer)
        ));
    if ok {
        Ok(())
    } else {
        Err(format!("value {v:?} does not fit type {}", t.keyword()))
    }
}

/// Which end of a range a value stands for.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Start,
    /// Last value of the range (pipapo key end).
    Last,
}

fn value_bytes(v: &Value, end: End) -> Val {
    match v {
        Value::Addr(a) => addr_bytes(a),
        Value::Prefix(p) => match end {
            End::Start => addr_bytes(&p.network()),
            End::Last => addr_bytes(&p.broadcast()),
        },
        Value::Proto(p) => Val::of(&[p.number()]),
        Value::Port(p) => Val::of(&p.to_be_bytes()),
        // numgen writes a host-endian u32.
        Value::Num(n) => Val::of(&n.to_ne_bytes()),
        // Interval sets compare keys as bytes: the rule turns numgen's value to network order
        // (see `Enc::load_key`), and so are the ranges' ends.
        Value::Range(a, b) => match end {
            End::Start => Val::of(&a.to_be_bytes()),
            End::Last => Val::of(&b.to_be_bytes()),
        },
    }
}

/// Key or data bytes: one value as is, a concatenation with each field padded to 4 bytes.
fn concat_bytes(vals: &[Value], types: &[DataType], interval: bool, end: End) -> EncResult<Val> {
    if vals.len() != types.len() {
        return Err(format!(
            "{} values for a {}-field type",
            vals.len(),
            types.len()
        ));
    }
    if concat_len(types) > 64 {
        return Err("value longer than 64 bytes".into());
    }
    let mut out = Val::new();
    for (v, t) in vals.iter().zip(types) {
        check_type(v, *t, interval)?;
        out.push(&value_bytes(v, end));
        if types.len() > 1 {
            out.pad4();
        }
    }
    Ok(out)
}

/// The 32-bit register slot `slot` as nft names it: 16-byte registers when aligned.
fn reg(slot: usize) -> u32 {
    if slot.is_multiple_of(4) {
        1 + (slot / 4) as u32
    } else {
        8 + slot as u32
    }
}

fn verdict_code(v: &Verdict) -> (u32, Option<&str>) {
    match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN as u32, None),
        Verdict::Jump(c) => (NFT_JUMP as u32, Some(c)),
        Verdict::Goto(c) => (NFT_GOTO as u32, Some(c)),
    }
}

const fn c(s: &'static [u8]) -> &'static CStr {
    match CStr::from_bytes_with_nul(s) {
        Ok(c) => c,
        Err(_) => panic!("not a C string"),
    }
}

/// Builds the messages of one table into a batch.
pub struct Enc<'b> {
    pub batch: &'b mut Batch,
    pub fam: Family,
    pub table: CString,
    /// Sets created in this batch: name -> transaction id (rules and elements refer to them by id).
    pub new_sets: HashMap<String, u32>,
    pub next_set_id: u32,
    /// Interval sets of this table: nft converts host-order fields of their lookup keys to
    /// network order (they compare keys as bytes).
    pub interval: std::collections::HashSet<String>,
}

impl<'b> Enc<'b> {
    pub fn new(batch: &'b mut Batch, fam: Family, table: &str) -> EncResult<Enc<'b>> {
        Ok(Enc {
            batch,
            fam,
            table: cstr(table)?,
            new_sets: HashMap::new(),
            next_set_id: 1,
            interval: Default::default(),
        })
    }

    fn famc(&self) -> u16 {
        family_code(self.fam)
    }

    fn push(&mut self, o: &Obj, msg: u16, flags: u16, op: usize, elems: bool) -> EncResult<usize> {
        self.batch
            .push(o, msg, self.famc(), flags, op, elems)
            .map_err(|n| format!("message of {n} bytes exceeds the 64 KiB netlink limit"))
    }

    fn table_obj(&self) -> Obj {
        let mut t = Obj::new(Kind::Table);
        t.str(s::NFTNL_TABLE_NAME, &self.table);
        t
    }

    /// `table F N` in a script: NEWTABLE without flags (creates it if absent, else no-op).
    pub fn ensure_table(&mut self, op: usize) -> EncResult<()> {
        let mut t = self.table_obj();
        t.u32(s::NFTNL_TABLE_FLAGS, 0);
        self.push(&t, nl::NFT_MSG_NEWTABLE, 0, op, false).map(drop)
    }

    pub fn del_table(&mut self, op: usize) -> EncResult<()> {
        let t = self.table_obj();
        self.push(&t, nl::NFT_MSG_DELTABLE, 0, op, false).map(drop)
    }

    pub fn add_table(&mut self, tb: &Table, marker: &[u8], op: usize) -> EncResult<()> {
        let mut t = self.table_obj();
        t.u32(s::NFTNL_TABLE_FLAGS, 0);
        let mut ud = match &tb.comment {
            Some(cm) => comment_udata(UDATA_COMMENT, cm),
            None => Vec::new(),
        };
        put_udata(&mut ud, UDATA_TABLE_SVCC, marker);
        t.bytes(s::NFTNL_TABLE_USERDATA, &ud);
        self.push(&t, nl::NFT_MSG_NEWTABLE, 0, op, false).map(drop)
    }

    pub fn add_chain(&mut self, ch: &Chain, op: usize) -> EncResult<()> {
        let mut o = Obj::new(Kind::Chain);
        o.str(s::NFTNL_CHAIN_TABLE, &self.table);
        o.str(s::NFTNL_CHAIN_NAME, &cstr(&ch.name)?);
        if let Some(b) = &ch.base {
            o.str(s::NFTNL_CHAIN_TYPE, &cstr(b.kind.keyword())?);
            let hook = match b.hook {
                Hook::Prerouting => 0,
                Hook::Input => 1,
                Hook::Forward => 2,
                Hook::Output => 3,
                Hook::Postrouting => 4,
            };
            o.u32(s::NFTNL_CHAIN_HOOKNUM, hook);
            o.i32(s::NFTNL_CHAIN_PRIO, b.priority);
            o.u32(s::NFTNL_CHAIN_POLICY, NF_ACCEPT);
        }
        if let Some(cm) = &ch.comment {
            o.bytes(s::NFTNL_CHAIN_USERDATA, &comment_udata(UDATA_COMMENT, cm));
        }
        self.push(&o, nl::NFT_MSG_NEWCHAIN, nl::NLM_F_CREATE, op, false)
            .map(drop)
    }

    /// `flush chain`: DELRULE naming only the chain.
    pub fn flush_chain(&mut self, chain: &str, op: usize) -> EncResult<()> {
        let mut o = Obj::new(Kind::Rule);
        o.str(s::NFTNL_RULE_TABLE, &self.table);
        o.str(s::NFTNL_RULE_CHAIN, &cstr(chain)?);
        self.push(&o, nl::NFT_MSG_DELRULE, 0, op, false).map(drop)
    }

    /// DELCHAIN: the kernel removes the chain's rules with it.
    pub fn del_chain(&mut self, chain: &str, op: usize) -> EncResult<()> {
        let mut o = Obj::new(Kind::Chain);
        o.str(s::NFTNL_CHAIN_TABLE, &self.table);
        o.str(s::NFTNL_CHAIN_NAME, &cstr(chain)?);
        self.push(&o, nl::NFT_MSG_DELCHAIN, 0, op, false).map(drop)
    }

    fn set_base(&self, st: &Set) -> EncResult<Obj> {
        let mut o = Obj::new(Kind::Set);
        o.str(s::NFTNL_SET_TABLE, &self.table);
        o.str(s::NFTNL_SET_NAME, &cstr(&st.name)?);
        Ok(o)
    }

    pub fn add_set(&mut self, st: &Set, op: usize) -> EncResult<()> {
        if st.key.is_empty() || concat_len(&st.key) > 64 {
            return Err(format!("set {}: key must have 1..=64 bytes", st.name));
        }
        let mut o = self.set_base(st)?;
        let mut flags = 0;
        if st.flags.interval {
            flags |= NFT_SET_INTERVAL;
            if st.key.len() > 1 {
                flags |= NFT_SET_CONCAT;
            }
        }
        if st.data.is_some() {
            flags |= NFT_SET_MAP;
        }
        if st.flags.timeout {
            flags |= NFT_SET_TIMEOUT;
        }
        if st.flags.dynamic {
            flags |= NFT_SET_EVAL;
        }
        o.u32(s::NFTNL_SET_FLAGS, flags);
        o.u32(s::NFTNL_SET_KEY_TYPE, concat_type(&st.key));
        o.u32(s::NFTNL_SET_KEY_LEN, concat_len(&st.key) as u32);
        match &st.data {
            None => {}
            Some(SetData::Verdict) => {
                o.u32(s::NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
                o.u32(s::NFTNL_SET_DATA_LEN, 0);
            }
            Some(SetData::Values(v)) => {
                if v.is_empty() || concat_len(v) > 64 {
                    return Err(format!("map {}: data must have 1..=64 bytes", st.name));
                }
                o.u32(s::NFTNL_SET_DATA_TYPE, concat_type(v));
                o.u32(s::NFTNL_SET_DATA_LEN, concat_len(v) as u32);
            }
        }
        let id = self.next_set_id;
        self.next_set_id += 1;
        o.u32(s::NFTNL_SET_ID, id);
        if let Some(n) = st.size {
            o.u32(s::NFTNL_SET_DESC_SIZE, n);
        }
        if st.flags.interval && st.key.len() > 1 {
            // Field widths of an interval concatenation (pipapo); not for hash sets (EINVAL).
            let f: Vec<u8> = st.key.iter().map(|t| t.len() as u8).collect();
            o.bytes(s::NFTNL_SET_DESC_CONCAT, &f);
        }
        if let Some(t) = st.timeout {
            o.u64(s::NFTNL_SET_TIMEOUT, u64::from(t) * 1000);
        }
        o.bytes(s::NFTNL_SET_USERDATA, &set_udata(st));
        self.push(&o, nl::NFT_MSG_NEWSET, nl::NLM_F_CREATE, op, false)?;
        self.new_sets.insert(st.name.clone(), id);
        Ok(())
    }

    /// The libnftnl elements of one model element (two for a range: start and end + 1).
    fn elem_objs(&self, st: &Set, e: &Element, del: bool) -> EncResult<Vec<(Elem, usize)>> {
        let interval = st.flags.interval;
        let key = concat_bytes(&e.key, &st.key, interval, End::Start)?;
        let mut first = Elem::default();
        let mut size = 48 + key.len();
        first.bytes(s::NFTNL_SET_ELEM_KEY, &key);
        let mut open = false;
        let mut end: Option<Elem> = None;
        if interval && st.key.len() > 1 {
            let ke = concat_bytes(&e.key, &st.key, interval, End::Last)?;
            size += ke.len() + 8;
            first.bytes(s::NFTNL_SET_ELEM_KEY_END, &ke);
        } else if interval {
            // One value or prefix: the range [start, last + 1), the end flagged INTERVAL_END;
            // a range reaching the top of its type is open (no end element).
            match next_value(&value_bytes(&e.key[0], End::Last)) {
                Some(n) => {
                    let mut en = Elem::default();
                    en.u32(s::NFTNL_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                    en.bytes(s::NFTNL_SET_ELEM_KEY, &n);
                    end = Some(en);
                    size += 48 + key.len();
                }
                None => open = true,
            }
        }
        if !del {
            match (&st.data, &e.data) {
                (None, None) => {}
                (Some(SetData::Verdict), Some(ElemData::Verdict(v))) => {
                    let (code, chain) = verdict_code(v);
                    first.u32(s::NFTNL_SET_ELEM_VERDICT, code);
                    if let Some(ch) = chain {
                        first.str(s::NFTNL_SET_ELEM_CHAIN, &cstr(ch)?);
                        size += ch.len() + 16;
                    }
                    size += 24;
                }
                (Some(SetData::Values(ts)), Some(ElemData::Values(vs))) => {
                    let d = concat_bytes(vs, ts, false, End::Start)?;
                    size += d.len() + 16;
                    first.bytes(s::NFTNL_SET_ELEM_DATA, &d);
                }
                _ => return Err("element data does not match the set's type".into()),
            }
            let mut ud = Vec::new();
            if let Some(cm) = &e.comment {
                ud = comment_udata(UDATA_ELEM_COMMENT, cm);
            }
            if open {
                put_udata(
                    &mut ud,
                    UDATA_ELEM_FLAGS,
                    &NFTNL_SET_ELEM_F_INTERVAL_OPEN.to_ne_bytes(),
                );
            }
            if !ud.is_empty() {
                size += ud.len() + 8;
                first.bytes(s::NFTNL_SET_ELEM_USERDATA, &ud);
            }
        }
        let mut v = vec![(first, size)];
        if let Some(en) = end {
            v.push((en, 56));
        }
        Ok(v)
    }

    /// NEWSETELEM / DELSETELEM messages for `elems`, split under the 64 KiB message limit.
    /// `zero_end`: prepend nft's `0 INTERVAL_END` element (full load of an interval set whose first
    /// range does not start at zero).
    pub fn elements(
        &mut self,
        st: &Set,
        elems: &[&Element],
        del: bool,
        op: usize,
    ) -> EncResult<()> {
        if elems.is_empty() {
            return Ok(());
        }
        let mut order: Vec<usize> = (0..elems.len()).collect();
        let single_interval = st.flags.interval && st.key.len() == 1;
        let mut zero_end = false;
        if single_interval {
            // nft sends ranges sorted, the first preceded by an end at 0 unless it starts there.
            let start = |e: &Element| e.key.first().map(|v| value_bytes(v, End::Start).to_vec());
            order.sort_by_cached_key(|&i| start(elems[i]));
            let first = start(elems[order[0]]);
            zero_end = !del
                && self.new_sets.contains_key(&st.name)
                && first.is_some_and(|a| !a.iter().all(|b| *b == 0));
        }
        let mk = |en: &Enc| -> EncResult<Obj> {
            let mut o = en.set_base(st)?;
            if let Some(id) = en.new_sets.get(&st.name) {
                o.u32(s::NFTNL_SET_ID, *id);
            }
            Ok(o)
        };
        let msg = if del {
            nl::NFT_MSG_DELSETELEM
        } else {
            nl::NFT_MSG_NEWSETELEM
        };
        let flags = if del { 0 } else { nl::NLM_F_CREATE };
        let mut cur = mk(self)?;
        let mut owners: Vec<usize> = Vec::new();
        let mut used = 0usize;
        if zero_end {
            let mut z = Elem::default();
            z.u32(s::NFTNL_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            z.bytes(s::NFTNL_SET_ELEM_KEY, &vec![0u8; st.key[0].len()]);
            cur.add_elem(z);
            owners.push(order[0]);
            used += 48;
        }
        for &i in &order {
            let parts = self
                .elem_objs(st, elems[i], del)
                .map_err(|e| format!("element {}: {e}", i))?;
            let size: usize = parts.iter().map(|p| p.1).sum();
            if used + size > ELEM_BUDGET && !owners.is_empty() {
                let full = std::mem::replace(&mut cur, mk(self)?);
                self.flush_elems(&full, msg, flags, op, std::mem::take(&mut owners))?;
                used = 0;
            }
            for (el, _) in parts {
                cur.add_elem(el);
                owners.push(i);
            }
            used += size;
        }
        if !owners.is_empty() {
            self.flush_elems(&cur, msg, flags, op, owners)?;
        }
        Ok(())
    }

    fn flush_elems(
        &mut self,
        o: &Obj,
        msg: u16,
        flags: u16,
        op: usize,
        owners: Vec<usize>,
    ) -> EncResult<()> {
        let len = self.push(o, msg, flags, op, true)?;
        // Index the element attributes so an extended-ACK offset can name the element.
        let m = self.batch.last_msg(len);
        let mut idx = Vec::with_capacity(owners.len());
        let mut off = 20usize; // nlmsghdr + nfgenmsg
        for (ty, d) in nl::Attrs(&m[20..]) {
            let here = off;
            off += nl::align4(d.len() + 4);
            if ty == 3 {
                // NFTA_SET_ELEM_LIST_ELEMENTS
                let mut eoff = here + 4;
                for (k, (_, ed)) in nl::Attrs(d).enumerate() {
                    if let Some(owner) = owners.get(k) {
                        idx.push((eoff as u32, *owner));
                    }
                    eoff += nl::align4(ed.len() + 4);
                }
            }
        }
        self.batch.set_last_elems(idx);
        Ok(())
    }

    pub fn add_rule(&mut self, chain: &str, r: &Rule, op: usize) -> EncResult<()> {
        // Each match or statement is at most ~8 expressions of < 100 bytes: stay far below the
        // 64 KiB message the scratch buffer is sized for (sys.rs, contract 2).
        if r.matches.len() + r.stmts.len() > 40 {
            return Err(format!(
                "{} matches and statements in one rule (at most 40)",
                r.matches.len() + r.stmts.len()
            ));
        }
        let mut o = Obj::new(Kind::Rule);
        o.str(s::NFTNL_RULE_TABLE, &self.table);
        o.str(s::NFTNL_RULE_CHAIN, &cstr(chain)?);
        for m in &r.matches {
            self.push_match(&mut o, m)?;
        }
        for st in &r.stmts {
            self.push_stmt(&mut o, st)?;
        }
        if let Some(v) = &r.verdict {
            o.add_expr(verdict_expr(v)?);
        }
        if let Some(cm) = &r.comment {
            o.bytes(s::NFTNL_RULE_USERDATA, &comment_udata(UDATA_COMMENT, cm));
        }
        self.push(
            &o,
            nl::NFT_MSG_NEWRULE,
            nl::NLM_F_CREATE | nl::NLM_F_APPEND,
            op,
            false,
        )
        .map(drop)
    }

    fn addr_len(&self) -> usize {
        match self.fam {
            Family::Ip => 4,
            Family::Ip6 => 16,
        }
    }

    fn field_len(&self, f: Field) -> usize {
        match f {
            Field::Saddr | Field::Daddr => self.addr_len(),
            Field::L4Proto => 1,
            Field::Dport => 2,
            Field::Numgen { .. } => 4,
        }
    }

    fn addr_offset(&self, f: Field) -> u32 {
        match (self.fam, f) {
            (Family::Ip, Field::Saddr) => 12,
            (Family::Ip, _) => 16,
            (Family::Ip6, Field::Saddr) => 8,
            (Family::Ip6, _) => 24,
        }
    }

    fn load(&self, f: Field, dreg: u32) -> Expr {
        match f {
            Field::Saddr | Field::Daddr => payload(
                NFT_PAYLOAD_NETWORK_HEADER,
                self.addr_offset(f),
                self.addr_len() as u32,
                dreg,
            ),
            Field::L4Proto => meta_load(NFT_META_L4PROTO, dreg),
            Field::Dport => payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, dreg),
            Field::Numgen { modulus, offset } => numgen(dreg, modulus, offset),
        }
    }

    /// Loads a (concatenated) key into consecutive 32-bit registers from slot 0; returns the slots used.
    fn load_key(&self, o: &mut Obj, key: &[Field], set: &str) -> EncResult<usize> {
        if key.is_empty() {
            return Err("empty key".into());
        }
        let interval = self.interval.contains(set);
        let pipapo = key.len() > 1 && interval;
        let mut slot = 0;
        for f in key {
            if matches!(f, Field::Numgen { modulus: 0, .. }) {
                return Err("numgen modulus 0".into());
            }
            o.add_expr(self.load(*f, reg(slot)));
            if pipapo && *f == Field::L4Proto {
                // Range matching compares bytes: nft turns the host-order protocol number into
                // network order (a no-op on one byte, but it is what nft sends and lists).
                o.add_expr(
                    Expr::new(c(b"byteorder\0"))
                        .u32(s::NFTNL_EXPR_BYTEORDER_SREG, reg(slot))
                        .u32(s::NFTNL_EXPR_BYTEORDER_DREG, reg(slot))
                        .u32(s::NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON)
                        .u32(s::NFTNL_EXPR_BYTEORDER_LEN, 1)
                        .u32(s::NFTNL_EXPR_BYTEORDER_SIZE, 2),
                );
            }
            if interval && matches!(f, Field::Numgen { .. }) {
                // numgen's host-order u32 to network order, as nft does (`byteorder … hton`).
                o.add_expr(
                    Expr::new(c(b"byteorder\0"))
                        .u32(s::NFTNL_EXPR_BYTEORDER_SREG, reg(slot))
                        .u32(s::NFTNL_EXPR_BYTEORDER_DREG, reg(slot))
                        .u32(s::NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON)
                        .u32(s::NFTNL_EXPR_BYTEORDER_LEN, 4)
                        .u32(s::NFTNL_EXPR_BYTEORDER_SIZE, 4),
                );
            }
            slot += pad4(self.field_len(*f)) / 4;
        }
        if slot > 16 {
            return Err("key does not fit the 16 registers".into());
        }
        Ok(slot)
    }

    fn set_ref(&self, name: &str) -> EncResult<(CString, Option<u32>)> {
        Ok((cstr(name)?, self.new_sets.get(name).copied()))
    }

    fn lookup(&self, sreg: u32, dreg: Option<u32>, set: &str, inv: bool) -> EncResult<Expr> {
        let (n, id) = self.set_ref(set)?;
        let mut e = Expr::new(c(b"lookup\0")).u32(s::NFTNL_EXPR_LOOKUP_SREG, sreg);
        if let Some(d) = dreg {
            e = e.u32(s::NFTNL_EXPR_LOOKUP_DREG, d);
        }
        e = e.str(s::NFTNL_EXPR_LOOKUP_SET, &n);
        if let Some(id) = id {
            e = e.u32(s::NFTNL_EXPR_LOOKUP_SET_ID, id);
        }
        if inv {
            e = e.u32(s::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
        }
        Ok(e)
    }

    fn check_fam(&self, a: &IpAddr) -> EncResult<()> {
        if Family::of(a) == self.fam {
            Ok(())
        } else {
            Err(format!("address {a} in a {} table", self.fam.keyword()))
        }
    }

    fn addr_match(&self, o: &mut Obj, field: Field, negate: bool, a: &AddrMatch) -> EncResult<()> {
        let op = if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
        match a {
            AddrMatch::Set(set) => {
                o.add_expr(self.load(field, 1));
                o.add_expr(self.lookup(1, None, set, negate)?);
            }
            AddrMatch::Net(n) => {
                self.check_fam(&n.addr())?;
                let full = self.addr_len();
                let plen = n.prefix_len() as usize;
                let net = addr_bytes(&n.network());
                let off = self.addr_offset(field);
                if plen == full * 8 || (plen > 0 && plen.is_multiple_of(8)) {
                    // Byte-aligned prefix: nft loads only the prefix bytes.
                    let l = if plen == full * 8 { full } else { plen / 8 };
                    o.add_expr(payload(NFT_PAYLOAD_NETWORK_HEADER, off, l as u32, 1));
                    o.add_expr(cmp(op, &net[..l]));
                } else {
                    let mask = addr_bytes(&n.netmask());
                    o.add_expr(payload(NFT_PAYLOAD_NETWORK_HEADER, off, full as u32, 1));
                    o.add_expr(bitwise(full as u32, &mask, &vec![0; full], false));
                    o.add_expr(cmp(op, &net));
                }
            }
        }
        Ok(())
    }

    fn push_match(&self, o: &mut Obj, m: &Match) -> EncResult<()> {
        match m {
            Match::CtStateNew | Match::CtStatusDnat => {
                let (key, bit) = match m {
                    Match::CtStateNew => (NFT_CT_STATE, IP_CT_NEW_BIT),
                    _ => (NFT_CT_STATUS, IPS_DST_NAT),
                };
                o.add_expr(
                    Expr::new(c(b"ct\0"))
                        .u32(s::NFTNL_EXPR_CT_KEY, key)
                        .u32(s::NFTNL_EXPR_CT_DREG, 1),
                );
                o.add_expr(bitwise(4, &bit.to_ne_bytes(), &[0; 4], false));
                o.add_expr(cmp(NFT_CMP_NEQ, &[0; 4]));
            }
            Match::Saddr { negate, addr } => self.addr_match(o, Field::Saddr, *negate, addr)?,
            Match::Daddr { negate, addr } => self.addr_match(o, Field::Daddr, *negate, addr)?,
            Match::L4Proto(p) => {
                o.add_expr(meta_load(NFT_META_L4PROTO, 1));
                o.add_expr(cmp(NFT_CMP_EQ, &[p.number()]));
            }
            Match::MarkClear(bits) => {
                o.add_expr(meta_load(NFT_META_MARK, 1));
                o.add_expr(bitwise(4, &bits.to_ne_bytes(), &[0; 4], true));
                o.add_expr(cmp(NFT_CMP_EQ, &[0; 4]));
            }
            Match::FibDaddrLocal | Match::FibSaddrLocal => {
                let f = if matches!(m, Match::FibDaddrLocal) {
                    NFTA_FIB_F_DADDR
                } else {
                    NFTA_FIB_F_SADDR
                };
                o.add_expr(
                    Expr::new(c(b"fib\0"))
                        .u32(s::NFTNL_EXPR_FIB_FLAGS, f)
                        .u32(s::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                        .u32(s::NFTNL_EXPR_FIB_DREG, 1),
                );
                o.add_expr(cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()));
            }
            Match::NumgenRandomZero { modulus } => {
                if *modulus == 0 {
                    return Err("numgen modulus 0".into());
                }
                o.add_expr(numgen(1, *modulus, 0));
                // numgen writes a host-endian u32.
                o.add_expr(cmp(NFT_CMP_EQ, &0u32.to_ne_bytes()));
            }
            Match::Lookup { key, set, negate } => {
                self.load_key(o, key, set)?;
                o.add_expr(self.lookup(1, None, set, *negate)?);
            }
        }
        Ok(())
    }

    fn push_stmt(&self, o: &mut Obj, st: &Stmt) -> EncResult<()> {
        match st {
            Stmt::MarkOr(bits) | Stmt::MarkXor(bits) => {
                let mask = if matches!(st, Stmt::MarkOr(_)) {
                    !bits
                } else {
                    u32::MAX
                };
                o.add_expr(meta_load(NFT_META_MARK, 1));
                o.add_expr(bitwise(4, &mask.to_ne_bytes(), &bits.to_ne_bytes(), true));
                o.add_expr(
                    Expr::new(c(b"meta\0"))
                        .u32(s::NFTNL_EXPR_META_KEY, NFT_META_MARK)
                        .u32(s::NFTNL_EXPR_META_SREG, 1),
                );
            }
            Stmt::Masquerade { fully_random } => {
                let mut e = Expr::new(c(b"masq\0"));
                if *fully_random {
                    e = e.u32(s::NFTNL_EXPR_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY);
                }
                o.add_expr(e);
            }
            Stmt::Dnat { addr, port } => {
                self.check_fam(addr)?;
                o.add_expr(immediate(1, &addr_bytes(addr)));
                o.add_expr(immediate(2, &port.to_be_bytes()));
                o.add_expr(
                    self.nat(1, 2)
                        .u32(s::NFTNL_EXPR_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED),
                );
            }
            Stmt::DnatMap { key, map } => {
                self.load_key(o, key, map)?;
                o.add_expr(self.lookup(1, Some(1), map, false)?);
                o.add_expr(self.nat(1, reg(self.addr_len() / 4)));
            }
            Stmt::RedirectMap { key, map } => {
                // The map yields the port (2 bytes) at the start of register 1.
                self.load_key(o, key, map)?;
                o.add_expr(self.lookup(1, Some(1), map, false)?);
                o.add_expr(
                    Expr::new(c(b"redir\0"))
                        .u32(s::NFTNL_EXPR_REDIR_REG_PROTO_MIN, 1)
                        .u32(s::NFTNL_EXPR_REDIR_REG_PROTO_MAX, 1)
                        .u32(s::NFTNL_EXPR_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED),
                );
            }
            Stmt::Update {
                set,
                key,
                timeout,
                data,
            } => {
                let slots = self.load_key(o, key, set)?;
                let mut slot = slots;
                for v in data {
                    let b = value_bytes(v, End::Start);
                    if let Value::Addr(a) = v {
                        self.check_fam(a)?;
                    }
                    o.add_expr(immediate(reg(slot), &b));
                    slot += pad4(b.len()) / 4;
                }
                if slot > 16 {
                    return Err("update key and data do not fit the 16 registers".into());
                }
                let (n, id) = self.set_ref(set)?;
                let mut e = Expr::new(c(b"dynset\0"))
                    .u32(s::NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE)
                    .u32(s::NFTNL_EXPR_DYNSET_SREG_KEY, 1);
                if !data.is_empty() {
                    e = e.u32(s::NFTNL_EXPR_DYNSET_SREG_DATA, reg(slots));
                }
                e = e
                    .u64(s::NFTNL_EXPR_DYNSET_TIMEOUT, u64::from(*timeout) * 1000)
                    .str(s::NFTNL_EXPR_DYNSET_SET_NAME, &n);
                if let Some(id) = id {
                    e = e.u32(s::NFTNL_EXPR_DYNSET_SET_ID, id);
                }
                o.add_expr(e);
            }
            Stmt::Reject => {
                // Set type and code ourselves (the nftnl crate's reject sends host-unreachable).
                let code = match self.fam {
                    Family::Ip => ICMP_PORT_UNREACH,
                    Family::Ip6 => ICMPV6_PORT_UNREACH,
                };
                o.add_expr(
                    Expr::new(c(b"reject\0"))
                        .u32(s::NFTNL_EXPR_REJECT_TYPE, NFT_REJECT_ICMP_UNREACH)
                        .u8(s::NFTNL_EXPR_REJECT_CODE, code),
                );
            }
            Stmt::Vmap { key, map } => {
                self.load_key(o, key, map)?;
                o.add_expr(self.lookup(1, Some(0), map, false)?);
            }
        }
        Ok(())
    }

    fn nat(&self, addr_reg: u32, proto_reg: u32) -> Expr {
        Expr::new(c(b"nat\0"))
            .u32(s::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT)
            .u32(s::NFTNL_EXPR_NAT_FAMILY, u32::from(self.famc()))
            .u32(s::NFTNL_EXPR_NAT_REG_ADDR_MIN, addr_reg)
            .u32(s::NFTNL_EXPR_NAT_REG_PROTO_MIN, proto_reg)
    }
}

/// `numgen random mod MODULUS offset OFFSET` into `dreg` (a host-endian u32).
fn numgen(dreg: u32, modulus: u32, offset: u32) -> Expr {
    Expr::new(c(b"numgen\0"))
        .u32(s::NFTNL_EXPR_NG_DREG, dreg)
        .u32(s::NFTNL_EXPR_NG_MODULUS, modulus)
        .u32(s::NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM)
        .u32(s::NFTNL_EXPR_NG_OFFSET, offset)
}

fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::new(c(b"payload\0"))
        .u32(s::NFTNL_EXPR_PAYLOAD_DREG, dreg)
        .u32(s::NFTNL_EXPR_PAYLOAD_BASE, base)
        .u32(s::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(s::NFTNL_EXPR_PAYLOAD_LEN, len)
}

fn meta_load(key: u32, dreg: u32) -> Expr {
    Expr::new(c(b"meta\0"))
        .u32(s::NFTNL_EXPR_META_KEY, key)
        .u32(s::NFTNL_EXPR_META_DREG, dreg)
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    Expr::new(c(b"cmp\0"))
        .u32(s::NFTNL_EXPR_CMP_SREG, 1)
        .u32(s::NFTNL_EXPR_CMP_OP, op)
        .bytes(s::NFTNL_EXPR_CMP_DATA, data)
}

/// `reg1 = (reg1 & mask) ^ xor`. `explicit_op`: nft sets the boolean op attribute for `meta
/// mark` arithmetic but not for flag tests; the kernel stores the same either way.
fn bitwise(len: u32, mask: &[u8], xor: &[u8], explicit_op: bool) -> Expr {
    let mut e = Expr::new(c(b"bitwise\0"))
        .u32(s::NFTNL_EXPR_BITWISE_SREG, 1)
        .u32(s::NFTNL_EXPR_BITWISE_DREG, 1);
    if explicit_op {
        e = e.u32(s::NFTNL_EXPR_BITWISE_OP, NFT_BITWISE_BOOL);
    }
    e.u32(s::NFTNL_EXPR_BITWISE_LEN, len)
        .bytes(s::NFTNL_EXPR_BITWISE_MASK, mask)
        .bytes(s::NFTNL_EXPR_BITWISE_XOR, xor)
}

fn immediate(dreg: u32, data: &[u8]) -> Expr {
    Expr::new(c(b"immediate\0"))
        .u32(s::NFTNL_EXPR_IMM_DREG, dreg)
        .bytes(s::NFTNL_EXPR_IMM_DATA, data)
}

fn verdict_expr(v: &Verdict) -> EncResult<Expr> {
    let (code, chain) = verdict_code(v);
    let mut e = Expr::new(c(b"immediate\0"))
        .u32(s::NFTNL_EXPR_IMM_DREG, 0)
        .u32(s::NFTNL_EXPR_IMM_VERDICT, code);
    if let Some(ch) = chain {
        e = e.str(s::NFTNL_EXPR_IMM_CHAIN, &cstr(ch)?);
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn endpoints(addr: DataType) -> Set {
        Set {
            name: "endpoints".into(),
            key: vec![DataType::Integer, DataType::Integer],
            data: Some(SetData::Values(vec![addr, DataType::InetService])),
            flags: SetFlags::default(),
            timeout: None,
            size: None,
            comment: Some("endpoints of each service port: id . slot -> address . port".into()),
            elements: vec![],
        }
    }

    /// The user data nft 1.0.6 sends for `typeof numgen random mod 1 . numgen random mod 1 :
    /// ip daddr . th dport` (captured with strace from `nft -f`, on a little-endian host).
    #[test]
    #[cfg(target_endian = "little")]
    fn typeof_map_user_data_is_nfts() {
        let comment = "endpoints of each service port: id . slot -> address . port";
        let expected = |data: &str| {
            let c: String = comment.bytes().map(|b| format!("{b:02x}")).collect();
            hex(&[
                "000400000000",
                "010400000000",
                "0340",
                "00040d0000000138001a0004170000000112000401000000010401000000020400000000",
                "011a0004170000000112000401000000010401000000020400000000",
                "0434",
                data,
                "060400000000",
                "073c",
                &c,
                "00",
            ]
            .concat())
        };
        let ip = "00040d000000012c0014000407000000010c00040c00000001040c000000\
                  0114000407000000010c00040b000000010402000000";
        let ip6 = "00040d000000012c0014000407000000010c00040d000000010409000000\
                   0114000407000000010c00040b000000010402000000";
        assert_eq!(set_udata(&endpoints(DataType::Ipv4Addr)), expected(ip));
        assert_eq!(set_udata(&endpoints(DataType::Ipv6Addr)), expected(ip6));
    }
}
