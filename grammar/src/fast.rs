//! A hand-written, streaming parser of svcc's own output (`render::write_replace`), for
//! `svcc apply --ruleset` of big files.
//!
//! The pest grammar ([`crate::parse_ruleset`]) is the reference; this parser is an
//! optimisation of it and must give the very same model. It reads the file a line at a time
//! (the renderer writes one set element, one rule or one attribute per line) straight into the
//! model: no parse tree, no copy of the whole text. A 10k-service file is ~250k element lines,
//! for which pest's pairs cost several seconds and hundreds of MiB.
//!
//! It recognises only the canonical text the renderer writes (its spacing, its number forms).
//! Anything else is handed to pest, as narrowly as is safe:
//! * a rule line it does not recognise: that one line, parsed by pest inside a one-chain table
//!   of the same family (a rule's meaning depends only on the family);
//! * a set or map with an attribute or element it does not recognise: that whole block, parsed
//!   by pest inside a one-set table (a set's meaning depends on nothing outside it);
//! * anything else (the file's or a table's structure, a chain header, an error in a
//!   statement pest parses, a `\` line continuation): the whole file
//!   ([`Outcome::Unrecognized`]), so that errors are pest's, with pest's line numbers.
//!
//! Hand-written because no crate parses nft's language; the alternative, pest over the whole
//! file, is what this replaces.

use std::collections::HashSet;
use std::io::{self, BufRead};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use svcc_compiler::nft::model::{
    AddrMatch, BaseChain, Chain, ChainType, DataType, ElemData, Element, Family, Field, Hook,
    L4Proto, Match, Rule, Ruleset, Set, SetData, SetFlags, Stmt, Table, Value, Verdict,
};
use svcc_compiler::nft::render::MAX_COMMENT;

use crate::ParseError;

/// What the fast parser made of a file.
#[derive(Debug)]
pub enum Outcome {
    /// The model, equal to what [`crate::parse_ruleset`] gives for the same text.
    Parsed(Parsed),
    /// The file needs the pest parser as a whole (it may well be valid).
    Unrecognized(Unrecognized),
}

/// A successfully parsed file.
#[derive(Debug)]
pub struct Parsed {
    pub ruleset: Ruleset,
    /// How many rules and set blocks were handed to pest one at a time (0 for the renderer's
    /// own output).
    pub pest_statements: usize,
}

/// Where and why the fast parser gave the file up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognized {
    /// 1-based line number.
    pub line: usize,
    pub reason: &'static str,
}

/// Parses the text read from `r`, a line at a time. I/O errors are returned as such; text
/// that is not UTF-8 is [`Outcome::Unrecognized`] (pest's caller reports it).
pub fn parse_reader<R: BufRead>(r: R) -> io::Result<Outcome> {
    let mut p = FileParser {
        lines: Lines {
            r,
            buf: Vec::with_capacity(256),
            no: 0,
        },
        pest_statements: 0,
    };
    match p.file() {
        Ok(rs) => Ok(Outcome::Parsed(Parsed {
            ruleset: rs,
            pest_statements: p.pest_statements,
        })),
        Err(Stop::Io(e)) => Err(e),
        Err(Stop::Unrecognized(u)) => Ok(Outcome::Unrecognized(u)),
    }
}

/// [`crate::parse_ruleset`], by the fast parser when it recognises the text, else by pest.
pub fn parse_ruleset_fast(text: &str) -> Result<Ruleset, ParseError> {
    match parse_reader(text.as_bytes()) {
        Ok(Outcome::Parsed(p)) => Ok(p.ruleset),
        Ok(Outcome::Unrecognized(_)) | Err(_) => crate::parse_ruleset(text),
    }
}

/// Parses a file by the fast parser, streaming. `Ok(None)`: the file needs the pest parser
/// (read it whole and call [`crate::parse_ruleset`], which also gives the error if any).
pub fn parse_file(path: &std::path::Path) -> io::Result<Option<Ruleset>> {
    let f = std::fs::File::open(path)?;
    Ok(
        match parse_reader(io::BufReader::with_capacity(1 << 16, f))? {
            Outcome::Parsed(p) => Some(p.ruleset),
            Outcome::Unrecognized(_) => None,
        },
    )
}

enum Stop {
    Io(io::Error),
    Unrecognized(Unrecognized),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Io(e)
    }
}

type Res<T> = Result<T, Stop>;

// ---------------------------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------------------------

struct Lines<R> {
    r: R,
    buf: Vec<u8>,
    /// Number of the line in `buf` (1-based).
    no: usize,
}

