//! The normal form in which a compiled model and a parsed `nft list` output are compared
//! (documented on [`normalize_for_compare`]).

use std::collections::HashSet;

use svcc_compiler::nft::model::{
    AddrMatch, ElemData, Field, L4Proto, Match, Rule, Ruleset, Set, Stmt, Table, Value,
};
use svcc_compiler::nft::render::quote;

/// The size nft gives a set that rules add elements to, when it has none.
pub const DEFAULT_DYNAMIC_SIZE: u32 = 65535;

/// Applies to a compiled model the normalisation that loading it into the kernel and reading it
/// back with `nft list` applies, so that
/// `normalize_for_compare(&compiled) == parse_nft_list(&listing)?` holds when the kernel has
/// what was compiled. Idempotent, except for rules with two different `meta l4proto` matches
/// (which match no packet).
///
/// nft does not print back everything it was given, and prints some things differently. The
/// normal form keeps what survives a trip through the kernel and spells it one way:
///
/// * comments as `render::quote` writes them (no `"` or newlines, at most 128 bytes);
/// * a set used by `update @set` is `dynamic` with `size 65535` unless it has a size; a set
///   with a default timeout has the `timeout` flag; a zero timeout is no timeout;
/// * elements of dynamic sets are dropped (the packet path adds and expires them); the other
///   elements are sorted by key;
/// * prefixes are truncated to their network (`10.1.2.3/8` is `10.0.0.0/8`), and a full-length
///   prefix in an element is the plain address;
/// * a one-field lookup `ip saddr @s` is the address match `Match::Saddr { addr: Set(s) }`
///   (both print the same);
/// * `meta mark ^ 0` is `meta mark | 0` (nft prints both as `meta mark set meta mark`);
/// * nft drops the `meta l4proto P` match that is the dependency of a `th dport` (and prints
///   that `th dport` as `P dport`); the parser puts it back, and the normal form keeps one
///   `meta l4proto P` match per protocol, right before the first use of a `dport` it gives the
///   protocol of (at the end of the matches if that use is a statement), else where it was.
///   Matches are a side-effect-free conjunction, so this changes nothing a packet sees.
pub fn normalize_for_compare(m: &Ruleset) -> Ruleset {
    let mut rs = m.clone();
    for t in &mut rs.tables {
        normalize_table(t);
    }
    rs
}

/// A comment as the renderer writes it (`String`, or an element's shared `Arc<str>`).
fn norm_comment<S: AsRef<str> + for<'a> From<&'a str>>(c: &mut Option<S>) {
    if let Some(s) = c {
        let q = quote(s.as_ref());
        *s = S::from(&q[1..q.len() - 1]);
    }
}

fn normalize_table(t: &mut Table) {
    norm_comment(&mut t.comment);
    let updated: HashSet<String> = t
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .flat_map(|r| &r.stmts)
        .filter_map(|s| match s {
            Stmt::Update { set, .. } => Some(set.clone()),
            _ => None,
        })
        .collect();
    for s in &mut t.sets {
        normalize_set(s, updated.contains(&s.name));
    }
    for c in &mut t.chains {
        norm_comment(&mut c.comment);
        for r in &mut c.rules {
            normalize_rule(r);
        }
    }
}

fn normalize_set(s: &mut Set, updated: bool) {
    norm_comment(&mut s.comment);
    if s.timeout == Some(0) {
        s.timeout = None;
    }
    if s.timeout.is_some() {
        s.flags.timeout = true;
    }
    if updated {
        s.flags.dynamic = true;
        s.size.get_or_insert(DEFAULT_DYNAMIC_SIZE);
    }
    if s.flags.dynamic {
        s.elements.clear();
    }
    for e in &mut s.elements {
        norm_comment(&mut e.comment);
        e.key.iter_mut().for_each(normalize_value);
        if let Some(ElemData::Values(v)) = &mut e.data {
            v.iter_mut().for_each(normalize_value);
        }
    }
    s.elements.sort_by(|a, b| a.key.cmp(&b.key));
}

fn normalize_value(v: &mut Value) {
    if let Value::Prefix(p) = v {
        let t = p.trunc();
        *v = if t.prefix_len() == t.max_prefix_len() {
            Value::Addr(t.addr())
        } else {
            Value::Prefix(t)
        };
    }
}

