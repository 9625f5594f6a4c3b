//! What a transaction does, before it is encoded: a full replace of svcc's tables, or the
//! difference between the model the kernel holds (as last applied) and the desired one.
//! The same steps give the netlink batch and the nft script shown by `--dry-run` / `diff`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use crate::model::*;
use svcc_compiler::nft::delta::{ChainChange, Delta};

/// One step of a transaction. Borrowed from the desired model (adds) or the applied one (deletes).
#[derive(Debug, Clone)]
pub enum Op<'m> {
    /// `table F N`: create if absent, so that the delete that follows cannot fail.
    EnsureTable {
        fam: Family,
        name: &'m str,
    },
    DelTable {
        fam: Family,
        name: &'m str,
    },
    AddTable {
        table: &'m Table,
        marker: Vec<u8>,
    },
    AddChain {
        fam: Family,
        table: &'m str,
        chain: &'m Chain,
    },
    FlushChain {
        fam: Family,
        table: &'m str,
        chain: &'m Chain,
    },
    DelChain {
        fam: Family,
        table: &'m str,
        chain: &'m Chain,
    },
    AddSet {
        fam: Family,
        table: &'m str,
        set: &'m Set,
    },
    AddElems {
        fam: Family,
        table: &'m str,
        set: &'m Set,
        elems: Vec<&'m Element>,
    },
    DelElems {
        fam: Family,
        table: &'m str,
        set: &'m Set,
        elems: Vec<&'m Element>,
    },
    AddRule {
        fam: Family,
        table: &'m str,
        chain: &'m str,
        index: usize,
        rule: &'m Rule,
    },
    /// Test hook: a rule the kernel must refuse (it jumps to a chain that does not exist).
    Invalid {
        fam: Family,
        table: &'m str,
        chain: &'m str,
        rule: Box<Rule>,
    },
}

/// Name of the chain the test hook's invalid rule jumps to.
pub const MISSING_CHAIN: &str = "svcc-test-missing-chain";

impl Op<'_> {
    /// Which object this step is about, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Op::EnsureTable { fam, name } => format!("table {} {} (ensure)", fam.keyword(), name),
            Op::DelTable { fam, name } => format!("table {} {} (delete)", fam.keyword(), name),
            Op::AddTable { table, .. } => {
                format!(
                    "table {} {}{}",
                    table.family.keyword(),
                    table.name,
                    comment_suffix(&table.comment)
                )
            }
            Op::AddChain { fam, table, chain } => {
                format!(
                    "chain {} {} {}{}",
                    fam.keyword(),
                    table,
                    chain.name,
                    comment_suffix(&chain.comment)
                )
            }
            Op::FlushChain { fam, table, chain } => {
                format!("flush of chain {} {} {}", fam.keyword(), table, chain.name)
            }
            Op::DelChain { fam, table, chain } => {
                format!(
                    "deletion of chain {} {} {}{}",
                    fam.keyword(),
                    table,
                    chain.name,
                    comment_suffix(&chain.comment)
                )
            }
            Op::AddSet { fam, table, set } => {
                let k = if set.is_map() { "map" } else { "set" };
                format!(
                    "{k} {} {} {}{}",
                    fam.keyword(),
                    table,
                    set.name,
                    comment_suffix(&set.comment)
                )
            }
            Op::AddElems {
                fam,
                table,
                set,
                elems,
            } => {
                format!(
                    "{} element(s) added to {} {} {}",
                    elems.len(),
                    fam.keyword(),
                    table,
                    set.name
                )
            }
            Op::DelElems {
                fam,
                table,
                set,
                elems,
            } => {
                format!(
                    "{} element(s) deleted from {} {} {}",
                    elems.len(),
                    fam.keyword(),
                    table,
                    set.name
                )
            }
            Op::AddRule {
                fam,
                table,
                chain,
                index,
                rule,
            } => format!(
                "rule #{} of chain {} {} {} `{}`",
                index + 1,
                fam.keyword(),
                table,
                chain,
                rule_text(*fam, rule)
            ),
            Op::Invalid {
                fam,
                table,
                chain,
                rule,
            } => format!(
                "rule (test hook) of chain {} {} {} `{}`",
                fam.keyword(),
                table,
                chain,
                rule_text(*fam, rule)
            ),
        }
    }

    /// The element at index `i` of an element step, as nft writes it.
    pub fn element(&self, i: usize) -> Option<String> {
        match self {
            Op::AddElems { set, elems, .. } | Op::DelElems { set, elems, .. } => {
                elems.get(i).map(|e| element_text(set, e, true))
            }
            _ => None,
        }
    }

    pub fn comment(&self) -> Option<&str> {
        match self {
            Op::AddTable { table, .. } => table.comment.as_deref(),
            Op::AddChain { chain, .. } | Op::DelChain { chain, .. } => chain.comment.as_deref(),
            Op::AddSet { set, .. } => set.comment.as_deref(),
            Op::AddRule { rule, .. } => rule.comment.as_deref(),
            Op::Invalid { rule, .. } => rule.comment.as_deref(),
            _ => None,
        }
    }
}