impl<R: BufRead> Lines<R> {
    /// The next line without its `\n`, or `None` at the end.
    fn next(&mut self) -> Res<Option<&str>> {
        self.buf.clear();
        if self.r.read_until(b'\n', &mut self.buf)? == 0 {
            return Ok(None);
        }
        self.no += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        let no = self.no;
        let s = std::str::from_utf8(&self.buf).map_err(|_| unrec(no, "not UTF-8"))?;
        // pest reads `\r` as a line end and `\` before a line end as a space: both change
        // where statements end, which this line-based parser does not follow.
        if s.contains('\r') {
            return Err(unrec(no, "a carriage return"));
        }
        if s.ends_with('\\') && !s.trim_start_matches([' ', '\t']).starts_with('#') {
            return Err(unrec(no, "a line continuation"));
        }
        Ok(Some(s))
    }
}

fn unrec(line: usize, reason: &'static str) -> Stop {
    Stop::Unrecognized(Unrecognized { line, reason })
}

/// The line without the spaces and tabs around it (pest's WHITESPACE).
fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Blank or only a `#` comment: nothing for pest either.
fn is_blank(t: &str) -> bool {
    t.is_empty() || t.starts_with('#')
}

// ---------------------------------------------------------------------------------------------
// File, tables, sets, chains
// ---------------------------------------------------------------------------------------------

struct FileParser<R> {
    lines: Lines<R>,
    pest_statements: usize,
}

impl<R: BufRead> FileParser<R> {
    fn file(&mut self) -> Res<Ruleset> {
        let mut rs = Ruleset::default();
        let mut seen = HashSet::new();
        loop {
            let no = self.lines.no + 1;
            let Some(line) = self.lines.next()? else {
                return Ok(rs);
            };
            let t = trim(line);
            if is_blank(t) {
                continue;
            }
            let mut c = Cur::new(t);
            if c.lit("delete table ") {
                family_and_name(&mut c).ok_or_else(|| unrec(no, "a `delete table` line"))?;
                if !c.done() {
                    return Err(unrec(no, "a `delete table` line"));
                }
                continue;
            }
            if !c.lit("table ") {
                return Err(unrec(no, "a top-level line other than `table`"));
            }
            let (fam, name) = family_and_name(&mut c).ok_or_else(|| unrec(no, "a `table` line"))?;
            if c.done() {
                continue; // the `table X` preamble line
            }
            if !c.lit(" {") || !c.done() {
                return Err(unrec(no, "a `table` line"));
            }
            if !seen.insert((fam, name.to_string())) {
                return Err(unrec(no, "a table defined twice"));
            }
            let name = name.to_string();
            let t = self.table(fam, name)?;
            rs.tables.push(t);
        }
    }

    fn table(&mut self, fam: Family, name: String) -> Res<Table> {
        let mut t = Table {
            family: fam,
            name,
            comment: None,
            sets: Vec::new(),
            chains: Vec::new(),
        };
        let mut set_names = HashSet::new();
        let mut chain_names = HashSet::new();
        loop {
            let no = self.lines.no + 1;
            let Some(line) = self.lines.next()? else {
                return Err(unrec(no, "the end of the file in a table"));
            };
            let tl = trim(line);
            if is_blank(tl) {
                continue;
            }
            if tl == "}" {
                return Ok(t);
            }
            let mut c = Cur::new(tl);
            if c.lit("comment ") {
                let s = c.string().filter(|_| c.done());
                match s {
                    Some(s) if t.comment.is_none() => t.comment = Some(s.to_string()),
                    _ => return Err(unrec(no, "a table comment")),
                }
                continue;
            }
            let is_map = c.lit("map ");
            if is_map || c.lit("set ") {
                let n = c.name().filter(|_| c.lit(" {") && c.done());
                let Some(n) = n else {
                    return Err(unrec(no, "a set header"));
                };
                let header = line.to_string();
                let n = n.to_string();
                let s = self.set(fam, is_map, n, header)?;
                if !set_names.insert(s.name.clone()) {
                    return Err(unrec(no, "a set defined twice"));
                }
                t.sets.push(s);
                continue;
            }
            if c.lit("chain ") {
                let n = c.name().filter(|_| c.lit(" {") && c.done());
                let Some(n) = n else {
                    return Err(unrec(no, "a chain header"));
                };
                let n = n.to_string();
                let ch = self.chain(fam, n)?;
                if !chain_names.insert(ch.name.clone()) {
                    return Err(unrec(no, "a chain defined twice"));
                }
                t.chains.push(ch);
                continue;
            }
            return Err(unrec(
                no,
                "a table item other than set, map, chain or comment",
            ));
        }
    }

