//! The nftables object model: the closed, typed vocabulary that svcc emits.
//!
//! One model feeds every writer: [`super::render`] prints it as an `nft -f` script, the
//! runtime encodes the very same values as netlink messages, and the grammar crate parses
//! the text back into it. Anything svcc can say to the kernel is a variant here; nothing is
//! ever written as a free-form string.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

// The shared vocabulary lives in `crate::family`; re-exported so `nft::model::*` users keep
// compiling. Only the nft-specific part of `Family` stays here.
pub use crate::family::{Family, L4Proto};

impl Family {
    pub fn addr_type(self) -> DataType {
        match self {
            Family::Ip => DataType::Ipv4Addr,
            Family::Ip6 => DataType::Ipv6Addr,
        }
    }
}

/// A whole ruleset: the tables svcc owns, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub comment: Option<String>,
    /// Sets and maps, in declaration order (declared before the chains that use them).
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// The type of one component of a set key or map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    /// A 32-bit integer in host byte order, as `numgen` yields it. nft has no `type` keyword
    /// for it in a concatenation, so a set or map with such a component is declared with
    /// `typeof` (see [`DataType::typeof_expr`]).
    Integer,
}

impl DataType {
    pub fn keyword(self) -> &'static str {
        match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetProto => "inet_proto",
            DataType::InetService => "inet_service",
            DataType::Integer => "integer",
        }
    }
    /// The expression a `typeof` declaration gives for this type (what nft prints back).
    pub fn typeof_expr(self) -> &'static str {
        match self {
            DataType::Ipv4Addr => "ip daddr",
            DataType::Ipv6Addr => "ip6 daddr",
            DataType::InetProto => "meta l4proto",
            DataType::InetService => "th dport",
            DataType::Integer => "numgen random mod 1",
        }
    }
    /// Width in bytes of the value in a set key (before the 4-byte register padding).
    #[allow(clippy::len_without_is_empty)] // a width, never empty
    pub fn len(self) -> usize {
        match self {
            DataType::Ipv4Addr => 4,
            DataType::Ipv6Addr => 16,
            DataType::InetProto => 1,
            DataType::InetService => 2,
            DataType::Integer => 4,
        }
    }
}

/// What a map yields; a set without data is a plain set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetData {
    Verdict,
    Values(Vec<DataType>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetFlags {
    /// Elements may be ranges / prefixes.
    pub interval: bool,
    /// Elements may carry a timeout.
    pub timeout: bool,
    /// Elements are added from the packet path (`update @set`).
    pub dynamic: bool,
}

/// A named set or map. Their number is fixed by the layout and never grows with the number
/// of services or endpoints (see docs/ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: Vec<DataType>,
    pub data: Option<SetData>,
    pub flags: SetFlags,
    /// Default element timeout in seconds.
    pub timeout: Option<u32>,
    pub size: Option<u32>,
    pub comment: Option<String>,
    pub elements: Vec<Element>,
}

impl Set {
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }
    /// Declared with `typeof` rather than `type`: a key or data component is an
    /// [`DataType::Integer`], which only `typeof` can say.
    pub fn uses_typeof(&self) -> bool {
        let data: &[DataType] = match &self.data {
            Some(SetData::Values(v)) => v,
            _ => &[],
        };
        self.key.iter().chain(data).any(|t| *t == DataType::Integer)
    }
}

