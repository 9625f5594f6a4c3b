//! The pest parser and the lowering of its parse tree into the object model.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use pest::error::LineColLocation;
use pest::iterators::Pair;
use pest::Parser as _;
use svcc_compiler::nft::model::{
    AddrMatch, BaseChain, Chain, ChainType, DataType, ElemData, Element, Family, Field, Hook,
    L4Proto, Match, Rule, Ruleset, Set, SetData, SetFlags, Stmt, Table, Value, Verdict,
};

use svcc_compiler::nft::render::MAX_COMMENT;

use crate::normalize::restore_l4proto_deps;
use crate::ParseError;

mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "nft.pest"]
    pub struct NftParser;
}

use grammar::{NftParser, Rule as R};

type Res<T> = Result<T, ParseError>;

pub(crate) fn parse_text(text: &str) -> Res<Ruleset> {
    let mut pairs = NftParser::parse(R::file, text).map_err(from_pest)?;
    let file = pairs.next().expect("the file rule always yields one pair");
    let mut rs = Ruleset::default();
    let mut seen = HashSet::new();
    for item in file.into_inner() {
        match item.as_rule() {
            R::table_block => {
                let span = item.clone();
                let t = table(item)?;
                if !seen.insert((t.family, t.name.clone())) {
                    return Err(error_at(
                        &span,
                        format!("table {} {} is defined twice", t.family.keyword(), t.name),
                    ));
                }
                rs.tables.push(t);
            }
            R::table_decl | R::delete_table | R::EOI => {}
            r => unreachable!("unexpected {r:?} in file"),
        }
    }
    Ok(rs)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn from_pest(e: pest::error::Error<R>) -> ParseError {
    let (line, column) = match e.line_col {
        LineColLocation::Pos(p) => p,
        LineColLocation::Span(p, _) => p,
    };
    let source_line = e.line().to_string();
    let message = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let found: String = source_line
                .chars()
                .skip(column - 1)
                .take_while(|c| !c.is_whitespace())
                .collect();
            let found = if found.is_empty() {
                "end of line".to_string()
            } else {
                format!("`{found}`")
            };
            format!("unexpected {found}; expected {}", expected(positives))
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    ParseError {
        line,
        column,
        message,
        source_line,
    }
}

/// "a, b or c" from the rules pest expected, with the many alternatives of a rule element
/// said once.
fn expected(positives: &[R]) -> String {
    let rule_elem = positives.iter().any(|r| {
        matches!(
            r,
            R::m_ct_state | R::s_reject | R::verdict | R::s_masquerade
        )
    });
    let mut names: Vec<String> = Vec::new();
    for r in positives {
        let n = if rule_elem && !matches!(r, R::EOI) {
            "a match, statement, verdict or comment".to_string()
        } else {
            rule_name(r)
        };
        if !names.contains(&n) {
            names.push(n);
        }
    }
    match names.len() {
        0 => "something else".to_string(),
        1 => names.remove(0),
        _ => {
            let last = names.pop().unwrap();
            format!("{} or {last}", names.join(", "))
        }
    }
}

fn error_at(p: &Pair<R>, message: impl Into<String>) -> ParseError {
    let pos = p.as_span().start_pos();
    let (line, column) = pos.line_col();
    ParseError {
        line,
        column,
        message: message.into(),
        source_line: pos.line_of().trim_end_matches(['\n', '\r']).to_string(),
    }
}

/// Human names of grammar rules, for "expected …" messages.
fn rule_name(r: &R) -> String {
    let s = match r {
        R::EOI => "end of input",
        R::sep => "end of line or `;`",
        R::top_item | R::table_block | R::table_decl => "`table`",
        R::delete_table => "`delete table`",
        R::family => "a family (`ip` or `ip6`)",
        R::name => "a name",
        R::string | R::string_inner => "a quoted string",
        R::comment_attr | R::chain_comment => "`comment \"…\"`",
        R::table_item => "`set`, `map`, `chain` or `comment`",
        R::set_block | R::set_kind => "`set` or `map`",
        R::set_item => {
            "a set attribute (`type`, `flags`, `timeout`, `size`, `comment`, `elements`)"
        }
        R::set_type => "`type`",
        R::set_typeof | R::typeof_list => "`typeof`",
        R::numgen_field => "`numgen random mod …`",
        R::type_list | R::data_type => {
            "a data type (ipv4_addr, ipv6_addr, inet_proto, inet_service)"
        }
        R::verdict_type => "`verdict`",
        R::set_flags => "`flags`",
        R::set_flag => "a set flag (interval, timeout, dynamic)",
        R::set_timeout | R::elem_timeout => "`timeout`",
        R::set_size => "`size`",
        R::set_elements => "`elements`",
        R::element => "an element",
        R::elem_expires => "`expires`",
        R::elem_data => "a verdict or value",
        R::value_list | R::value => "a value (address, prefix, protocol or port)",
        R::net => "an address or prefix",
        R::address | R::ipv4 | R::ipv6 => "an address",
        R::proto => "a protocol (tcp, udp, sctp)",
        R::port => "a port",
        R::num_range => "a range of integers",
        R::dec => "a decimal number",
        R::number => "a number",
        R::duration | R::duration_part => "a duration",
        R::time_unit => "a time unit (d, h, m, s, ms)",
        R::chain_block => "`chain`",
        R::chain_item => "a rule, `type … hook … priority …`, `policy` or `comment`",
        R::base_spec => "`type … hook … priority …`",
        R::chain_type => "a chain type (filter, nat)",
        R::hook => "a hook (prerouting, input, forward, output, postrouting)",
        R::priority | R::prio_name | R::signed => "a priority",
        R::prio_sign => "`+` or `-`",
        R::policy => "`policy`",
        R::policy_verdict => "`accept` or `drop`",
        R::rule => "a rule",
        R::rule_elem => "a match, statement, verdict or comment",
        R::key | R::field => "a packet field (ip saddr, ip daddr, meta l4proto, th dport)",
        R::addr_field => "`ip saddr`/`ip daddr`",
        R::addr_dir => "`saddr` or `daddr`",
        R::l4proto_field => "`meta l4proto`",
        R::dport_field => "`th dport`",
        R::dport_proto => "`th`",
        R::set_ref => "`@set`",
        R::neq => "`!=`",
        R::r_match => "a match",
        R::m_ct_state => "`ct state new`",
        R::m_ct_status => "`ct status dnat`",
        R::m_fib => "`fib … type local`",
        R::m_numgen => "`numgen random mod …`",
        R::m_mark | R::mark_masked | R::mark_prefix => "`meta mark & … == 0`",
        R::m_l4proto => "`meta l4proto …`",
        R::m_addr => "an address match",
        R::m_lookup => "a set lookup",
        R::r_stmt => "a statement",
        R::s_mark => "`meta mark set …`",
        R::mark_op => "`|` or `^`",
        R::s_masquerade => "`masquerade`",
        R::fully_random => "`fully-random`",
        R::s_dnat_map | R::s_dnat => "`dnat`",
        R::s_redirect_map => "`redirect`",
        R::dnat_v4 | R::dnat_v6 => "an address:port",
        R::s_update => "`update`",
        R::s_reject => "`reject`",
        R::s_vmap => "`vmap`",
        R::verdict | R::v_accept | R::v_drop | R::v_return | R::v_jump | R::v_goto => "a verdict",
        R::file => "a ruleset",
        R::WHITESPACE | R::COMMENT | R::nl => "whitespace",
    };
    s.to_string()
}

// ---------------------------------------------------------------------------------------------
// Tables, sets, chains
// ---------------------------------------------------------------------------------------------

fn family(p: Pair<R>) -> Family {
    match p.as_str() {
        "ip" => Family::Ip,
        "ip6" => Family::Ip6,
        f => unreachable!("family {f}"),
    }
}

fn string(p: Pair<R>) -> String {
    // string = "\"" ~ string_inner ~ "\""
    p.into_inner()
        .next()
        .map(|i| i.as_str().to_string())
        .unwrap_or_default()
}

/// The string of a `comment "…"` pair. Longer than nft allows (128 bytes, which
/// `render::quote` never exceeds) is an error, as in nft: a model with such a comment would
/// not print back as itself.
fn comment(p: Pair<R>) -> Res<String> {
    let s = string(p.clone().into_inner().next().expect("comment has a string"));
    if s.len() > MAX_COMMENT {
        return Err(error_at(
            &p,
            format!("comment too long, {MAX_COMMENT} characters maximum allowed"),
        ));
    }
    Ok(s)
}

fn set_once<T>(slot: &mut Option<T>, v: T, p: &Pair<R>, what: &str) -> Res<()> {
    if slot.is_some() {
        return Err(error_at(p, format!("{what} given twice")));
    }
    *slot = Some(v);
    Ok(())
}

fn table(p: Pair<R>) -> Res<Table> {
    let mut it = p.into_inner();
    let fam = family(it.next().unwrap());
    let name = it.next().unwrap().as_str().to_string();
    let mut t = Table {
        family: fam,
        name,
        comment: None,
        sets: Vec::new(),
        chains: Vec::new(),
    };
    let mut names = HashSet::new();
    for item in it {
        match item.as_rule() {
            R::comment_attr => {
                let c = comment(item.clone())?;
                set_once(&mut t.comment, c, &item, "the table comment")?;
            }
            R::set_block => {
                let s = set(item.clone())?;
                if t.set(&s.name).is_some() {
                    return Err(error_at(&item, format!("set {} is defined twice", s.name)));
                }
                t.sets.push(s);
            }
            R::chain_block => {
                let c = chain(item.clone(), fam)?;
                if !names.insert(c.name.clone()) {
                    return Err(error_at(
                        &item,
                        format!("chain {} is defined twice", c.name),
                    ));
                }
                t.chains.push(c);
            }
            r => unreachable!("unexpected {r:?} in table"),
        }
    }
    Ok(t)
}

fn data_type(p: Pair<R>) -> DataType {
    match p.as_str() {
        "ipv4_addr" => DataType::Ipv4Addr,
        "ipv6_addr" => DataType::Ipv6Addr,
        "inet_proto" => DataType::InetProto,
        "inet_service" => DataType::InetService,
        t => unreachable!("data type {t}"),
    }
}

fn type_list(p: Pair<R>) -> Vec<DataType> {
    p.into_inner().map(data_type).collect()
}

/// The types of a `typeof` declaration's expressions.
fn typeof_list(p: Pair<R>) -> Res<Vec<DataType>> {
    p.into_inner()
        .map(|f| {
            Ok(match f.as_rule() {
                R::addr_field => match f.into_inner().next().unwrap().as_str() {
                    "ip" => DataType::Ipv4Addr,
                    _ => DataType::Ipv6Addr,
                },
                R::l4proto_field => DataType::InetProto,
                R::dport_field => DataType::InetService,
                R::numgen_field => {
                    numgen_field(f)?;
                    DataType::Integer
                }
                r => unreachable!("unexpected {r:?} in typeof"),
            })
        })
        .collect()
}

/// `numgen random mod M [offset O]`.
fn numgen_field(p: Pair<R>) -> Res<Field> {
    let mut it = p.into_inner();
    let m = it.next().unwrap();
    let modulus = int::<u32>(&m, "numgen modulus")?;
    if modulus == 0 {
        return Err(error_at(&m, "numgen modulus 0"));
    }
    let offset = match it.next() {
        Some(o) => int::<u32>(&o, "numgen offset")?,
        None => 0,
    };
    Ok(Field::Numgen { modulus, offset })
}

fn set(p: Pair<R>) -> Res<Set> {
    let whole = p.clone();
    let mut it = p.into_inner();
    let is_map = it.next().unwrap().as_str() == "map";
    let name = it.next().unwrap().as_str().to_string();
    let mut ty: Option<(Vec<DataType>, Option<SetData>)> = None;
    let mut flags: Option<SetFlags> = None;
    let mut timeout = None;
    let mut size = None;
    let mut comment_ = None;
    let mut elements: Option<Vec<Pair<R>>> = None;
    for item in it {
        match item.as_rule() {
            R::set_type => {
                let mut ti = item.clone().into_inner();
                let key = type_list(ti.next().unwrap());
                let data = ti.next().map(|d| match d.as_rule() {
                    R::verdict_type => SetData::Verdict,
                    _ => SetData::Values(type_list(d)),
                });
                set_once(&mut ty, (key, data), &item, "the set type")?;
            }
            R::set_typeof => {
                let mut ti = item.clone().into_inner();
                let key = typeof_list(ti.next().unwrap())?;
                let data = match ti.next() {
                    Some(d) if d.as_rule() == R::verdict_type => Some(SetData::Verdict),
                    Some(d) => Some(SetData::Values(typeof_list(d)?)),
                    None => None,
                };
                set_once(&mut ty, (key, data), &item, "the set type")?;
            }
            R::set_flags => {
                let mut f = SetFlags::default();
                for fl in item.clone().into_inner() {
                    match fl.as_str() {
                        "interval" => f.interval = true,
                        "timeout" => f.timeout = true,
                        "dynamic" => f.dynamic = true,
                        x => unreachable!("flag {x}"),
                    }
                }
                set_once(&mut flags, f, &item, "the set flags")?;
            }
            R::set_timeout => {
                let d = item.clone().into_inner().next().unwrap();
                let secs = duration_secs(d)?;
                set_once(&mut timeout, secs, &item, "the set timeout")?;
            }
            R::set_size => {
                let d = item.clone().into_inner().next().unwrap();
                let n = int::<u32>(&d, "set size")?;
                set_once(&mut size, n, &item, "the set size")?;
            }
            R::comment_attr => {
                let c = comment(item.clone())?;
                set_once(&mut comment_, c, &item, "the set comment")?;
            }
            R::set_elements => {
                let e: Vec<Pair<R>> = item.clone().into_inner().collect();
                set_once(&mut elements, e, &item, "the set elements")?;
            }
            r => unreachable!("unexpected {r:?} in set"),
        }
    }
    let kind = if is_map { "map" } else { "set" };
    let Some((key, data)) = ty else {
        return Err(error_at(&whole, format!("{kind} {name} has no `type`")));
    };
    match (is_map, &data) {
        (true, None) => {
            return Err(error_at(
                &whole,
                format!("map {name} has no data type (`type K : D`)"),
            ))
        }
        (false, Some(_)) => {
            return Err(error_at(
                &whole,
                format!("set {name} has a data type; declare it as a map"),
            ))
        }
        _ => {}
    }
    let mut out = Set {
        name,
        key,
        data,
        flags: flags.unwrap_or_default(),
        timeout,
        size,
        comment: comment_,
        elements: Vec::new(),
    };
    for e in elements.unwrap_or_default() {
        let el = element(e, &out)?;
        out.elements.push(el);
    }
    Ok(out)
}

fn element(p: Pair<R>, s: &Set) -> Res<Element> {
    let whole = p.clone();
    let mut key = None;
    let mut data = None;
    let mut comment_ = None;
    for item in p.into_inner() {
        match item.as_rule() {
            R::value_list if key.is_none() => key = Some(values(item, &s.key)?),
            R::value_list => {
                let Some(SetData::Values(types)) = &s.data else {
                    return Err(error_at(
                        &item,
                        format!("{} does not map to values", s.name),
                    ));
                };
                data = Some(ElemData::Values(values(item, types)?));
            }
            R::verdict => {
                if s.data != Some(SetData::Verdict) {
                    return Err(error_at(&item, format!("{} is not a verdict map", s.name)));
                }
                data = Some(ElemData::Verdict(verdict(item)));
            }
            // Per-element timeouts and expiries: only elements added from the packet path (or
            // by hand) have them; the model does not keep them.
            R::elem_timeout | R::elem_expires => {
                duration_ms(item.into_inner().next().unwrap())?;
            }
            R::comment_attr => comment_ = Some(comment(item)?),
            r => unreachable!("unexpected {r:?} in element"),
        }
    }
    if s.data.is_some() && data.is_none() {
        return Err(error_at(
            &whole,
            format!("element of map {} has no `: data`", s.name),
        ));
    }
    Ok(Element {
        key: key.unwrap(),
        data,
        comment: comment_.map(Into::into),
    })
}

/// A `v1 . v2 …` list, checked against the declared types.
fn values(p: Pair<R>, types: &[DataType]) -> Res<Vec<Value>> {
    let whole = p.clone();
    let pairs: Vec<Pair<R>> = p.into_inner().collect();
    if pairs.len() != types.len() {
        return Err(error_at(
            &whole,
            format!(
                "{} component(s) where the type has {}",
                pairs.len(),
                types.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(pairs.len());
    for (v, t) in pairs.into_iter().zip(types) {
        let val = if *t == DataType::Integer && v.as_rule() == R::port {
            Value::Num(int::<u32>(&v, "integer")?)
        } else {
            value(v.clone())?
        };
        let ok = matches!(
            (&val, t),
            (Value::Addr(IpAddr::V4(_)), DataType::Ipv4Addr)
                | (Value::Prefix(IpNet::V4(_)), DataType::Ipv4Addr)
                | (Value::Addr(IpAddr::V6(_)), DataType::Ipv6Addr)
                | (Value::Prefix(IpNet::V6(_)), DataType::Ipv6Addr)
                | (Value::Proto(_), DataType::InetProto)
                | (Value::Port(_), DataType::InetService)
                | (Value::Num(_), DataType::Integer)
                | (Value::Range(..), DataType::Integer)
        );
        if !ok {
            return Err(error_at(
                &v,
                format!("`{}` is not of type {}", v.as_str(), t.keyword()),
            ));
        }
        out.push(val);
    }
    Ok(out)
}

fn value(p: Pair<R>) -> Res<Value> {
    Ok(match p.as_rule() {
        R::net => match net(p)? {
            Ok(n) => Value::Prefix(n),
            Err(a) => Value::Addr(a),
        },
        R::proto => Value::Proto(proto(p)),
        R::port => Value::Port(int::<u16>(&p, "port")?),
        R::num_range => {
            let mut it = p.clone().into_inner();
            let (a, b) = (it.next().unwrap(), it.next().unwrap());
            let (a, b) = (int::<u32>(&a, "integer")?, int::<u32>(&b, "integer")?);
            if a > b {
                return Err(error_at(
                    &p,
                    format!("range `{}` ends before it starts", p.as_str()),
                ));
            }
            Value::Range(a, b)
        }
        r => unreachable!("unexpected {r:?} as value"),
    })
}

fn address(p: Pair<R>) -> Res<IpAddr> {
    let inner = match p.as_rule() {
        R::address => p.into_inner().next().unwrap(),
        _ => p,
    };
    match inner.as_rule() {
        R::ipv4 => inner
            .as_str()
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| {
                error_at(
                    &inner,
                    format!("`{}` is not an IPv4 address", inner.as_str()),
                )
            }),
        R::ipv6 => inner
            .as_str()
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| {
                error_at(
                    &inner,
                    format!("`{}` is not an IPv6 address", inner.as_str()),
                )
            }),
        r => unreachable!("unexpected {r:?} as address"),
    }
}

/// `addr/len` as a prefix (`Ok`), or a plain address (`Err`).
fn net(p: Pair<R>) -> Res<Result<IpNet, IpAddr>> {
    let whole = p.clone();
    let mut it = p.into_inner();
    let addr = address(it.next().unwrap())?;
    let Some(len_p) = it.next() else {
        return Ok(Err(addr));
    };
    let len = int::<u8>(&len_p, "prefix length")?;
    IpNet::new(addr, len)
        .map(Ok)
        .map_err(|_| error_at(&whole, format!("prefix length {len} is too long")))
}

fn proto(p: Pair<R>) -> L4Proto {
    match p.as_str() {
        "tcp" => L4Proto::Tcp,
        "udp" => L4Proto::Udp,
        "sctp" => L4Proto::Sctp,
        x => unreachable!("proto {x}"),
    }
}

fn int<T: TryFrom<u64>>(p: &Pair<R>, what: &str) -> Res<T> {
    let s = p.as_str();
    let v = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse::<u64>().ok(),
    };
    v.and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| error_at(p, format!("{what} `{s}` is out of range")))
}

/// A duration in milliseconds.
fn duration_ms(p: Pair<R>) -> Res<u64> {
    let whole = p.clone();
    let overflow = || error_at(&whole, "duration is out of range");
    let mut total: u64 = 0;
    for part in p.into_inner() {
        let (n, unit) = match part.as_rule() {
            // a bare number: seconds
            R::dec => (int::<u64>(&part, "duration")?, 1000),
            R::duration_part => {
                let mut it = part.into_inner();
                let n = int::<u64>(&it.next().unwrap(), "duration")?;
                let unit = match it.next().unwrap().as_str() {
                    "ms" => 1,
                    "s" => 1000,
                    "m" => 60_000,
                    "h" => 3_600_000,
                    "d" => 86_400_000,
                    u => unreachable!("unit {u}"),
                };
                (n, unit)
            }
            r => unreachable!("unexpected {r:?} in duration"),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(overflow)?;
    }
    Ok(total)
}

/// A duration in whole seconds (all svcc timeouts are).
fn duration_secs(p: Pair<R>) -> Res<u32> {
    let whole = p.clone();
    let ms = duration_ms(p)?;
    if ms % 1000 != 0 {
        return Err(error_at(&whole, "timeout is not a whole number of seconds"));
    }
    u32::try_from(ms / 1000).map_err(|_| error_at(&whole, "timeout is out of range"))
}

fn chain(p: Pair<R>, fam: Family) -> Res<Chain> {
    let mut it = p.into_inner();
    let name = it.next().unwrap().as_str().to_string();
    let mut c = Chain {
        name,
        base: None,
        comment: None,
        rules: Vec::new(),
    };
    let mut policy_seen: Option<Pair<R>> = None;
    for item in it {
        match item.as_rule() {
            R::base_spec => {
                let b = base_spec(item.clone())?;
                set_once(&mut c.base, b, &item, "the chain type")?;
            }
            R::policy => {
                let v = item.clone().into_inner().next().unwrap();
                if v.as_str() != "accept" {
                    return Err(error_at(&v, "svcc's base chains have policy accept"));
                }
                set_once(&mut policy_seen, item.clone(), &item, "the chain policy")?;
            }
            R::chain_comment => {
                let s = comment(item.clone())?;
                set_once(&mut c.comment, s, &item, "the chain comment")?;
            }
            R::rule => c.rules.push(rule(item, fam)?),
            r => unreachable!("unexpected {r:?} in chain"),
        }
    }
    if let (Some(p), None) = (&policy_seen, &c.base) {
        return Err(error_at(p, "a policy without `type … hook … priority …`"));
    }
    Ok(c)
}

fn base_spec(p: Pair<R>) -> Res<BaseChain> {
    let mut it = p.into_inner();
    let kind = match it.next().unwrap().as_str() {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        x => unreachable!("chain type {x}"),
    };
    let hook = match it.next().unwrap().as_str() {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        x => unreachable!("hook {x}"),
    };
    let priority = priority(it.next().unwrap())?;
    Ok(BaseChain {
        kind,
        hook,
        priority,
    })
}

/// nft's standard priority names (ip and ip6 families).
pub(crate) fn standard_priority(name: &str) -> Option<i32> {
    Some(match name {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        _ => return None,
    })
}

fn priority(p: Pair<R>) -> Res<i32> {
    let whole = p.clone();
    let mut it = p.into_inner();
    let first = it.next().unwrap();
    match first.as_rule() {
        R::signed => first
            .as_str()
            .parse::<i32>()
            .map_err(|_| error_at(&first, "priority is out of range")),
        R::prio_name => {
            let base = standard_priority(first.as_str()).unwrap();
            let Some(sign) = it.next() else {
                return Ok(base);
            };
            let off = int::<i32>(&it.next().unwrap(), "priority offset")?;
            let v = if sign.as_str() == "+" {
                base.checked_add(off)
            } else {
                base.checked_sub(off)
            };
            v.ok_or_else(|| error_at(&whole, "priority is out of range"))
        }
        r => unreachable!("unexpected {r:?} in priority"),
    }
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

/// A packet-field key and the protocol its `dport` was qualified with (`tcp dport`), if any.
fn key(p: Pair<R>, fam: Family) -> Res<(Vec<Field>, Option<L4Proto>)> {
    let mut fields = Vec::new();
    let mut resolved: Option<L4Proto> = None;
    for f in p.into_inner() {
        match f.as_rule() {
            R::addr_field => fields.push(addr_field(f, fam)?),
            R::l4proto_field => fields.push(Field::L4Proto),
            R::dport_field => {
                let pr = f.clone().into_inner().next().unwrap();
                let q = match pr.as_str() {
                    "th" => None,
                    "tcp" => Some(L4Proto::Tcp),
                    "udp" => Some(L4Proto::Udp),
                    "sctp" => Some(L4Proto::Sctp),
                    x => unreachable!("dport proto {x}"),
                };
                if let Some(q) = q {
                    if resolved.is_some_and(|r| r != q) {
                        return Err(error_at(&f, "two transport protocols in one key"));
                    }
                    resolved = Some(q);
                }
                fields.push(Field::Dport);
            }
            R::numgen_field => fields.push(numgen_field(f)?),
            r => unreachable!("unexpected {r:?} in key"),
        }
    }
    Ok((fields, resolved))
}

fn addr_field(p: Pair<R>, fam: Family) -> Res<Field> {
    let whole = p.clone();
    let mut it = p.into_inner();
    let f = family(it.next().unwrap());
    if f != fam {
        return Err(error_at(
            &whole,
            format!("`{}` in an `{}` table", whole.as_str(), fam.keyword()),
        ));
    }
    Ok(match it.next().unwrap().as_str() {
        "saddr" => Field::Saddr,
        "daddr" => Field::Daddr,
        x => unreachable!("addr dir {x}"),
    })
}

fn set_name(p: Pair<R>) -> String {
    // set_ref = "@" ~ name
    p.into_inner().next().unwrap().as_str().to_string()
}

fn mark_number(p: &Pair<R>) -> Res<u32> {
    int::<u32>(p, "mark")
}

/// Where a rule element belongs in the model's fixed order.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Phase {
    Matches,
    Stmts,
    Verdict,
    Comment,
}

fn rule(p: Pair<R>, fam: Family) -> Res<Rule> {
    let mut r = Rule::default();
    // The protocol each match's / statement's `dport` was printed with (`tcp dport`).
    let mut match_res = Vec::new();
    let mut stmt_res = Vec::new();
    let mut phase = Phase::Matches;
    for e in p.into_inner() {
        let here = match e.as_rule() {
            R::verdict => Phase::Verdict,
            R::comment_attr => Phase::Comment,
            R::s_mark
            | R::s_masquerade
            | R::s_dnat_map
            | R::s_redirect_map
            | R::s_dnat
            | R::s_update
            | R::s_reject
            | R::s_vmap => Phase::Stmts,
            _ => Phase::Matches,
        };
        let allowed =
            here > phase || (here == phase && matches!(here, Phase::Matches | Phase::Stmts));
        if !allowed {
            let what = match here {
                Phase::Matches => "a match",
                Phase::Stmts => "a statement",
                Phase::Verdict if phase == Phase::Verdict => "a second verdict",
                Phase::Verdict => "a verdict",
                Phase::Comment => "a second comment",
            };
            let after = match phase {
                Phase::Matches => "matches",
                Phase::Stmts => "a statement",
                Phase::Verdict => "the verdict",
                Phase::Comment => "the comment",
            };
            return Err(error_at(
                &e,
                format!("{what} after {after}: a rule is matches, statements, verdict, comment"),
            ));
        }
        phase = here;
        match here {
            Phase::Matches => {
                let (m, res) = rule_match(e, fam)?;
                r.matches.push(m);
                match_res.push(res);
            }
            Phase::Stmts => {
                let (s, res) = stmt(e, fam)?;
                r.stmts.push(s);
                stmt_res.push(res);
            }
            Phase::Verdict => r.verdict = Some(verdict(e)),
            Phase::Comment => r.comment = Some(comment(e)?),
        }
    }
    restore_l4proto_deps(&mut r, &match_res, &stmt_res);
    Ok(r)
}

fn rule_match(p: Pair<R>, fam: Family) -> Res<(Match, Option<L4Proto>)> {
    Ok(match p.as_rule() {
        R::m_ct_state => (Match::CtStateNew, None),
        R::m_ct_status => (Match::CtStatusDnat, None),
        R::m_fib => {
            let m = match p.into_inner().next().unwrap().as_str() {
                "daddr" => Match::FibDaddrLocal,
                _ => Match::FibSaddrLocal,
            };
            (m, None)
        }
        R::m_numgen => {
            let mut it = p.into_inner();
            let modulus = int::<u32>(&it.next().unwrap(), "numgen modulus")?;
            let v = it.next().unwrap();
            if int::<u64>(&v, "numgen value")? != 0 {
                return Err(error_at(&v, "svcc only compares numgen with 0"));
            }
            (Match::NumgenRandomZero { modulus }, None)
        }
        R::m_mark => {
            let form = p.into_inner().next().unwrap();
            let mask = match form.as_rule() {
                R::mark_masked => {
                    let mut it = form.into_inner();
                    let mask = mark_number(&it.next().unwrap())?;
                    let v = it.next().unwrap();
                    if mark_number(&v)? != 0 {
                        return Err(error_at(&v, "svcc only tests mark bits for 0"));
                    }
                    mask
                }
                R::mark_prefix => {
                    let mut it = form.into_inner();
                    let v = it.next().unwrap();
                    if mark_number(&v)? != 0 {
                        return Err(error_at(&v, "svcc only tests mark bits for 0"));
                    }
                    match it.next() {
                        None => u32::MAX,
                        Some(len) => {
                            let n = int::<u32>(&len, "mark prefix")?;
                            if n > 32 {
                                return Err(error_at(&len, "mark prefix is longer than 32 bits"));
                            }
                            if n == 0 {
                                0
                            } else {
                                u32::MAX << (32 - n)
                            }
                        }
                    }
                }
                r => unreachable!("unexpected {r:?} in mark match"),
            };
            (Match::MarkClear(mask), None)
        }
        R::m_l4proto => (Match::L4Proto(proto(p.into_inner().next().unwrap())), None),
        R::m_addr => {
            let mut it = p.into_inner();
            let field = addr_field(it.next().unwrap(), fam)?;
            let mut negate = false;
            let mut rhs = it.next().unwrap();
            if rhs.as_rule() == R::neq {
                negate = true;
                rhs = it.next().unwrap();
            }
            let addr = match rhs.as_rule() {
                R::set_ref => AddrMatch::Set(set_name(rhs)),
                R::net => AddrMatch::Net(net(rhs)?.unwrap_or_else(IpNet::from)),
                r => unreachable!("unexpected {r:?} in address match"),
            };
            let m = match field {
                Field::Saddr => Match::Saddr { negate, addr },
                _ => Match::Daddr { negate, addr },
            };
            (m, None)
        }
        R::m_lookup => {
            let mut it = p.into_inner();
            let (key, res) = key(it.next().unwrap(), fam)?;
            let mut negate = false;
            let mut rhs = it.next().unwrap();
            if rhs.as_rule() == R::neq {
                negate = true;
                rhs = it.next().unwrap();
            }
            (
                Match::Lookup {
                    key,
                    set: set_name(rhs),
                    negate,
                },
                res,
            )
        }
        r => unreachable!("unexpected {r:?} as match"),
    })
}

fn stmt(p: Pair<R>, fam: Family) -> Res<(Stmt, Option<L4Proto>)> {
    Ok(match p.as_rule() {
        R::s_mark => {
            let mut it = p.into_inner();
            match it.next() {
                // nft prints `meta mark | 0` and `meta mark ^ 0` as plain `meta mark`.
                None => (Stmt::MarkOr(0), None),
                Some(op) => {
                    let bits = mark_number(&it.next().unwrap())?;
                    let s = if op.as_str() == "|" {
                        Stmt::MarkOr(bits)
                    } else {
                        Stmt::MarkXor(bits)
                    };
                    (s, None)
                }
            }
        }
        R::s_masquerade => (
            Stmt::Masquerade {
                fully_random: p.into_inner().next().is_some(),
            },
            None,
        ),
        R::s_dnat_map => {
            let mut it = p.into_inner();
            let f = it.next().unwrap();
            if family(f.clone()) != fam {
                return Err(error_at(
                    &f,
                    format!("`dnat {}` in an `{}` table", f.as_str(), fam.keyword()),
                ));
            }
            let (key, res) = key(it.next().unwrap(), fam)?;
            (
                Stmt::DnatMap {
                    key,
                    map: set_name(it.next().unwrap()),
                },
                res,
            )
        }
        R::s_redirect_map => {
            let mut it = p.into_inner();
            let (key, res) = key(it.next().unwrap(), fam)?;
            (
                Stmt::RedirectMap {
                    key,
                    map: set_name(it.next().unwrap()),
                },
                res,
            )
        }
        R::s_dnat => {
            let mut it = p.into_inner();
            let mut target = it.next().unwrap();
            if target.as_rule() == R::family {
                if family(target.clone()) != fam {
                    return Err(error_at(
                        &target,
                        format!("`dnat {}` in an `{}` table", target.as_str(), fam.keyword()),
                    ));
                }
                target = it.next().unwrap();
            }
            let mut ti = target.into_inner();
            let addr = address(ti.next().unwrap())?;
            let port = int::<u16>(&ti.next().unwrap(), "port")?;
            (Stmt::Dnat { addr, port }, None)
        }
        R::s_update => {
            let mut it = p.into_inner();
            let set = set_name(it.next().unwrap());
            let (key, res) = key(it.next().unwrap(), fam)?;
            let mut timeout = 0;
            let mut data = Vec::new();
            for rest in it {
                match rest.as_rule() {
                    R::duration => timeout = duration_secs(rest)?,
                    R::value_list => {
                        for v in rest.into_inner() {
                            data.push(value(v)?);
                        }
                    }
                    r => unreachable!("unexpected {r:?} in update"),
                }
            }
            (
                Stmt::Update {
                    set,
                    key,
                    timeout,
                    data,
                },
                res,
            )
        }
        R::s_reject => (Stmt::Reject, None),
        R::s_vmap => {
            let mut it = p.into_inner();
            let (key, res) = key(it.next().unwrap(), fam)?;
            (
                Stmt::Vmap {
                    key,
                    map: set_name(it.next().unwrap()),
                },
                res,
            )
        }
        r => unreachable!("unexpected {r:?} as statement"),
    })
}

fn verdict(p: Pair<R>) -> Verdict {
    let v = match p.as_rule() {
        R::verdict => p.into_inner().next().unwrap(),
        _ => p,
    };
    match v.as_rule() {
        R::v_accept => Verdict::Accept,
        R::v_drop => Verdict::Drop,
        R::v_return => Verdict::Return,
        R::v_jump => Verdict::Jump(v.into_inner().next().unwrap().as_str().to_string()),
        R::v_goto => Verdict::Goto(v.into_inner().next().unwrap().as_str().to_string()),
        r => unreachable!("unexpected {r:?} as verdict"),
    }
}