    /// A set or map block, after its header line (kept in `raw` for pest if need be).
    fn set(&mut self, fam: Family, is_map: bool, name: String, header: String) -> Res<Set> {
        let start = self.lines.no;
        // The block's lines so far, for pest if a line is not recognised.
        let mut raw = header;
        raw.push('\n');
        let mut s = Set {
            name,
            key: Vec::new(),
            data: None,
            flags: SetFlags::default(),
            timeout: None,
            size: None,
            comment: None,
            elements: Vec::new(),
        };
        let mut typed = false;
        let mut flags = false;
        let mut elements = false;
        loop {
            let no = self.lines.no + 1;
            let Some(line) = self.lines.next()? else {
                return Err(unrec(no, "the end of the file in a set"));
            };
            raw.push_str(line);
            raw.push('\n');
            let t = trim(line);
            if is_blank(t) {
                continue;
            }
            if t == "}" {
                // A set without `type` is pest's error.
                if !typed {
                    return Err(unrec(no, "a set without a type"));
                }
                return Ok(s);
            }
            let mut c = Cur::new(t);
            let ok = if c.lit("typeof ") {
                !typed && typeof_decl(&mut c, &mut s).is_some() && c.done()
            } else if c.lit("type ") {
                !typed && type_decl(&mut c, &mut s).is_some() && c.done()
            } else if c.lit("flags ") {
                !flags && set_flags(&mut c, &mut s.flags).is_some() && c.done()
            } else if c.lit("timeout ") {
                let v = c.secs().filter(|_| c.done());
                s.timeout.is_none() && v.map(|v| s.timeout = Some(v)).is_some()
            } else if c.lit("size ") {
                let v = c.int::<u32>().filter(|_| c.done());
                s.size.is_none() && v.map(|v| s.size = Some(v)).is_some()
            } else if c.lit("comment ") {
                let v = c.string().filter(|_| c.done());
                s.comment.is_none() && v.map(|v| s.comment = Some(v.to_string())).is_some()
            } else if t == "elements = {" {
                // Elements are typed by the declaration: it must come first (pest reads it
                // wherever it is).
                !elements && typed
            } else {
                false
            };
            // `type` / `typeof` lines also fixed whether this is a set or a map.
            if ok && c.s.starts_with("type") {
                typed = true;
                if is_map != s.data.is_some() {
                    return Err(unrec(no, "a set with data or a map without"));
                }
            }
            if ok && t.starts_with("flags") {
                flags = true;
            }
            if !ok {
                return self.set_by_pest(fam, s.name, raw, start);
            }
            if t == "elements = {" {
                elements = true;
                if !self.elements(&mut s, &mut raw)? {
                    return self.set_by_pest(fam, s.name, raw, start);
                }
            }
        }
    }

    /// The lines of `elements = { … }` up to its `}`. `false`: a line was not recognised (it
    /// is the last one in `raw`).
    fn elements(&mut self, s: &mut Set, raw: &mut String) -> Res<bool> {
        // The previous element ended with a comma (or there is none yet).
        let mut open = true;
        loop {
            let no = self.lines.no + 1;
            let Some(line) = self.lines.next()? else {
                return Err(unrec(no, "the end of the file in a set"));
            };
            raw.push_str(line);
            raw.push('\n');
            let t = trim(line);
            if is_blank(t) {
                continue;
            }
            if t == "}" {
                return Ok(true);
            }
            if !open {
                return Ok(false);
            }
            let mut c = Cur::new(t);
            let Some(e) = element(&mut c, s) else {
                return Ok(false);
            };
            open = c.lit(",");
            if !c.done() {
                return Ok(false);
            }
            s.elements.push(e);
        }
    }

    /// The rest of a set block the fast parser did not recognise (its lines so far are in
    /// `raw`), parsed by pest inside a table of its own.
    fn set_by_pest(
        &mut self,
        fam: Family,
        name: String,
        mut raw: String,
        start: usize,
    ) -> Res<Set> {
        // The block ends where its braces balance: count the lines' braces (outside strings
        // and comments) from the header on.
        let mut depth = 0i64;
        for l in raw.lines() {
            depth += brace_balance(l);
        }
        while depth > 0 {
            let no = self.lines.no + 1;
            let Some(line) = self.lines.next()? else {
                return Err(unrec(no, "the end of the file in a set"));
            };
            depth += brace_balance(line);
            raw.push_str(line);
            raw.push('\n');
        }
        let whole = || unrec(start, "a set block pest does not accept alone");
        if depth < 0 || !raw.trim_end().ends_with('}') {
            return Err(whole());
        }
        let text = format!("table {} t {{\n{raw}}}\n", fam.keyword());
        let mut rs = crate::parse_ruleset(&text).map_err(|_| whole())?;
        self.pest_statements += 1;
        match rs.tables.as_mut_slice() {
            [t] if t.comment.is_none() && t.chains.is_empty() && t.sets.len() == 1 => {
                let s = t.sets.pop().unwrap();
                if s.name != name {
                    return Err(whole());
                }
                Ok(s)
            }
            _ => Err(whole()),
        }
    }