fn comment_suffix(c: &Option<String>) -> String {
    match c {
        Some(c) => format!(" (comment {})", quote(c)),
        None => String::new(),
    }
}

pub fn element_text(set: &Set, e: &Element, data: bool) -> String {
    let mut s = String::new();
    write_values(&mut s, &e.key);
    if !data {
        return s;
    }
    if let Some(c) = &e.comment {
        let _ = write!(s, " comment {}", quote(c));
    }
    match &e.data {
        Some(ElemData::Verdict(v)) => {
            s.push_str(" : ");
            write_verdict(&mut s, v);
        }
        Some(ElemData::Values(v)) => {
            s.push_str(" : ");
            write_values(&mut s, v);
        }
        None => {}
    }
    let _ = set;
    s
}

/// Counts for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub tables_replaced: usize,
    pub tables_deleted: usize,
    pub chains_added: usize,
    pub chains_deleted: usize,
    pub chains_replaced: usize,
    pub rules_added: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
}

pub struct Plan<'m> {
    pub ops: Vec<Op<'m>>,
    pub full: bool,
    /// Why a full replace (or "incremental").
    pub reason: String,
}

impl<'m> Plan<'m> {
    pub fn changes(&self) -> Changes {
        let mut c = Changes::default();
        for op in &self.ops {
            match op {
                Op::AddTable { .. } => c.tables_replaced += 1,
                Op::DelTable { .. } if !self.full => c.tables_deleted += 1,
                Op::AddChain { .. } => c.chains_added += 1,
                Op::DelChain { .. } => c.chains_deleted += 1,
                Op::FlushChain { .. } => c.chains_replaced += 1,
                Op::AddRule { .. } | Op::Invalid { .. } => c.rules_added += 1,
                Op::AddElems { elems, .. } => c.elements_added += elems.len(),
                Op::DelElems { elems, .. } => c.elements_deleted += elems.len(),
                _ => {}
            }
        }
        if self.full {
            // A replaced table's ensure/delete pair is not a deletion; removed tables are.
            let added: HashSet<(Family, &str)> = self
                .ops
                .iter()
                .filter_map(|o| match o {
                    Op::AddTable { table, .. } => Some((table.family, table.name.as_str())),
                    _ => None,
                })
                .collect();
            c.tables_deleted = self
                .ops
                .iter()
                .filter(
                    |o| matches!(o, Op::DelTable { fam, name } if !added.contains(&(*fam, *name))),
                )
                .count();
        }
        c
    }

    /// The transaction as an `nft -f` script.
    pub fn script(&self) -> String {
        let mut out = String::new();
        if self.full {
            out.push_str("# svcc: full replace of svcc's tables, in one transaction\n");
        } else {
            out.push_str("# svcc: incremental update, in one transaction\n");
        }
        for op in &self.ops {
            let whole = matches!(
                op,
                Op::EnsureTable { .. }
                    | Op::DelTable { .. }
                    | Op::AddTable { .. }
                    | Op::Invalid { .. }
            );
            // In a full replace the table text already holds its chains, sets and rules.
            if !self.full || whole {
                let _ = write_op(&mut out, op);
            }
        }
        out
    }
}

