//! Finds the line and column of a field path inside a YAML/JSON file.
//!
//! serde's typed deserialization keeps no spans, so positions are recovered on demand by
//! replaying the file through yaml-rust2's event parser (which carries a marker on every
//! event). It runs only when there is something to report, once per file for all of that
//! file's diagnostics.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diag::PathSeg;

/// For each `(document index, path)` request, the 1-based (line, column) of the deepest
/// existing node along the path (the field itself when it exists, else its nearest parent).
pub fn locate_all(text: &str, requests: &[(usize, Vec<PathSeg>)]) -> Vec<Option<(usize, usize)>> {
    let mut r = Recv {
        requests,
        best: vec![None; requests.len()],
        doc: None,
        stack: Vec::new(),
        pending_key: None,
    };
    let mut p = Parser::new_from_str(text);
    // A syntax error ends the replay; what was found so far is still useful.
    let _ = p.load(&mut r, true);
    // Where the field itself is missing, its parent's line is the best answer, but the
    // parent's column would mislead: report the line alone (column 0).
    r.best
        .into_iter()
        .zip(requests)
        .map(|(b, (_, want))| b.map(|(depth, l, c)| (l, if depth == want.len() { c } else { 0 })))
        .collect()
}

enum Frame {
    /// A mapping: `key` is the key whose value is being read, or None when a key comes next.
    Map {
        key: Option<String>,
    },
    Seq {
        next: usize,
    },
}

struct Recv<'a> {
    requests: &'a [(usize, Vec<PathSeg>)],
    /// (depth matched, line, column)
    best: Vec<Option<(usize, usize, usize)>>,
    doc: Option<usize>,
    stack: Vec<Frame>,
    pending_key: Option<Marker>,
}

impl Recv<'_> {
    fn path(&self) -> Vec<PathSeg> {
        let mut p = Vec::with_capacity(self.stack.len());
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k) } => p.push(PathSeg::Key(k.clone())),
                Frame::Map { key: None } => {}
                Frame::Seq { next } => p.push(PathSeg::Index(*next)),
            }
        }
        p
    }

    fn record(&mut self, path: &[PathSeg], mark: Marker) {
        let Some(doc) = self.doc else { return };
        for (i, (d, want)) in self.requests.iter().enumerate() {
            if *d != doc || path.len() > want.len() || want[..path.len()] != *path {
                continue;
            }
            let better = match self.best[i] {
                None => true,
                Some((depth, _, _)) => path.len() > depth,
            };
            if better {
                self.best[i] = Some((path.len(), mark.line(), mark.col() + 1));
            }
        }
    }

    /// A node (scalar or container start) at the current position.
    fn node_start(&mut self, mark: Marker, scalar: Option<&str>) -> bool {
        // Returns true when the node was a mapping key.
        if let Some(Frame::Map { key }) = self.stack.last_mut() {
            if key.is_none() {
                if let Some(s) = scalar {
                    *key = Some(s.to_string());
                } else {
                    *key = Some(String::new());
                }
                self.pending_key = Some(mark);
                let path = self.path();
                self.record(&path, mark);
                return true;
            }
        }
        let path = self.path();
        let m = self.pending_key.take().unwrap_or(mark);
        self.record(&path, m);
        false
    }

    /// A scalar or alias: a key, or a whole value.
    fn leaf(&mut self, mark: Marker, scalar: Option<&str>) {
        if !self.node_start(mark, scalar) {
            self.node_end();
        }
    }

    /// A node finished: advance the parent.
    fn node_end(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { next }) => *next += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Recv<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.doc = Some(self.doc.map_or(0, |d| d + 1));
                self.stack.clear();
            }
            Event::Scalar(s, ..) => self.leaf(mark, Some(&s)),
            Event::Alias(_) => self.leaf(mark, None),
            Event::MappingStart(..) => {
                self.node_start(mark, None);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.node_start(mark, None);
                self.stack.push(Frame::Seq { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.node_end();
            }
            _ => {}
        }
    }
}

