//! A difference between two rulesets of the same layout, made by the compiler from the few
//! service ports that changed instead of by comparing whole models: what the long-running
//! applier sends when only endpoints changed (see [`crate::session`]).
//!
//! Invariant: applying a delta made against the model of a full build gives (up to the order
//! of chains and of set elements) the model a full build of the new inputs gives. The
//! session's tests check it; [`Ruleset::apply_delta`] is how the runtime keeps its copy of
//! what the kernel holds.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::build::ServicePortParts;
use super::model::*;
use crate::family::Family;

/// Changes to svcc's tables. Empty tables are left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub tables: Vec<TableDelta>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableDelta {
    pub family: Family,
    pub name: String,
    pub chains: Vec<ChainChange>,
    /// Element changes of existing sets and maps, by set name.
    pub sets: Vec<SetDelta>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChainChange {
    /// A new regular chain, with its rules.
    Add(Chain),
    /// A chain whose rules changed: flushed and refilled (the new chain, and how many rules
    /// the old one had, so the rule count can follow).
    Replace(Chain, usize),
    /// A chain no longer used (the old one): nothing refers to it after the delta.
    Remove(Chain),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SetDelta {
    pub set: String,
    /// Deleted first (an element whose data changed is deleted, then added).
    pub del: Vec<Element>,
    pub add: Vec<Element>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// How [`Ruleset::stats`] moves when the delta is applied: (added, removed).
    pub fn stats_change(&self) -> (Stats, Stats) {
        let (mut add, mut del) = (Stats::default(), Stats::default());
        for t in &self.tables {
            for c in &t.chains {
                match c {
                    ChainChange::Add(c) => {
                        add.chains += 1;
                        add.rules += c.rules.len();
                    }
                    ChainChange::Replace(c, old_rules) => {
                        add.rules += c.rules.len();
                        del.rules += old_rules;
                    }
                    ChainChange::Remove(c) => {
                        del.chains += 1;
                        del.rules += c.rules.len();
                    }
                }
            }
            for s in &t.sets {
                add.elements += s.add.len();
                del.elements += s.del.len();
            }
        }
        (add, del)
    }
}

/// Why a delta cannot express a change (the caller compiles and applies in full instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotIncremental(pub String);

type ElementCounts = BTreeMap<Vec<Value>, Vec<(Element, u32, u32)>>;

/// Builds the delta of one table from the old and new parts of the service ports that changed.
pub struct TableDeltaBuilder {
    family: Family,
    name: String,
    old_chains: BTreeMap<String, Chain>,
    new_chains: BTreeMap<String, Chain>,
    /// Per set, per key: element -> (times in old parts, times in new parts).
    elements: BTreeMap<&'static str, ElementCounts>,
}

impl TableDeltaBuilder {
    pub fn new(family: Family, name: &str) -> Self {
        TableDeltaBuilder {
            family,
            name: name.into(),
            old_chains: BTreeMap::new(),
            new_chains: BTreeMap::new(),
            elements: BTreeMap::new(),
        }
    }

    /// One service port changed from `old` to `new`.
    pub fn service_port(
        &mut self,
        old: &ServicePortParts,
        new: &ServicePortParts,
    ) -> Result<(), NotIncremental> {
        if old.extra_sets != new.extra_sets {
            return Err(NotIncremental(
                "per-endpoint affinity sets added or removed".into(),
            ));
        }
        for c in &old.chains {
            self.old_chains.insert(c.name.clone(), c.clone());
        }
        for c in &new.chains {
            self.new_chains.insert(c.name.clone(), c.clone());
        }
        for (side, parts) in [(0, old), (1, new)] {
            for (set, e) in &parts.elements {
                let v = self
                    .elements
                    .entry(set)
                    .or_default()
                    .entry(e.key.clone())
                    .or_default();
                let slot = match v.iter_mut().find(|(x, _, _)| x == e) {
                    Some(s) => s,
                    None => {
                        v.push((e.clone(), 0, 0));
                        v.last_mut().unwrap()
                    }
                };
                if side == 0 {
                    slot.1 += 1;
                } else {
                    slot.2 += 1;
                }
            }
        }
        Ok(())
    }

    /// The delta. `shared(set, element, before)` says how many service ports held the element
    /// before the change, for the sets whose elements several service ports share (hairpin,
    /// ClusterIPs); `None` for the sets where each element belongs to one service port.
    pub fn finish(
        self,
        mut shared: impl FnMut(&str, &Element) -> Option<u32>,
    ) -> Result<Option<TableDelta>, NotIncremental> {
        let mut chains = Vec::new();
        for (name, n) in &self.new_chains {
            match self.old_chains.get(name) {
                None => chains.push(ChainChange::Add(n.clone())),
                Some(o) if o.base != n.base || o.comment != n.comment => {
                    return Err(NotIncremental(format!("chain {name} changed its comment")))
                }
                Some(o) if o.rules != n.rules => {
                    chains.push(ChainChange::Replace(n.clone(), o.rules.len()))
                }
                Some(_) => {}
            }
        }
        for (name, o) in &self.old_chains {
            if !self.new_chains.contains_key(name) {
                chains.push(ChainChange::Remove(o.clone()));
            }
        }
        let mut sets = Vec::new();
        for (set, v) in self.elements {
            let (mut del, mut add) = (Vec::new(), Vec::new());
            for (e, before_here, after_here) in v.into_values().flatten() {
                if before_here == after_here {
                    continue;
                }
                match shared(set, &e) {
                    Some(total_before) => {
                        let total_after = (total_before + after_here)
                            .checked_sub(before_here)
                            .ok_or_else(|| {
                                NotIncremental(format!("{set}: element counts disagree"))
                            })?;
                        if total_before > 0 && total_after == 0 {
                            del.push(e);
                        } else if total_before == 0 && total_after > 0 {
                            add.push(e);
                        }
                    }
                    None if after_here == 0 => del.push(e),
                    None => add.push(e),
                }
            }
            if !del.is_empty() || !add.is_empty() {
                sets.push(SetDelta {
                    set: set.to_string(),
                    del,
                    add,
                });
            }
        }
        if chains.is_empty() && sets.is_empty() {
            return Ok(None);
        }
        Ok(Some(TableDelta {
            family: self.family,
            name: self.name,
            chains,
            sets,
        }))
    }
}

impl Ruleset {
    /// Applies a delta to the model (what the kernel holds after the delta's transaction).
    /// Added chains and elements go last; fails if the delta does not fit the model.
    pub fn apply_delta(&mut self, delta: &Delta) -> Result<(), NotIncremental> {
        for td in &delta.tables {
            let t = self
                .tables
                .iter_mut()
                .find(|t| t.family == td.family && t.name == td.name)
                .ok_or_else(|| NotIncremental(format!("no table {}", td.name)))?;
            let removed: HashSet<&str> = td
                .chains
                .iter()
                .filter_map(|c| match c {
                    ChainChange::Remove(c) => Some(c.name.as_str()),
                    _ => None,
                })
                .collect();
            if !removed.is_empty() {
                t.chains.retain(|c| !removed.contains(c.name.as_str()));
            }
            let replaced: HashMap<&str, &Chain> = td
                .chains
                .iter()
                .filter_map(|c| match c {
                    ChainChange::Replace(c, _) => Some((c.name.as_str(), c)),
                    _ => None,
                })
                .collect();
            if !replaced.is_empty() {
                let mut found = 0;
                for c in t.chains.iter_mut() {
                    if let Some(n) = replaced.get(c.name.as_str()) {
                        c.rules = n.rules.clone();
                        found += 1;
                    }
                }
                if found != replaced.len() {
                    return Err(NotIncremental("a replaced chain is missing".into()));
                }
            }
            for c in &td.chains {
                if let ChainChange::Add(c) = c {
                    t.chains.push(c.clone());
                }
            }
            for sd in &td.sets {
                let s = t
                    .sets
                    .iter_mut()
                    .find(|s| s.name == sd.set)
                    .ok_or_else(|| NotIncremental(format!("no set {}", sd.set)))?;
                if !sd.del.is_empty() {
                    let gone: HashSet<&[Value]> = sd.del.iter().map(|e| e.key.as_slice()).collect();
                    let before = s.elements.len();
                    s.elements.retain(|e| !gone.contains(e.key.as_slice()));
                    if before - s.elements.len() != gone.len() {
                        return Err(NotIncremental(format!(
                            "{}: a deleted element is missing",
                            sd.set
                        )));
                    }
                }
                s.elements.extend(sd.add.iter().cloned());
            }
        }
        Ok(())
    }
}
