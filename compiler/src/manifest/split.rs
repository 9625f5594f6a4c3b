//! A big `kind: List` as kubectl prints it, read item by item, on every core.
//!
//! serde_yaml_ng buffers a whole YAML document's events before deserializing it: for a
//! 20 MB `kubectl get -o yaml` List that is hundreds of MB and one core. kubectl prints a
//! List as `apiVersion`, then `items:` with each item starting at column 0 with `- ` and
//! continuing indented by two spaces. Such a file is cut into its items — each a slice of
//! the text that is itself a YAML sequence of one element, so nothing is copied — and the
//! items are parsed in parallel. Anything else — or any item the fast path cannot take —
//! returns None, and the caller reads the file the general way, which also gives located
//! diagnostics.

use std::sync::Arc;

use super::{stream, Parsed};
use crate::diag::{Origin, PathSeg};

/// The items of a single-document kubectl List, each a `- …` slice of `text`; None if the
/// file is not one.
pub(super) fn list_items(text: &str) -> Option<Vec<&str>> {
    // Cheap gate: only files of the shape kubectl prints.
    if !text.contains("\nitems:\n- ") {
        return None;
    }
    let mut items: Vec<&str> = Vec::new();
    // Start of the current item, and end of its last non-empty line.
    let mut cur: Option<(usize, usize)> = None;
    let mut in_items = false;
    let mut after = false;
    let mut at = 0;
    for raw in text.split_inclusive('\n') {
        let (start, end) = (at, at + raw.len());
        at = end;
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if after || !in_items {
            // The List's own keys (apiVersion, kind, metadata: …) around the items.
            if line.starts_with('-') || line.starts_with('\t') {
                return None;
            }
            if !after && line == "items:" {
                in_items = true;
            }
            continue;
        }
        if line.starts_with("- ") {
            if let Some((s, e)) = cur.replace((start, end)) {
                items.push(&text[s..e]);
            }
        } else if line.starts_with("  ") {
            cur.as_mut()?.1 = end;
        } else if line.is_empty() {
            continue;
        } else if line.starts_with('#')
            || line.starts_with(' ')
            || line.starts_with('\t')
            || line.starts_with('-')
            || line.starts_with("...")
        {
            // Comments, odd indentation, a second document: not kubectl's shape.
            return None;
        } else {
            after = true;
        }
    }
    if let Some((s, e)) = cur {
        items.push(&text[s..e]);
    }
    (in_items && !items.is_empty()).then_some(items)
}

/// Parses the items on up to as many threads as there are cores; None when any item needs
/// the general path (its diagnostics must be located in the original file).
pub(super) fn parse_items(items: Vec<&str>, file: &Arc<str>, full: bool) -> Option<Parsed> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let chunk = items.len().div_ceil(threads).max(1);
    let parts: Vec<Option<Parsed>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                s.spawn(move || {
                    let mut out = Parsed::new(full);
                    for (j, text) in part.iter().enumerate() {
                        let origin = Origin {
                            file: file.clone(),
                            doc: 0,
                            base: vec![PathSeg::Key("items".into()), PathSeg::Index(c * chunk + j)],
                        };
                        let mut diags = Vec::new();
                        let de = serde_yaml_ng::Deserializer::from_str(text);
                        if stream::parse_item(de, origin, &mut out, &mut diags).is_err()
                            || !diags.is_empty()
                        {
                            return None;
                        }
                    }
                    Some(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let mut out = Parsed::new(full);
    for p in parts {
        let p = p?;
        out.objects.extend(p.objects);
        out.skipped.extend(p.skipped);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_kubectl_lists_only() {
        let t = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata:\n    name: a\n- apiVersion: v1\n  kind: Node\nkind: List\nmetadata:\n  resourceVersion: \"\"\n";
        let items = list_items(t).unwrap();
        assert_eq!(
            items,
            vec![
                "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: a\n",
                "- apiVersion: v1\n  kind: Node\n"
            ]
        );
        assert!(list_items("apiVersion: v1\nkind: Service\n").is_none());
        assert!(list_items("items:\n  - a: 1\n").is_none());
        assert!(list_items("apiVersion: v1\nitems:\n- a: 1\n---\nkind: X\n").is_none());
        let g = "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- kind: Service\n";
        assert_eq!(list_items(g).unwrap(), vec!["- kind: Service\n"]);
        let crlf =
            "apiVersion: v1\r\nitems:\n- kind: Service\r\n\r\n  spec: {}\r\n\r\nkind: List\r\n";
        assert_eq!(
            list_items(crlf).unwrap(),
            vec!["- kind: Service\r\n\r\n  spec: {}\r\n"]
        );
    }
}