/// A literal value: one component of an element key or map value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Addr(IpAddr),
    /// A prefix (only in interval sets).
    Prefix(IpNet),
    Proto(L4Proto),
    Port(u16),
    /// A 32-bit integer ([`DataType::Integer`]): an endpoint-map id or slot.
    Num(u32),
    /// `first-last`: the integers first ..= last (only in interval sets of integers: the
    /// endpoint maps' key ranges).
    Range(u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    Verdict(Verdict),
    Values(Vec<Value>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<Value>,
    pub data: Option<ElemData>,
    /// Provenance: which Service (port) the element serves. Shared by the elements of one
    /// service port (an `Arc`: at 10k/100k the model holds 240k elements, and the applier
    /// keeps the model for as long as `svcc run` runs).
    pub comment: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub fn keyword(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
    pub rules: Vec<Rule>,
}

/// A packet field that can be loaded into a register (alone or in a concatenation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `ip saddr` / `ip6 saddr` (the table's family).
    Saddr,
    /// `ip daddr` / `ip6 daddr`.
    Daddr,
    /// `meta l4proto`.
    L4Proto,
    /// `th dport`: the transport destination port, whatever the protocol.
    Dport,
    /// `numgen random mod MODULUS [offset OFFSET]`: a random integer in
    /// `OFFSET..OFFSET+MODULUS` (host byte order). With modulus 1 it is the constant OFFSET,
    /// which is how a constant goes into a concatenated map key (nft 1.0.6 cannot type a
    /// literal there).
    Numgen { modulus: u32, offset: u32 },
}

/// Right-hand side of an address comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    /// One address or prefix.
    Net(IpNet),
    /// Membership in a named set.
    Set(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `ct state new`
    CtStateNew,
    /// `ct status dnat`
    CtStatusDnat,
    /// `ip saddr [!=] …`
    Saddr { negate: bool, addr: AddrMatch },
    /// `ip daddr [!=] …`
    Daddr { negate: bool, addr: AddrMatch },
    /// `meta l4proto tcp`
    L4Proto(L4Proto),
    /// `meta mark & MASK == 0`
    MarkClear(u32),
    /// `fib daddr type local`
    FibDaddrLocal,
    /// `fib saddr type local`
    FibSaddrLocal,
    /// `numgen random mod M == 0`: true with probability 1/M.
    NumgenRandomZero { modulus: u32 },
    /// `f1 . f2 … [!=] @set`
    Lookup {
        key: Vec<Field>,
        set: String,
        negate: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `meta mark set meta mark | BITS`
    MarkOr(u32),
    /// `meta mark set meta mark ^ BITS`
    MarkXor(u32),
    /// `masquerade [fully-random]`
    Masquerade { fully_random: bool },
    /// `dnat to ADDR:PORT` (terminal)
    Dnat { addr: IpAddr, port: u16 },
    /// `dnat ip addr . port to KEY map @MAP` (terminal; breaks the rule on a miss). The map
    /// yields `address . port`; KEY is packet fields (`@affinity`) or numgen values
    /// (`@endpoints`: `numgen random mod 1 offset ID . numgen random mod N`).
    DnatMap { key: Vec<Field>, map: String },
    /// `redirect to :KEY map @MAP` (terminal; breaks the rule on a miss): the packet goes to
    /// the node itself (the incoming interface's primary address; loopback from the node),
    /// on the port the map yields for KEY. The userspace mode's path to its proxy listeners.
    RedirectMap { key: Vec<Field>, map: String },
    /// `update @SET { KEY timeout Ns : DATA }`: refresh or add a dynamic element.
    Update {
        set: String,
        key: Vec<Field>,
        timeout: u32,
        data: Vec<Value>,
    },
    /// `reject` (ICMP port unreachable, TCP reset for TCP by the kernel's default type)
    Reject,
    /// `KEY vmap @MAP`
    Vmap { key: Vec<Field>, map: String },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub stmts: Vec<Stmt>,
    pub verdict: Option<Verdict>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new() -> Rule {
        Rule::default()
    }
    pub fn m(mut self, m: Match) -> Rule {
        self.matches.push(m);
        self
    }
    pub fn s(mut self, s: Stmt) -> Rule {
        self.stmts.push(s);
        self
    }
    pub fn v(mut self, v: Verdict) -> Rule {
        self.verdict = Some(v);
        self
    }
    pub fn comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
}

impl Ruleset {
    /// Counts of the objects in the ruleset, for logs, metrics and tests.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for t in &self.tables {
            s.tables += 1;
            s.sets += t.sets.len();
            s.elements += t.sets.iter().map(|x| x.elements.len()).sum::<usize>();
            s.chains += t.chains.len();
            s.rules += t.chains.iter().map(|c| c.rules.len()).sum::<usize>();
        }
        s
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub tables: usize,
    pub sets: usize,
    pub elements: usize,
    pub chains: usize,
    pub rules: usize,
}