    fn chain(&mut self, fam: Family, name: String) -> Res<Chain> {
        let mut c = Chain {
            name,
            base: None,
            comment: None,
            rules: Vec::new(),
        };
        loop {
            let no = self.lines.no + 1;
            let Some(line) = self.lines.next()? else {
                return Err(unrec(no, "the end of the file in a chain"));
            };
            let t = trim(line);
            if is_blank(t) {
                continue;
            }
            if t == "}" {
                return Ok(c);
            }
            let mut cur = Cur::new(t);
            if cur.lit("type ") {
                match base_spec(&mut cur) {
                    Some(b) if c.base.is_none() && c.rules.is_empty() => c.base = Some(b),
                    _ => return Err(unrec(no, "a base chain line")),
                }
                continue;
            }
            if cur.lit("comment ") {
                if let Some(s) = cur.string().filter(|_| cur.done()) {
                    if c.comment.is_some() {
                        return Err(unrec(no, "a second chain comment"));
                    }
                    c.comment = Some(s.to_string());
                    continue;
                }
            }
            let r = match rule(t, fam) {
                Some(r) => r,
                None => {
                    let r = rule_by_pest(t, fam).ok_or_else(|| unrec(no, "a rule"))?;
                    self.pest_statements += 1;
                    r
                }
            };
            c.rules.push(r);
        }
    }
}

/// `{` minus `}` on a line, outside strings and `#` comments.
fn brace_balance(line: &str) -> i64 {
    let mut d = 0;
    let mut in_str = false;
    for b in line.bytes() {
        match b {
            b'"' => in_str = !in_str,
            b'#' if !in_str => break,
            b'{' if !in_str => d += 1,
            b'}' if !in_str => d -= 1,
            _ => {}
        }
    }
    d
}

