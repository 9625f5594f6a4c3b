//! A big `kind: List` as kubectl prints it, read item by item, on every core.
//!
//! serde_yaml_ng buffers a whole YAML document's events before deserializing it: for a
//! 20 MB `kubectl get -o yaml` List that is hundreds of MB and one core. kubectl prints a
//! List as `apiVersion`, then `items:` with each item starting at column 0 with `- ` and
//! continuing indented by two spaces. Such a file is cut into its items (each a standalone
//! YAML mapping once the two columns are removed) and the items are parsed in parallel.
//! Anything else — or any item the fast path cannot take — returns None, and the caller
//! reads the file the general way, which also gives located diagnostics.

use std::sync::Arc;

use super::{stream, Parsed};
use crate::diag::{Origin, PathSeg};

/// The items of a single-document kubectl List, each dedented; None if the file is not one.
pub(super) fn list_items(text: &str) -> Option<Vec<String>> {
    // Cheap gate: only files of the shape kubectl prints.
    if !text.contains("\nitems:\n- ") {
        return None;
    }
    let mut items: Vec<String> = Vec::new();
    let mut in_items = false;
    let mut after = false;
    for line in text.lines() {
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
        if let Some(rest) = line.strip_prefix("- ") {
            let mut s = String::with_capacity(1024);
            s.push_str(rest);
            s.push('\n');
            items.push(s);
        } else if let Some(rest) = line.strip_prefix("  ") {
            let cur = items.last_mut()?;
            cur.push_str(rest);
            cur.push('\n');
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
    (in_items && !items.is_empty()).then_some(items)
}

/// Parses the items on up to as many threads as there are cores; None when any item needs
/// the general path (its diagnostics must be located in the original file).
pub(super) fn parse_items(items: Vec<String>, file: &Arc<str>) -> Option<Parsed> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let chunk = items.len().div_ceil(threads).max(1);
    // Each thread owns its items and frees each one once read: the copies never pile up.
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(chunk).collect());
    }
    let parts: Vec<Option<Parsed>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .enumerate()
            .map(|(c, part)| {
                s.spawn(move || {
                    let mut out = Parsed::default();
                    for (j, text) in part.into_iter().enumerate() {
                        let origin = Origin {
                            file: file.clone(),
                            doc: 0,
                            base: vec![PathSeg::Key("items".into()), PathSeg::Index(c * chunk + j)],
                        };
                        let mut diags = Vec::new();
                        let de = serde_yaml_ng::Deserializer::from_str(&text);
                        if stream::parse_document(de, origin, &mut out, &mut diags).is_err()
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
    let mut out = Parsed::default();
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
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n",
                "apiVersion: v1\nkind: Node\n"
            ]
        );
        assert!(list_items("apiVersion: v1\nkind: Service\n").is_none());
        assert!(list_items("items:\n  - a: 1\n").is_none());
        assert!(list_items("apiVersion: v1\nitems:\n- a: 1\n---\nkind: X\n").is_none());
        let g = "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- kind: Service\n";
        assert_eq!(list_items(g).unwrap(), vec!["kind: Service\n"]);
    }
}
