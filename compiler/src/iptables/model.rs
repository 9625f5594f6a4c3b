//! The iptables object model: the closed vocabulary of rules svcc writes for
//! `iptables-restore` / `ip6tables-restore`, rendered in one place.

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::family::{Family, L4Proto};

/// One netfilter table's worth of svcc chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptTable {
    /// `nat` or `filter`.
    pub name: &'static str,
    /// svcc's own chains, in declaration order (declaring a chain in a `--noflush` restore
    /// flushes it: the chains are replaced as a whole, atomically per table).
    pub chains: Vec<String>,
    pub rules: Vec<IptRule>,
}

/// A whole ruleset of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptRuleset {
    pub family: Family,
    pub tables: Vec<IptTable>,
    /// Rules in built-in chains that jump into svcc's chains (ensured by `svcc apply`).
    pub jumps: Vec<IptJump>,
}

/// A jump from a built-in chain (PREROUTING, INPUT, …) into an svcc chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptJump {
    pub table: &'static str,
    pub chain: &'static str,
    pub rule: IptRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptRule {
    pub chain: String,
    pub comment: Option<String>,
    pub matches: Vec<IptMatch>,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IptMatch {
    /// `-m tcp -p tcp` (with `--dport` when a port is given)
    Proto {
        proto: L4Proto,
        dport: Option<u16>,
    },
    Src {
        negate: bool,
        net: IpNet,
    },
    Dst {
        negate: bool,
        net: IpNet,
    },
    /// `-m addrtype --dst-type LOCAL`
    DstLocal,
    /// `-m addrtype --src-type LOCAL`
    SrcLocal,
    /// `-m mark [!] --mark M/M`
    Mark {
        negate: bool,
        mark: u32,
    },
    /// `-m conntrack --ctstate …`
    CtState(&'static str),
    /// `-m statistic --mode random --probability P`
    Probability(f64),
    /// `-m recent --name N --rcheck --seconds S --reap`
    RecentCheck {
        name: String,
        seconds: u32,
    },
    /// `-m recent --name N --set`
    RecentSet {
        name: String,
    },
}

impl Eq for IptMatch {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Jump(String),
    Return,
    Accept,
    Drop,
    Reject,
    Dnat { addr: IpAddr, port: u16 },
    MarkOr(u32),
    MarkXor(u32),
    Masquerade { random_fully: bool },
}

fn net_text(n: &IpNet) -> String {
    format!("{}/{}", n.addr(), n.prefix_len())
}

/// `%0.10f` of kube-proxy's `computeProbability`.
fn probability(p: f64) -> String {
    format!("{p:.10}")
}

impl IptRule {
    /// The rule's arguments after `-A CHAIN`, as iptables-save prints them.
    pub fn args(&self, family: Family) -> String {
        let mask = mask(family);
        let mut s = String::new();
        if let Some(c) = &self.comment {
            let _ = write!(s, " -m comment --comment \"{}\"", c.replace('"', ""));
        }
        for m in &self.matches {
            let _ = match m {
                IptMatch::Proto { proto, dport } => {
                    let p = proto.keyword();
                    match dport {
                        Some(d) => write!(s, " -m {p} -p {p} --dport {d}"),
                        None => write!(s, " -p {p}"),
                    }
                }
                IptMatch::Src { negate, net } => write!(
                    s,
                    "{} -s {}",
                    if *negate { " !" } else { "" },
                    net_text(net)
                ),
                IptMatch::Dst { negate, net } => write!(
                    s,
                    "{} -d {}",
                    if *negate { " !" } else { "" },
                    net_text(net)
                ),
                IptMatch::DstLocal => write!(s, " -m addrtype --dst-type LOCAL"),
                IptMatch::SrcLocal => write!(s, " -m addrtype --src-type LOCAL"),
                IptMatch::Mark { negate, mark } => {
                    write!(
                        s,
                        " -m mark{} --mark {mark:#x}/{mark:#x}",
                        if *negate { " !" } else { "" }
                    )
                }
                IptMatch::CtState(st) => write!(s, " -m conntrack --ctstate {st}"),
                IptMatch::Probability(p) => write!(
                    s,
                    " -m statistic --mode random --probability {}",
                    probability(*p)
                ),
                IptMatch::RecentCheck { name, seconds } => {
                    write!(s, " -m recent --name {name} --mask {mask} --rsource --rcheck --seconds {seconds} --reap")
                }
                IptMatch::RecentSet { name } => {
                    write!(s, " -m recent --name {name} --mask {mask} --rsource --set")
                }
            };
        }
        let _ = match &self.target {
            Target::Jump(c) => write!(s, " -j {c}"),
            Target::Return => write!(s, " -j RETURN"),
            Target::Accept => write!(s, " -j ACCEPT"),
            Target::Drop => write!(s, " -j DROP"),
            Target::Reject => write!(s, " -j REJECT"),
            Target::Dnat { addr, port } => match addr {
                IpAddr::V4(a) => write!(s, " -j DNAT --to-destination {a}:{port}"),
                IpAddr::V6(a) => write!(s, " -j DNAT --to-destination [{a}]:{port}"),
            },
            Target::MarkOr(m) => write!(s, " -j MARK --or-mark {m:#x}"),
            Target::MarkXor(m) => write!(s, " -j MARK --xor-mark {m:#x}"),
            Target::Masquerade { random_fully } => {
                write!(
                    s,
                    " -j MASQUERADE{}",
                    if *random_fully { " --random-fully" } else { "" }
                )
            }
        };
        s
    }
}

/// The `recent` module's mask: the whole address, per family.
fn mask(f: Family) -> &'static str {
    match f {
        Family::Ip => "255.255.255.255",
        Family::Ip6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    }
}

impl IptRuleset {
    /// `iptables-restore --noflush` input: svcc's chains, replaced as a whole per table.
    pub fn restore_text(&self) -> String {
        let mut out = String::new();
        let tool = match self.family {
            Family::Ip => "iptables",
            Family::Ip6 => "ip6tables",
        };
        let _ = writeln!(
            out,
            "# Generated by svcc: load with `{tool}-restore --noflush`; svcc apply also ensures:"
        );
        for j in &self.jumps {
            let _ = writeln!(
                out,
                "#   {tool} -t {} -I {}{}",
                j.table,
                j.chain,
                j.rule.args(self.family)
            );
        }
        for t in &self.tables {
            let _ = writeln!(out, "*{}", t.name);
            for c in &t.chains {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for r in &t.rules {
                let _ = writeln!(out, "-A {}{}", r.chain, r.args(self.family));
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// The arguments of one jump rule, for `iptables -t T -C|-I|-D CHAIN <args>`.
    pub fn jump_args(&self, j: &IptJump) -> Vec<String> {
        split_args(&j.rule.args(self.family))
    }
}

/// Splits rendered arguments, keeping quoted comments whole.
pub fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