fn normalize_rule(r: &mut Rule) {
    norm_comment(&mut r.comment);
    canonical_l4proto(r);
    for m in &mut r.matches {
        match m {
            Match::Lookup { key, set, negate }
                if key.len() == 1 && matches!(key[0], Field::Saddr | Field::Daddr) =>
            {
                let addr = AddrMatch::Set(std::mem::take(set));
                *m = match key[0] {
                    Field::Saddr => Match::Saddr {
                        negate: *negate,
                        addr,
                    },
                    _ => Match::Daddr {
                        negate: *negate,
                        addr,
                    },
                };
            }
            Match::Saddr {
                addr: AddrMatch::Net(n),
                ..
            }
            | Match::Daddr {
                addr: AddrMatch::Net(n),
                ..
            } => {
                *n = n.trunc();
            }
            _ => {}
        }
    }
    for s in &mut r.stmts {
        match s {
            Stmt::MarkXor(0) => *s = Stmt::MarkOr(0),
            Stmt::Update { data, .. } => data.iter_mut().for_each(normalize_value),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `meta l4proto` dependencies
// ---------------------------------------------------------------------------------------------
//
// nft (src/netlink_delinearize.c) remembers the last `meta l4proto P` match of a rule as the
// dependency of the transport header. When it then meets a `th dport` load, it prints it as
// `P dport` and drops that match (once; later `th dport`s are still printed `P dport`). A
// statement other than an expression statement (here: anything but `vmap`) makes it forget
// the dependency, so a `th dport` after, say, `meta mark set` leaves the match in place. The
// listing therefore says which `dport`s were qualified, not where the match was.

fn key_has_dport(key: &[Field]) -> bool {
    key.contains(&Field::Dport)
}

fn match_uses_dport(m: &Match) -> bool {
    matches!(m, Match::Lookup { key, .. } if key_has_dport(key))
}

fn stmt_uses_dport(s: &Stmt) -> bool {
    match s {
        Stmt::DnatMap { key, .. }
        | Stmt::RedirectMap { key, .. }
        | Stmt::Update { key, .. }
        | Stmt::Vmap { key, .. } => key_has_dport(key),
        _ => false,
    }
}

/// The canonical place of the `meta l4proto` matches of a rule. nft's listing keeps the order
/// of the other matches but may drop one `meta l4proto P` match (the dependency of the first
/// `th dport` after it), so the normal form puts, for each protocol, one match:
/// right before the first match using a `dport` resolved to that protocol (at the end of the
/// matches when the first such use is a statement), or else where the first match of that
/// protocol was. The other matches keep their order; duplicate `meta l4proto` matches go.
///
/// Matches are a side-effect-free conjunction, so this changes nothing a packet sees. It is
/// idempotent except for rules with two different `meta l4proto` matches (which match no packet).
fn canonical_l4proto(r: &mut Rule) {
    if !r.matches.iter().any(|m| matches!(m, Match::L4Proto(_))) {
        return;
    }
    // slot = index among the other matches before which the match goes (len: at the end)
    struct Place {
        proto: L4Proto,
        slot: usize,
        by_use: bool,
        seq: usize,
    }
    let mut places: Vec<Place> = Vec::new();
    let mut others = Vec::with_capacity(r.matches.len());
    let mut ctx: Option<L4Proto> = None;
    let mut seq = 0;
    // The first use of a `dport` resolved to `ctx` fixes where that protocol's match goes.
    fn resolve(places: &mut [Place], ctx: Option<L4Proto>, slot: usize, seq: &mut usize) {
        if let Some(p) = ctx {
            let pl = places
                .iter_mut()
                .find(|x| x.proto == p)
                .expect("ctx comes from a match");
            if !pl.by_use {
                pl.by_use = true;
                pl.slot = slot;
                *seq += 1;
                pl.seq = *seq;
            }
        }
    }
    for m in std::mem::take(&mut r.matches) {
        match m {
            Match::L4Proto(p) => {
                ctx = Some(p);
                if !places.iter().any(|x| x.proto == p) {
                    seq += 1;
                    places.push(Place {
                        proto: p,
                        slot: others.len(),
                        by_use: false,
                        seq,
                    });
                }
            }
            m => {
                if match_uses_dport(&m) {
                    resolve(&mut places, ctx, others.len(), &mut seq);
                }
                others.push(m);
            }
        }
    }
    if r.stmts.iter().any(stmt_uses_dport) {
        resolve(&mut places, ctx, others.len(), &mut seq);
    }
    places.sort_by_key(|p| (p.slot, p.by_use, p.seq));
    let mut out = Vec::with_capacity(others.len() + places.len());
    let mut pi = places.iter().peekable();
    for (i, m) in others.into_iter().enumerate() {
        while let Some(p) = pi.next_if(|p| p.slot == i) {
            out.push(Match::L4Proto(p.proto));
        }
        out.push(m);
    }
    out.extend(pi.map(|p| Match::L4Proto(p.proto)));
    r.matches = out;
}

/// Reading a listing: `match_res[i]` / `stmt_res[j]` is the protocol that match's or
/// statement's `dport` was printed with (`tcp dport`), if any. Puts a `meta l4proto P` match
/// right before each match whose `dport` is qualified with a protocol the rule has not matched
/// yet, or at the end of the matches for such a statement.
pub(crate) fn restore_l4proto_deps(
    r: &mut Rule,
    match_res: &[Option<L4Proto>],
    stmt_res: &[Option<L4Proto>],
) {
    if match_res.iter().chain(stmt_res).all(Option::is_none) {
        return;
    }
    let mut ctx: Option<L4Proto> = None;
    let mut out = Vec::with_capacity(r.matches.len() + 1);
    for (m, res) in std::mem::take(&mut r.matches).into_iter().zip(match_res) {
        if let Some(p) = res {
            if ctx != Some(*p) {
                out.push(Match::L4Proto(*p));
                ctx = Some(*p);
            }
        }
        if let Match::L4Proto(p) = &m {
            ctx = Some(*p);
        }
        out.push(m);
    }
    for p in stmt_res.iter().flatten() {
        if ctx != Some(*p) {
            out.push(Match::L4Proto(*p));
            ctx = Some(*p);
        }
    }
    r.matches = out;
}