/// One rule line the fast parser did not recognise, parsed by pest inside a one-chain table
/// of the same family. `None` if it is not exactly one rule there (pest's error, or a line
/// that is something else, e.g. two rules separated by `;`).
fn rule_by_pest(line: &str, fam: Family) -> Option<Rule> {
    let mut depth = 0i64;
    let mut in_str = false;
    for b in line.bytes() {
        match b {
            b'"' => in_str = !in_str,
            b'#' if !in_str => break,
            b'{' if !in_str => depth += 1,
            b'}' if !in_str => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    let text = format!("table {} t {{\nchain c {{\n{line}\n}}\n}}\n", fam.keyword());
    let mut rs = crate::parse_ruleset(&text).ok()?;
    let [t] = rs.tables.as_mut_slice() else {
        return None;
    };
    if t.comment.is_some() || !t.sets.is_empty() {
        return None;
    }
    let [c] = t.chains.as_mut_slice() else {
        return None;
    };
    if c.name != "c" || c.base.is_some() || c.comment.is_some() || c.rules.len() != 1 {
        return None;
    }
    c.rules.pop()
}

fn family_and_name<'a>(c: &mut Cur<'a>) -> Option<(Family, &'a str)> {
    let fam = c.family()?;
    if !c.lit(" ") {
        return None;
    }
    Some((fam, c.name()?))
}

// ---------------------------------------------------------------------------------------------
// Set declarations and elements
// ---------------------------------------------------------------------------------------------

fn data_type(c: &mut Cur) -> Option<DataType> {
    Some(match c.word()? {
        "ipv4_addr" => DataType::Ipv4Addr,
        "ipv6_addr" => DataType::Ipv6Addr,
        "inet_proto" => DataType::InetProto,
        "inet_service" => DataType::InetService,
        _ => return None,
    })
}

/// `K1 . K2 …`, items read by `one`.
fn dot_list<'a, T>(
    c: &mut Cur<'a>,
    mut one: impl FnMut(&mut Cur<'a>) -> Option<T>,
) -> Option<Vec<T>> {
    let mut v = vec![one(c)?];
    while c.lit(" . ") {
        v.push(one(c)?);
    }
    Some(v)
}

/// `type K1 . K2 [: verdict | : D1 . D2]` (after `type `).
fn type_decl(c: &mut Cur, s: &mut Set) -> Option<()> {
    s.key = dot_list(c, data_type)?;
    if c.lit(" : ") {
        s.data = Some(if c.lit("verdict") {
            SetData::Verdict
        } else {
            SetData::Values(dot_list(c, data_type)?)
        });
    }
    Some(())
}

/// The type a `typeof` expression stands for.
fn typeof_expr(c: &mut Cur) -> Option<DataType> {
    if c.lit("numgen ") {
        numgen_rest(c)?;
        return Some(DataType::Integer);
    }
    Some(match c.word()? {
        "ip" => {
            c.lit(" ").then_some(())?;
            addr_dir(c)?;
            DataType::Ipv4Addr
        }
        "ip6" => {
            c.lit(" ").then_some(())?;
            addr_dir(c)?;
            DataType::Ipv6Addr
        }
        "meta" => {
            c.lit(" l4proto").then_some(())?;
            DataType::InetProto
        }
        "th" => {
            c.lit(" dport").then_some(())?;
            DataType::InetService
        }
        _ => return None,
    })
}

/// `typeof E1 . E2 [: verdict | : E3 . E4]` (after `typeof `).
fn typeof_decl(c: &mut Cur, s: &mut Set) -> Option<()> {
    s.key = dot_list(c, typeof_expr)?;
    if c.lit(" : ") {
        s.data = Some(if c.lit("verdict") {
            SetData::Verdict
        } else {
            SetData::Values(dot_list(c, typeof_expr)?)
        });
    }
    Some(())
}

/// `flags a,b` (after `flags `), as the renderer writes them.
fn set_flags(c: &mut Cur, f: &mut SetFlags) -> Option<()> {
    for w in c.rest().split(',') {
        match w {
            "interval" => f.interval = true,
            "timeout" => f.timeout = true,
            "dynamic" => f.dynamic = true,
            _ => return None,
        }
    }
    c.pos = c.s.len();
    Some(())
}

/// `VALUES [comment "…"] [: DATA]`, checked against the set's types.
fn element(c: &mut Cur, s: &Set) -> Option<Element> {
    let key = typed_values(c, &s.key)?;
    let comment = if c.lit(" comment ") {
        let text = c.string()?;
        // The elements of one service port are consecutive and share their comment (as in
        // the compiler's model: one allocation per service port, not per element).
        match s.elements.last().and_then(|e| e.comment.as_ref()) {
            Some(prev) if **prev == *text => Some(prev.clone()),
            _ => Some(text.into()),
        }
    } else {
        None
    };
    let data = match &s.data {
        None => None,
        Some(d) => {
            if !c.lit(" : ") {
                return None;
            }
            Some(match d {
                SetData::Verdict => ElemData::Verdict(verdict(c)?),
                SetData::Values(types) => ElemData::Values(typed_values(c, types)?),
            })
        }
    };
    Some(Element { key, data, comment })
}

fn typed_values(c: &mut Cur, types: &[DataType]) -> Option<Vec<Value>> {
    let mut out = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        if i > 0 && !c.lit(" . ") {
            return None;
        }
        let w = c.token()?;
        let v = match t {
            DataType::Ipv4Addr | DataType::Ipv6Addr => match net(w)? {
                Ok(n) => Value::Prefix(n),
                Err(a) => Value::Addr(a),
            },
            DataType::InetProto => Value::Proto(proto(w)?),
            DataType::InetService => Value::Port(dec(w)?),
            // `first-last` (interval maps of integers: the endpoint maps' key ranges).
            DataType::Integer => match w.split_once('-') {
                None => Value::Num(dec(w)?),
                Some((a, b)) => {
                    let (a, b) = (dec(a)?, dec(b)?);
                    (a <= b).then_some(Value::Range(a, b))?
                }
            },
        };
        let ok = matches!(
            (&v, t),
            (
                Value::Addr(IpAddr::V4(_)) | Value::Prefix(IpNet::V4(_)),
                DataType::Ipv4Addr
            ) | (
                Value::Addr(IpAddr::V6(_)) | Value::Prefix(IpNet::V6(_)),
                DataType::Ipv6Addr
            ) | (Value::Proto(_), DataType::InetProto)
                | (Value::Port(_), DataType::InetService)
                | (Value::Num(_) | Value::Range(..), DataType::Integer)
        );
        if !ok {
            return None;
        }
        out.push(v);
    }
    // One more component than the type has is pest's error.
    if c.peek(" . ") {
        return None;
    }
    Some(out)
}

/// A value without a declared type (`update` data): address, prefix, protocol or port.
fn untyped_value(w: &str) -> Option<Value> {
    if let Some(p) = proto(w) {
        return Some(Value::Proto(p));
    }
    if w.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Value::Port(dec(w)?));
    }
    Some(match net(w)? {
        Ok(n) => Value::Prefix(n),
        Err(a) => Value::Addr(a),
    })
}

/// An address (`Err`) or a prefix (`Ok`), in the renderer's form.
fn net(w: &str) -> Option<Result<IpNet, IpAddr>> {
    match w.split_once('/') {
        None => address(w).map(Err),
        Some((a, len)) => IpNet::new(address(a)?, dec::<u8>(len)?).ok().map(Ok),
    }
}

/// An address as `Display` writes it (so that what pest's looser IPv6 shape accepts never
/// differs: an address that is not written this way goes to pest).
fn address(w: &str) -> Option<IpAddr> {
    if w.contains(':') {
        let a = Ipv6Addr::from_str(w).ok()?;
        (a.to_string() == w).then_some(IpAddr::V6(a))
    } else {
        // std's IPv4 syntax is pest's (four 1–3 digit parts), minus leading zeros.
        Ipv4Addr::from_str(w).ok().map(IpAddr::V4)
    }
}