/// serde_yaml_ng places a duplicate-key error at the start of the mapping; the second
/// occurrence is more useful. The replay finds, in document `doc`, the first mapping in which
/// the scalar key `key` appears twice, and returns the second occurrence (1-based).
pub fn duplicate_key(text: &str, doc: usize, key: &str) -> Option<(usize, usize)> {
    struct R<'k> {
        doc: Option<usize>,
        want: usize,
        key: &'k str,
        /// Per open container: Some(keys seen, next node is a key) for mappings.
        open: Vec<Option<(bool, bool)>>,
        found: Option<(usize, usize)>,
    }
    impl R<'_> {
        /// A node starts (scalar: `s`): a key or a value of the innermost mapping.
        fn node(&mut self, s: Option<&str>, mark: Marker) {
            if let Some(Some((seen, at_key))) = self.open.last_mut() {
                if *at_key && s == Some(self.key) {
                    if *seen && self.found.is_none() {
                        self.found = Some((mark.line(), mark.col() + 1));
                    }
                    *seen = true;
                }
                *at_key = !*at_key;
            }
        }
    }
    impl MarkedEventReceiver for R<'_> {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if let Event::DocumentStart = ev {
                self.doc = Some(self.doc.map_or(0, |d| d + 1));
                self.open.clear();
            }
            if self.doc != Some(self.want) || self.found.is_some() {
                return;
            }
            match ev {
                Event::Scalar(s, ..) => self.node(Some(&s), mark),
                Event::Alias(_) => self.node(None, mark),
                Event::MappingStart(..) => {
                    self.node(None, mark);
                    self.open.push(Some((false, true)));
                }
                Event::SequenceStart(..) => {
                    self.node(None, mark);
                    self.open.push(None);
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    self.open.pop();
                }
                _ => {}
            }
        }
    }
    let mut r = R {
        doc: None,
        want: doc,
        key,
        open: Vec::new(),
        found: None,
    };
    let _ = Parser::new_from_str(text).load(&mut r, true);
    r.found
}

/// Where document `doc` starts (its first event: `---` or its first node), 1-based.
pub fn document_start(text: &str, doc: usize) -> Option<(usize, usize)> {
    struct R {
        doc: Option<usize>,
        want: usize,
        found: Option<(usize, usize)>,
    }
    impl MarkedEventReceiver for R {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if let Event::DocumentStart = ev {
                self.doc = Some(self.doc.map_or(0, |d| d + 1));
                if self.doc == Some(self.want) && self.found.is_none() {
                    self.found = Some((mark.line(), mark.col() + 1));
                }
            }
        }
    }
    let mut r = R {
        doc: None,
        want: doc,
        found: None,
    };
    let _ = Parser::new_from_str(text).load(&mut r, true);
    r.found
}