fn write_op(out: &mut String, op: &Op) -> std::fmt::Result {
    match op {
        Op::EnsureTable { fam, name } => writeln!(out, "table {} {}", fam.keyword(), name),
        Op::DelTable { fam, name } => writeln!(out, "delete table {} {}", fam.keyword(), name),
        Op::AddTable { table, .. } => {
            // The whole table, sets, chains and rules included (the following steps of a full
            // replace are its parts and print nothing).
            out.push_str(&render_table(table));
            Ok(())
        }
        Op::AddChain { fam, table, chain } => {
            if chain.base.is_some() {
                return Ok(()); // only in full replaces, printed with the table
            }
            write!(out, "add chain {} {} {}", fam.keyword(), table, chain.name)?;
            if let Some(c) = &chain.comment {
                write!(out, " {{ comment {}; }}", quote(c))?;
            }
            out.push('\n');
            Ok(())
        }
        Op::FlushChain { fam, table, chain } => writeln!(
            out,
            "flush chain {} {} {}",
            fam.keyword(),
            table,
            chain.name
        ),
        Op::DelChain { fam, table, chain } => writeln!(
            out,
            "delete chain {} {} {}",
            fam.keyword(),
            table,
            chain.name
        ),
        Op::AddSet { .. } => Ok(()),
        Op::AddElems {
            fam,
            table,
            set,
            elems,
        }
        | Op::DelElems {
            fam,
            table,
            set,
            elems,
        } => {
            let (verb, data) = match op {
                Op::AddElems { .. } => ("add", true),
                _ => ("delete", false),
            };
            writeln!(
                out,
                "{verb} element {} {} {} {{",
                fam.keyword(),
                table,
                set.name
            )?;
            let n = elems.len();
            for (i, e) in elems.iter().enumerate() {
                out.push('\t');
                out.push_str(&element_text(set, e, data));
                out.push_str(if i + 1 < n { ",\n" } else { "\n" });
            }
            out.push_str("}\n");
            Ok(())
        }
        Op::AddRule {
            fam,
            table,
            chain,
            rule,
            ..
        } => add_rule_line(out, *fam, table, chain, rule),
        Op::Invalid {
            fam,
            table,
            chain,
            rule,
        } => add_rule_line(out, *fam, table, chain, rule),
    }
}

/// Ops of a full replace. `present`: owned tables the kernel holds now (to delete those that
/// the desired ruleset no longer has).
pub fn full<'m>(
    desired: &'m Ruleset,
    markers: &[Vec<u8>],
    present: &[(Family, &'m str)],
    reason: String,
) -> Plan<'m> {
    let mut ops = Vec::new();
    for t in &desired.tables {
        ops.push(Op::EnsureTable {
            fam: t.family,
            name: &t.name,
        });
        ops.push(Op::DelTable {
            fam: t.family,
            name: &t.name,
        });
    }
    for (fam, name) in present {
        if !desired
            .tables
            .iter()
            .any(|t| t.family == *fam && t.name == *name)
        {
            ops.push(Op::DelTable { fam: *fam, name });
        }
    }
    for (t, marker) in desired.tables.iter().zip(markers) {
        push_table(&mut ops, t, marker.clone());
    }
    Plan {
        ops,
        full: true,
        reason,
    }
}

/// A whole table: table, chains, sets, rules, then the sets' elements.
///
/// Elements go last (nft -f sends each set's elements with the set, before the rules): when a
/// rule binds a map (`dnat … map @endpoints-k`, `vmap @service-ips`), the kernel walks the map's
/// elements to check them against the binding (`nf_tables_bind_set`), once per binding rule,
/// while an element added to an already bound map is checked against each binding without a
/// walk. With 16 service ports bound to each endpoint map, the walks were ≈ 30 % of the
/// kernel's time for a 10k-service load (perf, docs/PERFORMANCE.md).
fn push_table<'m>(ops: &mut Vec<Op<'m>>, t: &'m Table, marker: Vec<u8>) {
    let (fam, tn) = (t.family, t.name.as_str());
    ops.push(Op::AddTable { table: t, marker });
    for c in &t.chains {
        ops.push(Op::AddChain {
            fam,
            table: tn,
            chain: c,
        });
    }
    for s in &t.sets {
        ops.push(Op::AddSet {
            fam,
            table: tn,
            set: s,
        });
    }
    for c in &t.chains {
        add_rules(ops, fam, tn, c);
    }
    for s in &t.sets {
        if !s.elements.is_empty() {
            ops.push(Op::AddElems {
                fam,
                table: tn,
                set: s,
                elems: s.elements.iter().collect(),
            });
        }
    }
}