fn proto(w: &str) -> Option<L4Proto> {
    Some(match w {
        "tcp" => L4Proto::Tcp,
        "udp" => L4Proto::Udp,
        "sctp" => L4Proto::Sctp,
        _ => return None,
    })
}

/// A decimal number (ASCII digits only, as pest's `dec`/`port`) that fits `T`.
fn dec<T: TryFrom<u64>>(w: &str) -> Option<T> {
    if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    T::try_from(w.parse::<u64>().ok()?).ok()
}

/// `0x…` as the renderer writes marks.
fn hex32(w: &str) -> Option<u32> {
    let h = w.strip_prefix("0x")?;
    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::try_from(u64::from_str_radix(h, 16).ok()?).ok()
}

/// nft's identifier: a letter, `_` or `.`, then letters, digits, `/`, `-`, `_`, `.`.
fn is_name(w: &str) -> bool {
    let mut b = w.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b'.')
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'-' | b'_' | b'.'))
}

// ---------------------------------------------------------------------------------------------
// Chains and rules
// ---------------------------------------------------------------------------------------------

/// `type T hook H priority P; policy accept;` (after `type `).
fn base_spec(c: &mut Cur) -> Option<BaseChain> {
    let kind = match c.word()? {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        _ => return None,
    };
    c.lit(" hook ").then_some(())?;
    let hook = match c.word()? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    c.lit(" priority ").then_some(())?;
    let p = c.rest().strip_suffix("; policy accept;")?;
    let (neg, digits) = match p.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, p),
    };
    let v: i64 = dec::<u64>(digits)?.try_into().ok()?;
    let priority = i32::try_from(if neg { -v } else { v }).ok()?;
    c.pos = c.s.len();
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}

/// A rule's parts, in the order the model keeps them.
enum Item {
    Match(Match),
    Stmt(Stmt),
    Verdict(Verdict),
    Comment(String),
}

impl Item {
    fn phase(&self) -> u8 {
        match self {
            Item::Match(_) => 0,
            Item::Stmt(_) => 1,
            Item::Verdict(_) => 2,
            Item::Comment(_) => 3,
        }
    }
}

/// A rule line as the renderer writes it; `None` for anything else (pest decides).
fn rule(line: &str, fam: Family) -> Option<Rule> {
    let mut c = Cur::new(line);
    let mut r = Rule::default();
    let mut phase = 0;
    let mut first = true;
    while !c.done() {
        if !first && !c.lit(" ") {
            return None;
        }
        first = false;
        let it = item(&mut c, fam)?;
        let p = it.phase();
        // Matches and statements may repeat; a verdict and a comment may not.
        if p < phase || (p == phase && p >= 2) {
            return None;
        }
        phase = p;
        match it {
            Item::Match(m) => r.matches.push(m),
            Item::Stmt(s) => r.stmts.push(s),
            Item::Verdict(v) => r.verdict = Some(v),
            Item::Comment(s) => r.comment = Some(s),
        }
    }
    // An empty rule is not a rule (pest wants one element).
    (!first).then_some(r)
}