/// serde_yaml_ng refuses a document whose aliases expand too much ("repetition limit
/// exceeded": more alias dereferences than 100 × the document's events — the "billion
/// laughs" attack) without saying where. This replays document `doc` and counts the
/// dereferences as serde does (an alias costs 1 plus those of the aliases inside the node it
/// names, recursively): the answer is the alias at which the count passes the limit, or, if
/// the count never does (serde also dereferences while skipping, so the two can differ a
/// little), the alias that costs the most. Returns its (line, column, dereferences).
pub fn alias_overflow(text: &str, doc: usize) -> Option<(usize, usize, u64)> {
    struct R {
        doc: Option<usize>,
        want: usize,
        events: u64,
        /// Dereferences each anchor's node costs when an alias names it.
        cost: std::collections::HashMap<usize, u64>,
        /// Containers open: their anchor (0: none) and the dereferences inside them so far.
        open: Vec<(usize, u64)>,
        total: u64,
        /// Each alias: its position, its cost, the running total after it.
        aliases: Vec<(Marker, u64, u64)>,
    }
    impl R {
        fn alias(&mut self, id: usize, mark: Marker) {
            let c = 1u64.saturating_add(self.cost.get(&id).copied().unwrap_or(0));
            for o in &mut self.open {
                o.1 = o.1.saturating_add(c);
            }
            self.total = self.total.saturating_add(c);
            self.aliases.push((mark, c, self.total));
        }
    }
    impl MarkedEventReceiver for R {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if let Event::DocumentStart = ev {
                self.doc = Some(self.doc.map_or(0, |d| d + 1));
            }
            if self.doc != Some(self.want) {
                return;
            }
            self.events += 1;
            match ev {
                Event::Alias(id) => self.alias(id, mark),
                Event::Scalar(_, _, id, _) if id != 0 => {
                    self.cost.insert(id, 0);
                }
                Event::MappingStart(id, _) | Event::SequenceStart(id, _) => {
                    self.open.push((id, 0));
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some((id, c)) = self.open.pop() {
                        if id != 0 {
                            self.cost.insert(id, c);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut r = R {
        doc: None,
        want: doc,
        events: 0,
        cost: Default::default(),
        open: Vec::new(),
        total: 0,
        aliases: Vec::new(),
    };
    let _ = Parser::new_from_str(text).load(&mut r, true);
    let limit = r.events.saturating_mul(100);
    let hit = r
        .aliases
        .iter()
        .find(|a| a.2 > limit)
        .or_else(|| r.aliases.iter().max_by_key(|a| a.1))?;
    Some((hit.0.line(), hit.0.col() + 1, hit.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> PathSeg {
        PathSeg::Key(s.into())
    }

    #[test]
    fn finds_fields_in_multi_document_yaml() {
        let text = "a: 1\n---\nkind: Service\nspec:\n  ports:\n  - port: 80\n  - name: x\n    port: 99999\n";
        let got = locate_all(
            text,
            &[
                (1, vec![k("spec"), k("ports"), PathSeg::Index(1), k("port")]),
                (1, vec![k("spec"), k("missing")]),
                (0, vec![k("a")]),
            ],
        );
        assert_eq!(got, vec![Some((8, 5)), Some((4, 0)), Some((1, 1))]);
    }

    #[test]
    fn finds_the_alias_that_explodes() {
        let mut t = String::from("a: 1\n---\nk: v\nx:\n  a: &a [1, 2, 3, 4, 5, 6, 7, 8]\n");
        let mut prev = 'a';
        for n in ['b', 'c', 'd', 'e', 'f'] {
            t.push_str(&format!("  {n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = n;
        }
        // Line 10 (`f`) holds the alias that passes 100 × the document's events.
        let (line, col, cost) = alias_overflow(&t, 1).unwrap();
        assert_eq!((line, col), (10, 10), "{t}");
        assert!(cost > 4000, "{cost}");
        assert_eq!(alias_overflow("a: 1\n", 0), None);
        assert_eq!(document_start(&t, 1), Some((2, 1)));
    }

    #[test]
    fn finds_the_second_of_two_equal_keys() {
        let t = "a: {b: 1}\n---\nspec:\n  x: {b: 1}\n  b: 2\n  ports: [{b: 1, b: 2}]\n  b: 3\n";
        // The first mapping (in the text) that repeats it: the flow one.
        assert_eq!(duplicate_key(t, 1, "b"), Some((6, 18)));
        assert_eq!(duplicate_key(t, 0, "b"), None);
        let t = "spec:\n  x: {b: 1}\n  b: 2\n  c: [b, b]\n  b: 3\n";
        assert_eq!(duplicate_key(t, 0, "b"), Some((5, 3)));
    }

    #[test]
    fn finds_fields_in_json() {
        let text =
            "{\n  \"items\": [\n    {\"kind\": \"Service\"},\n    {\"spec\": {\"x\": 1}}\n  ]\n}\n";
        let got = locate_all(
            text,
            &[(0, vec![k("items"), PathSeg::Index(1), k("spec"), k("x")])],
        );
        assert_eq!(got, vec![Some((4, 15))]);
    }
}