/// Appends every rule of `c`, in order.
fn add_rules<'m>(ops: &mut Vec<Op<'m>>, fam: Family, tn: &'m str, c: &'m Chain) {
    for (i, r) in c.rules.iter().enumerate() {
        ops.push(Op::AddRule {
            fam,
            table: tn,
            chain: &c.name,
            index: i,
            rule: r,
        });
    }
}

/// Why `old` -> `new` cannot be done incrementally, if so.
fn structural_change(old: &Table, new: &Table) -> Option<String> {
    if old.comment != new.comment {
        return Some("table comment changed".into());
    }
    if old.sets.len() != new.sets.len() {
        return Some("sets added or removed".into());
    }
    for (a, b) in old.sets.iter().zip(&new.sets) {
        if a.name != b.name
            || a.key != b.key
            || a.data != b.data
            || a.flags != b.flags
            || a.timeout != b.timeout
            || a.size != b.size
            || a.comment != b.comment
        {
            return Some(format!("set {} changed", b.name));
        }
    }
    let old_chains: HashMap<&str, &Chain> =
        old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    for c in &new.chains {
        match old_chains.get(c.name.as_str()) {
            Some(o) if o.base != c.base || o.comment != c.comment => {
                return Some(format!("chain {} changed type or comment", c.name));
            }
            None if c.base.is_some() => return Some(format!("base chain {} added", c.name)),
            _ => {}
        }
    }
    let new_names: HashSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
    if let Some(c) = old
        .chains
        .iter()
        .find(|c| c.base.is_some() && !new_names.contains(c.name.as_str()))
    {
        return Some(format!("base chain {} removed", c.name));
    }
    None
}

/// The difference `old` -> `new` of tables with the same family and name, or why not.
pub fn incremental<'m>(old: &'m Ruleset, new: &'m Ruleset) -> Result<Plan<'m>, String> {
    let key = |t: &Table| (t.family, t.name.clone());
    let ok: Vec<_> = old.tables.iter().map(key).collect();
    let nk: Vec<_> = new.tables.iter().map(key).collect();
    if ok != nk {
        return Err("tables added or removed".into());
    }
    let mut ops = Vec::new();
    for (o, n) in old.tables.iter().zip(&new.tables) {
        if let Some(why) = structural_change(o, n) {
            return Err(why);
        }
        table_diff(&mut ops, o, n);
    }
    Ok(Plan {
        ops,
        full: false,
        reason: "incremental".into(),
    })
}

fn table_diff<'m>(ops: &mut Vec<Op<'m>>, old: &'m Table, new: &'m Table) {
    let (fam, tn) = (new.family, new.name.as_str());
    let old_chains: HashMap<&str, &Chain> =
        old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_names: HashSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();

    // 1. New chains first: rules and map elements added below may jump to them.
    for c in &new.chains {
        if !old_chains.contains_key(c.name.as_str()) {
            ops.push(Op::AddChain {
                fam,
                table: tn,
                chain: c,
            });
        }
    }
    // 2. Rules: changed chains are flushed and refilled; new chains filled.
    for c in &new.chains {
        let refill = match old_chains.get(c.name.as_str()) {
            None => true,
            Some(o) if o.rules != c.rules => {
                ops.push(Op::FlushChain {
                    fam,
                    table: tn,
                    chain: c,
                });
                true
            }
            Some(_) => false,
        };
        if refill {
            add_rules(ops, fam, tn, c);
        }
    }
    // 3. Elements: deletions (and the old side of changed elements) before additions.
    let mut adds = Vec::new();
    for (os, ns) in old.sets.iter().zip(&new.sets) {
        // Equal heads and tails are skipped without hashing: a model built in a stable order
        // changes in a few places, so the diff is one comparison pass plus a tiny map.
        let (a, b) = (&os.elements[..], &ns.elements[..]);
        let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let suf = a[pre..]
            .iter()
            .rev()
            .zip(b[pre..].iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        if pre == a.len() && pre == b.len() {
            continue;
        }
        // Keys are unique in a set, so a key in one middle is not in the other's head or tail.
        let (a, b) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
        let old_by_key: HashMap<&[Value], &Element> =
            a.iter().map(|e| (e.key.as_slice(), e)).collect();
        let new_by_key: HashMap<&[Value], &Element> =
            b.iter().map(|e| (e.key.as_slice(), e)).collect();
        let dels: Vec<&Element> = a
            .iter()
            .filter(|e| match new_by_key.get(e.key.as_slice()) {
                None => true,
                Some(n) => *n != *e,
            })
            .collect();
        let add: Vec<&Element> = b
            .iter()
            .filter(|e| match old_by_key.get(e.key.as_slice()) {
                None => true,
                Some(o) => *o != *e,
            })
            .collect();
        if !dels.is_empty() {
            ops.push(Op::DelElems {
                fam,
                table: tn,
                set: os,
                elems: dels,
            });
        }
        if !add.is_empty() {
            adds.push(Op::AddElems {
                fam,
                table: tn,
                set: ns,
                elems: add,
            });
        }
    }
    ops.extend(adds);
    // 4. Removed chains last: no map element or kept chain refers to them any more, but they
    // may refer to each other (an `external-…` chain `goto`s its `service-…` chain): flush
    // them all first, or a delete in the wrong order is refused with EBUSY.
    let removed: Vec<&Chain> = old
        .chains
        .iter()
        .filter(|c| !new_names.contains(c.name.as_str()))
        .collect();
    remove_chains(ops, fam, tn, &removed);
}

/// Deletes chains nothing refers to any more but which may refer to each other: all are
/// flushed first, then deleted (a delete in the wrong order is refused with EBUSY).
fn remove_chains<'m>(ops: &mut Vec<Op<'m>>, fam: Family, tn: &'m str, removed: &[&'m Chain]) {
    for c in removed.iter().filter(|c| !c.rules.is_empty()) {
        ops.push(Op::FlushChain {
            fam,
            table: tn,
            chain: c,
        });
    }
    for c in removed {
        ops.push(Op::DelChain {
            fam,
            table: tn,
            chain: c,
        });
    }
}