fn item(c: &mut Cur, fam: Family) -> Option<Item> {
    let save = c.pos;
    let w = c.word()?;
    Some(match w {
        "ct" => {
            if c.lit(" state new") {
                Item::Match(Match::CtStateNew)
            } else if c.lit(" status dnat") {
                Item::Match(Match::CtStatusDnat)
            } else {
                return None;
            }
        }
        "fib" => {
            if c.lit(" daddr type local") {
                Item::Match(Match::FibDaddrLocal)
            } else if c.lit(" saddr type local") {
                Item::Match(Match::FibSaddrLocal)
            } else {
                return None;
            }
        }
        "meta" if c.lit(" mark & ") => {
            let mask = hex32(c.token()?)?;
            c.lit(" == ").then_some(())?;
            if hex32(c.token()?)? != 0 {
                return None;
            }
            Item::Match(Match::MarkClear(mask))
        }
        "meta" if c.lit(" mark set meta mark ") => {
            let xor = if c.lit("| ") {
                false
            } else if c.lit("^ ") {
                true
            } else {
                return None;
            };
            let bits = hex32(c.token()?)?;
            Item::Stmt(if xor {
                Stmt::MarkXor(bits)
            } else {
                Stmt::MarkOr(bits)
            })
        }
        "meta"
            if c.peek(" l4proto ") && {
                let mut d = c.clone();
                d.lit(" l4proto ");
                d.token().and_then(proto).is_some()
            } =>
        {
            c.lit(" l4proto ");
            Item::Match(Match::L4Proto(proto(c.token()?)?))
        }
        // `numgen random mod M == 0`; other `numgen` items are key fields.
        "numgen"
            if {
                let mut d = c.clone();
                d.lit(" random mod ") && d.token().is_some() && d.peek(" == ")
            } =>
        {
            c.lit(" random mod ");
            let modulus: u32 = dec(c.token()?)?;
            if modulus == 0 || !c.lit(" == 0") || !(c.done() || c.peek(" ")) {
                return None;
            }
            Item::Match(Match::NumgenRandomZero { modulus })
        }
        "masquerade" => Item::Stmt(Stmt::Masquerade {
            fully_random: c.lit(" fully-random"),
        }),
        "reject" => Item::Stmt(Stmt::Reject),
        "dnat" => {
            if c.lit(" to ") {
                let w = c.token()?;
                let (a, p) = w.rsplit_once(':')?;
                let addr = match a.strip_prefix('[') {
                    Some(v6) => {
                        let a = address(v6.strip_suffix(']')?)?;
                        a.is_ipv6().then_some(a)?
                    }
                    None => {
                        let a = address(a)?;
                        a.is_ipv4().then_some(a)?
                    }
                };
                Item::Stmt(Stmt::Dnat {
                    addr,
                    port: dec(p)?,
                })
            } else {
                c.lit(" ").then_some(())?;
                if c.family()? != fam || !c.lit(" addr . port to ") {
                    return None;
                }
                let key = key(c, fam)?;
                c.lit(" map @").then_some(())?;
                Item::Stmt(Stmt::DnatMap {
                    key,
                    map: c.name()?.to_string(),
                })
            }
        }
        "redirect" => {
            c.lit(" to :").then_some(())?;
            let key = key(c, fam)?;
            c.lit(" map @").then_some(())?;
            Item::Stmt(Stmt::RedirectMap {
                key,
                map: c.name()?.to_string(),
            })
        }
        "update" => {
            c.lit(" @").then_some(())?;
            let set = c.name()?.to_string();
            c.lit(" { ").then_some(())?;
            let key = key(c, fam)?;
            c.lit(" timeout ").then_some(())?;
            let timeout = c.secs()?;
            let mut data = Vec::new();
            if c.lit(" : ") {
                data = dot_list(c, |c| untyped_value(c.token()?))?;
            }
            c.lit(" }").then_some(())?;
            Item::Stmt(Stmt::Update {
                set,
                key,
                timeout,
                data,
            })
        }
        "comment" => {
            c.lit(" ").then_some(())?;
            Item::Comment(c.string()?.to_string())
        }
        "accept" | "drop" | "return" | "jump" | "goto" => {
            c.pos = save;
            Item::Verdict(verdict(c)?)
        }
        _ => {
            // A key: a lookup, an address match or a verdict map.
            c.pos = save;
            let key = key(c, fam)?;
            let negate = c.lit(" != ");
            if !negate && !c.lit(" ") {
                return None;
            }
            if !negate && c.lit("vmap @") {
                return Some(Item::Stmt(Stmt::Vmap {
                    key,
                    map: c.name()?.to_string(),
                }));
            }
            let addr = if c.lit("@") {
                AddrMatch::Set(c.name()?.to_string())
            } else if matches!(key[..], [Field::Saddr | Field::Daddr]) {
                AddrMatch::Net(net(c.token()?)?.unwrap_or_else(IpNet::from))
            } else {
                return None;
            };
            // pest reads a one-field address key as an address match.
            Item::Match(match (&key[..], addr) {
                ([Field::Saddr], addr) => Match::Saddr { negate, addr },
                ([Field::Daddr], addr) => Match::Daddr { negate, addr },
                (_, AddrMatch::Set(set)) => Match::Lookup { key, set, negate },
                (_, AddrMatch::Net(_)) => return None,
            })
        }
    })
}

fn verdict(c: &mut Cur) -> Option<Verdict> {
    Some(match c.word()? {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "return" => Verdict::Return,
        "jump" => {
            c.lit(" ").then_some(())?;
            Verdict::Jump(c.name()?.to_string())
        }
        "goto" => {
            c.lit(" ").then_some(())?;
            Verdict::Goto(c.name()?.to_string())
        }
        _ => return None,
    })
}

fn addr_dir(c: &mut Cur) -> Option<Field> {
    Some(match c.word()? {
        "saddr" => Field::Saddr,
        "daddr" => Field::Daddr,
        _ => return None,
    })
}

/// `random mod M [offset O]` (after `numgen `).
fn numgen_rest(c: &mut Cur) -> Option<Field> {
    c.lit("random mod ").then_some(())?;
    let modulus: u32 = dec(c.token()?)?;
    if modulus == 0 {
        return None;
    }
    let offset = if c.lit(" offset ") {
        dec(c.token()?)?
    } else {
        0
    };
    Some(Field::Numgen { modulus, offset })
}

/// Packet fields joined by ` . `, as the renderer writes them for the table's family.
fn key(c: &mut Cur, fam: Family) -> Option<Vec<Field>> {
    dot_list(c, |c| {
        if c.lit("numgen ") {
            return numgen_rest(c);
        }
        Some(match c.word()? {
            "meta" => {
                c.lit(" l4proto").then_some(())?;
                Field::L4Proto
            }
            "th" => {
                c.lit(" dport").then_some(())?;
                Field::Dport
            }
            w @ ("ip" | "ip6") => {
                if w != fam.keyword() || !c.lit(" ") {
                    return None;
                }
                addr_dir(c)?
            }
            _ => return None,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// A cursor over one line
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Cur<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str) -> Self {
        Cur { s, pos: 0 }
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn done(&self) -> bool {
        self.pos == self.s.len()
    }
    fn peek(&self, lit: &str) -> bool {
        self.rest().starts_with(lit)
    }
    /// Consumes `lit` if the rest starts with it.
    fn lit(&mut self, lit: &str) -> bool {
        let ok = self.peek(lit);
        if ok {
            self.pos += lit.len();
        }
        ok
    }
    /// Up to the next space or comma (or the end); `None` if empty.
    fn token(&mut self) -> Option<&'a str> {
        let r = self.rest();
        let n = r.find([' ', ',']).unwrap_or(r.len());
        if n == 0 {
            return None;
        }
        self.pos += n;
        Some(&r[..n])
    }
    /// A run of ASCII letters, digits and `_` (a keyword); `None` if empty.
    fn word(&mut self) -> Option<&'a str> {
        let r = self.rest();
        let n = r
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(r.len());
        if n == 0 {
            return None;
        }
        self.pos += n;
        Some(&r[..n])
    }
    fn family(&mut self) -> Option<Family> {
        match self.word()? {
            "ip" => Some(Family::Ip),
            "ip6" => Some(Family::Ip6),
            _ => None,
        }
    }
    /// An nft identifier, up to the next space or comma.
    fn name(&mut self) -> Option<&'a str> {
        let save = self.pos;
        let w = self.token()?;
        if is_name(w) {
            Some(w)
        } else {
            self.pos = save;
            None
        }
    }
    /// `"…"` (at most [`MAX_COMMENT`] bytes, as pest checks), without the quotes.
    fn string(&mut self) -> Option<&'a str> {
        let r = self.rest().strip_prefix('"')?;
        let end = r.find('"')?;
        let s = &r[..end];
        if s.len() > MAX_COMMENT {
            return None;
        }
        self.pos += end + 2;
        Some(s)
    }
    /// `Ns`: a duration in whole seconds as the renderer writes it.
    fn secs(&mut self) -> Option<u32> {
        let t = self.token()?;
        dec(t.strip_suffix('s')?)
    }
    fn int<T: TryFrom<u64>>(&mut self) -> Option<T> {
        dec(self.token()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(text: &str) -> Outcome {
        parse_reader(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_rule_it_does_not_know_goes_to_pest_alone() {
        // `tcp dport` is the listing dialect: pest reads it (and restores the l4proto match).
        let text = "table ip t {\n\tchain c {\n\t\tip daddr . tcp dport @s accept\n\t\tip daddr 10.0.0.1 accept\n\t}\n}\n";
        let Outcome::Parsed(p) = fast(text) else {
            panic!("not parsed")
        };
        assert_eq!(p.pest_statements, 1);
        assert_eq!(p.ruleset, crate::parse_ruleset(text).unwrap());
    }

    #[test]
    fn an_element_it_does_not_know_sends_its_set_to_pest() {
        let text = "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = {\n\t\t\t10.0.0.1, 10.0.0.2\n\t\t}\n\t}\n}\n";
        let Outcome::Parsed(p) = fast(text) else {
            panic!("not parsed")
        };
        assert_eq!(p.pest_statements, 1);
        assert_eq!(p.ruleset.tables[0].sets[0].elements.len(), 2);
        assert_eq!(p.ruleset, crate::parse_ruleset(text).unwrap());
    }

    #[test]
    fn errors_are_left_to_pest_for_the_whole_file() {
        for text in [
            "table ip t {\n\tchain c {\n\t\tbogus\n\t}\n}\n",
            "table ip t {\n\tchain c {\n\t}\n\tchain c {\n\t}\n}\n",
            "table ip t {\n\tchain c {\n\t\taccept \\\n\t}\n}\n",
            "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = {\n\t\t\t10.0.0.256\n\t\t}\n\t}\n}\n",
        ] {
            assert!(
                matches!(fast(text), Outcome::Unrecognized(_)),
                "{text}"
            );
            assert_eq!(
                parse_ruleset_fast(text),
                crate::parse_ruleset(text),
                "{text}"
            );
        }
    }
}