fn add_rule_line(
    out: &mut String,
    fam: Family,
    table: &str,
    chain: &str,
    rule: &Rule,
) -> std::fmt::Result {
    writeln!(
        out,
        "add rule {} {} {} {}",
        fam.keyword(),
        table,
        chain,
        rule_text(fam, rule)
    )
}

/// The steps of a delta made by the compile session, against the model the kernel holds
/// (`applied`: its sets give the element types), or why it does not fit that model.
pub fn from_delta<'m>(applied: &'m Ruleset, delta: &'m Delta) -> Result<Plan<'m>, String> {
    let mut ops = Vec::new();
    for td in &delta.tables {
        let (fam, tn) = (td.family, td.name.as_str());
        let table = applied
            .tables
            .iter()
            .find(|t| t.family == fam && t.name == tn)
            .ok_or_else(|| format!("table {} {tn} is not applied", fam.keyword()))?;
        // Same order as a difference of whole models (see `table_diff`): every new chain
        // before any rule, since rules jump to each other's chains.
        for ch in &td.chains {
            if let ChainChange::Add(c) = ch {
                ops.push(Op::AddChain {
                    fam,
                    table: tn,
                    chain: c,
                });
            }
        }
        for ch in &td.chains {
            if let ChainChange::Add(c) = ch {
                add_rules(&mut ops, fam, tn, c);
            }
        }
        for ch in &td.chains {
            if let ChainChange::Replace(c, _) = ch {
                ops.push(Op::FlushChain {
                    fam,
                    table: tn,
                    chain: c,
                });
                add_rules(&mut ops, fam, tn, c);
            }
        }
        let set = |name: &str| {
            table
                .set(name)
                .ok_or_else(|| format!("set {name} is not applied"))
        };
        for sd in td.sets.iter().filter(|s| !s.del.is_empty()) {
            ops.push(Op::DelElems {
                fam,
                table: tn,
                set: set(&sd.set)?,
                elems: sd.del.iter().collect(),
            });
        }
        for sd in td.sets.iter().filter(|s| !s.add.is_empty()) {
            ops.push(Op::AddElems {
                fam,
                table: tn,
                set: set(&sd.set)?,
                elems: sd.add.iter().collect(),
            });
        }
        let removed: Vec<&Chain> = td
            .chains
            .iter()
            .filter_map(|c| match c {
                ChainChange::Remove(c) => Some(c),
                _ => None,
            })
            .collect();
        remove_chains(&mut ops, fam, tn, &removed);
    }
    Ok(Plan {
        ops,
        full: false,
        reason: "incremental (changed services)".into(),
    })
}
