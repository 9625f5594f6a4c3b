//! Manifests → typed Kubernetes objects, each with its [`Origin`].
//!
//! Accepts what `kubectl get -o yaml|json` prints: multi-document YAML, JSON, `kind: List`
//! and typed `*List` kinds (whose items may lack apiVersion/kind). Objects of kinds svcc does
//! not use are counted and listed, not rejected: users pipe `kubectl get all`.

mod compact;
pub mod locate;
mod nodup;
mod split;
mod stream;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::{
    EndpointConditions, EndpointHints, EndpointPort, EndpointSlice,
};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::diag::{Diagnostic, Origin, PathSeg, Severity};

/// One input file's name and text (the CLI does the reading; the compiler does no I/O).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<Slice>),
    Endpoints(Box<Endpoints>),
    ServiceCidr(Box<ServiceCIDR>),
    Node(Box<Node>),
}

/// An EndpointSlice as svcc keeps it: the fields `lower` reads. k8s-openapi's `Endpoint` is
/// 352 bytes before its first allocation (`targetRef`, `deprecatedTopology`, `hostname`,
/// `zone` …), a [`SliceEndpoint`] 64: at 100k endpoints that is ≈ 28 MB less for as long as
/// `svcc run` keeps the parsed objects. The whole k8s type is still what is deserialized, so
/// a type error anywhere in the object is reported; it is converted right after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slice {
    pub metadata: ObjectMeta,
    pub address_type: String,
    pub ports: Option<Vec<EndpointPort>>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a [`Slice`] (discovery/v1 `Endpoint`, the fields `lower` reads).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub conditions: Option<EndpointConditions>,
    pub node_name: Option<String>,
    pub hints: Option<Box<EndpointHints>>,
}

impl From<EndpointSlice> for Slice {
    fn from(s: EndpointSlice) -> Slice {
        let mut endpoints = Vec::with_capacity(s.endpoints.len());
        endpoints.extend(s.endpoints.into_iter().map(|e| SliceEndpoint {
            addresses: e.addresses,
            conditions: e.conditions,
            node_name: e.node_name,
            hints: e.hints.map(Box::new),
        }));
        Slice {
            metadata: s.metadata,
            address_type: s.address_type,
            ports: s.ports,
            endpoints,
        }
    }
}

/// An object svcc does not use, listed with `--verbose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub kind: String,
    pub name: String,
}

/// Parsed objects, each cut down to the fields `lower` reads (see `compact.rs`).
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<(Origin, Object)>,
    pub skipped: Vec<Skipped>,
    /// Keep every field (the test of `compact.rs` compares both).
    full: bool,
}

impl Parsed {
    fn new(full: bool) -> Parsed {
        Parsed {
            full,
            ..Parsed::default()
        }
    }

    fn push(&mut self, origin: Origin, mut o: Object) {
        if !self.full {
            compact::compact(&mut o);
        }
        self.objects.push((origin, o));
    }
}

/// A file's bytes as a [`Source`]; text that is not UTF-8 is one error naming the file, the
/// byte offset of the first bad byte and its line and column (1-based; the column counts
/// characters, as the YAML parser's do).
// The error is the cold path, once per bad file: not worth a box.
#[allow(clippy::result_large_err)]
pub fn decode(name: &str, bytes: Vec<u8>) -> Result<Source, Diagnostic> {
    let e = match String::from_utf8(bytes) {
        Ok(text) => {
            return Ok(Source {
                name: name.to_string(),
                text,
            })
        }
        Err(e) => e,
    };
    let bytes = e.as_bytes();
    let at = e.utf8_error().valid_up_to();
    // The prefix up to `at` is valid UTF-8.
    let good = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
    let line = good.matches('\n').count() + 1;
    let col = good[good.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    let bad: Vec<String> = bytes[at..]
        .iter()
        .take(
            e.utf8_error()
                .error_len()
                .unwrap_or(bytes.len() - at)
                .min(4),
        )
        .map(|b| format!("0x{b:02x}"))
        .collect();
    let hint = if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        " (the file starts with a UTF-16 byte-order mark: convert it to UTF-8)"
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        " (the file looks gzip-compressed)"
    } else if e.utf8_error().error_len().is_none() {
        " (a character cut off at the end of the file: truncated?)"
    } else {
        ""
    };
    let mut d = Diagnostic::error(
        name,
        format!(
            "not UTF-8 text: invalid byte {} at byte offset {at}{hint}; the file is not read",
            bad.join(" ")
        ),
    );
    d.line = Some(line);
    d.column = Some(col);
    Err(d)
}

/// Parses every source; problems go to `diags`, good objects to the result.
pub fn parse_sources(sources: &[Source], diags: &mut Vec<Diagnostic>) -> Parsed {
    parse_sources_with(sources, diags, false)
}

fn parse_sources_with(sources: &[Source], diags: &mut Vec<Diagnostic>, full: bool) -> Parsed {
    let mut out = Parsed::new(full);
    for src in sources {
        parse_source(src, &mut out, diags);
    }
    out
}

fn parse_source(src: &Source, out: &mut Parsed, diags: &mut Vec<Diagnostic>) {
    let before = (out.objects.len(), out.skipped.len(), diags.len());
    parse_source_docs(src, out, diags);
    if before == (out.objects.len(), out.skipped.len(), diags.len()) && is_blank(&src.text) {
        // Valid YAML, but most likely not what was meant (a `kubectl get … > f` that failed):
        // said, not refused (an empty List, `items: []`, is not blank and says nothing).
        let mut d = Diagnostic::error(
            &src.name,
            "no Kubernetes objects: the file is empty (or only comments, blank lines and `---`)",
        );
        d.severity = Severity::Warning;
        diags.push(d);
    }
}

/// `… at position N` (a byte offset) → the 1-based line and column (in characters) of byte N.
fn reader_error_position(msg: &str, text: &str) -> Option<(usize, usize)> {
    let n: usize = msg.rsplit_once(" at position ")?.1.trim().parse().ok()?;
    let before = text.get(..n.min(text.len()))?;
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Some((line, col))
}

/// Only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        let l = l
            .strip_prefix("---")
            .or_else(|| l.strip_prefix("..."))
            .unwrap_or(l)
            .trim_start();
        l.is_empty() || l.starts_with('#')
    })
}

fn parse_source_docs(src: &Source, out: &mut Parsed, diags: &mut Vec<Diagnostic>) {
    let file: Arc<str> = Arc::from(src.name.as_str());
    if let Some(items) = split::list_items(&src.text) {
        if let Some(parsed) = split::parse_items(items, &file, out.full) {
            out.objects.extend(parsed.objects);
            out.skipped.extend(parsed.skipped);
            return;
        }
    }
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(&src.text).enumerate() {
        let origin = Origin {
            file: file.clone(),
            doc,
            base: Vec::new(),
        };
        let mark = (out.objects.len(), out.skipped.len());
        let mut fast_diags = Vec::new();
        if stream::parse_document(de, origin, out, &mut fast_diags).is_ok() {
            diags.extend(fast_diags);
            continue;
        }
        // Something the fast path could not take: re-read this document through `Value`,
        // which locates every problem (and reports a syntax error, which ends the file).
        out.objects.truncate(mark.0);
        out.skipped.truncate(mark.1);
        if !parse_document_slowly(src, &file, doc, out, diags) {
            return;
        }
    }
}

/// The general path for one document. Returns false when the file cannot be read further.
fn parse_document_slowly(
    src: &Source,
    file: &Arc<str>,
    doc: usize,
    out: &mut Parsed,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let Some(de) = serde_yaml_ng::Deserializer::from_str(&src.text).nth(doc) else {
        return false;
    };
    let value = match Value::deserialize(de) {
        Ok(v) => v,
        Err(e) => {
            let msg = strip_location(&e);
            let mut d = Diagnostic::error(&src.name, format!("cannot parse YAML/JSON: {msg}"));
            if let Some((l, c)) = reader_error_position(&msg, &src.text) {
                // libyaml's reader errors (control characters, bad encodings) carry a byte
                // offset in the message and no line (their location says 1:1).
                d.line = Some(l);
                d.column = Some(c);
            } else if let Some(loc) = e.location() {
                // Syntax errors (JSON's too: it is read as YAML), the recursion limit (deep
                // nesting), duplicate keys: libyaml's position, from serde_yaml_ng.
                d.line = Some(loc.line());
                d.column = Some(loc.column());
            } else if msg == "repetition limit exceeded" {
                // An alias bomb: serde_yaml_ng says no where; the replay finds the alias.
                if let Some((l, c, n)) = locate::alias_overflow(&src.text, doc) {
                    d.line = Some(l);
                    d.column = Some(c);
                    d.message = format!(
                        "cannot parse YAML/JSON: repetition limit exceeded: aliases of aliases \
                         expand exponentially (\"billion laughs\"); this one alone stands for \
                         {n} alias expansions"
                    );
                }
            }
            if let Some(key) = msg
                .split_once("duplicate entry with key \"")
                .and_then(|(_, k)| k.strip_suffix('"'))
            {
                // serde_yaml_ng's position is the mapping's start: point at the second key.
                if let Some((l, c)) = locate::duplicate_key(&src.text, doc, key) {
                    d.line = Some(l);
                    d.column = Some(c);
                }
            }
            if d.line.is_none() {
                // Any other error without a position: the start of its document.
                if let Some((l, c)) = locate::document_start(&src.text, doc) {
                    d.line = Some(l);
                    d.column = Some(c);
                }
            }
            // A duplicate key and the recursion and repetition limits are serde_yaml_ng's
            // checks on a document that parsed: the next documents are readable. After a
            // syntax error the parser cannot resynchronise: the rest of the file is lost.
            let document_only = msg.contains("duplicate entry with key")
                || msg.starts_with("recursion limit exceeded")
                || msg.starts_with("repetition limit exceeded");
            diags.push(d);
            return document_only;
        }
    };
    if !value.is_null() {
        handle_value(
            value,
            Origin {
                file: file.clone(),
                doc,
                base: Vec::new(),
            },
            out,
            diags,
        );
    }
    true
}

/// The kinds svcc reads, by (kind, apiVersion).
fn object_kind(kind: &str, api: &str) -> Option<stream::ObjectKind> {
    use stream::ObjectKind::*;
    match (kind, api) {
        ("Service", "v1") => Some(Service),
        ("Endpoints", "v1") => Some(Endpoints),
        ("Node", "v1") => Some(Node),
        ("EndpointSlice", "discovery.k8s.io/v1") => Some(EndpointSlice),
        ("ServiceCIDR", "networking.k8s.io/v1" | "networking.k8s.io/v1beta1") => Some(ServiceCidr),
        _ => None,
    }
}

fn strip_location(e: &serde_yaml_ng::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn object_name(v: &Value) -> String {
    let md = v.get("metadata");
    let name = md.and_then(|m| str_field(m, "name")).unwrap_or("<unnamed>");
    match md.and_then(|m| str_field(m, "namespace")) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn handle_value(mut value: Value, origin: Origin, out: &mut Parsed, diags: &mut Vec<Diagnostic>) {
    if !value.is_mapping() {
        diags.push(Diagnostic::at_field(
            Severity::Error,
            &origin,
            None,
            &[],
            "expected a Kubernetes object (a mapping with apiVersion and kind)",
        ));
        return;
    }
    let kind = str_field(&value, "kind").unwrap_or("").to_string();
    let api = str_field(&value, "apiVersion").unwrap_or("").to_string();
    if kind.is_empty() {
        diags.push(Diagnostic::at_field(
            Severity::Error,
            &origin,
            None,
            &[PathSeg::Key("kind".into())],
            "missing `kind`: not a Kubernetes object",
        ));
        return;
    }
    if let Some(item_kind) = kind.strip_suffix("List") {
        let items = match value.get_mut("items") {
            Some(Value::Sequence(s)) => std::mem::take(s),
            Some(Value::Null) | None => Vec::new(),
            Some(_) => {
                diags.push(Diagnostic::at_field(
                    Severity::Error,
                    &origin,
                    Some(kind.clone()),
                    &[PathSeg::Key("items".into())],
                    "`items` must be a list",
                ));
                return;
            }
        };
        for (i, mut item) in items.into_iter().enumerate() {
            // Typed lists (ServiceList, …) print their items without apiVersion/kind.
            if !item_kind.is_empty() {
                if let Value::Mapping(m) = &mut item {
                    m.entry("kind".into())
                        .or_insert_with(|| Value::String(item_kind.to_string()));
                    m.entry("apiVersion".into())
                        .or_insert_with(|| Value::String(api.clone()));
                }
            }
            let mut o = origin.clone();
            o.base.push(PathSeg::Key("items".into()));
            o.base.push(PathSeg::Index(i));
            handle_value(item, o, out, diags);
        }
        return;
    }
    let name = object_name(&value);
    let group = api.split('/').next().unwrap_or("");
    use stream::ObjectKind as K;
    let obj = match (object_kind(&kind, &api), kind.as_str()) {
        (Some(K::Service), _) => {
            typed(value, &origin, &kind, &name, diags).map(|s| Object::Service(Box::new(s)))
        }
        (Some(K::Endpoints), _) => {
            typed(value, &origin, &kind, &name, diags).map(|s| Object::Endpoints(Box::new(s)))
        }
        (Some(K::Node), _) => {
            typed(value, &origin, &kind, &name, diags).map(|s| Object::Node(Box::new(s)))
        }
        (Some(K::EndpointSlice), _) => typed::<EndpointSlice>(value, &origin, &kind, &name, diags)
            .map(|s| Object::EndpointSlice(Box::new(s.into()))),
        (Some(K::ServiceCidr), _) => {
            // v1beta1 has the same schema; read it as v1.
            if let Value::Mapping(m) = &mut value {
                m.insert(
                    "apiVersion".into(),
                    Value::String("networking.k8s.io/v1".into()),
                );
            }
            typed(value, &origin, &kind, &name, diags).map(|s| Object::ServiceCidr(Box::new(s)))
        }
        (None, "Service" | "Endpoints" | "Node" | "EndpointSlice") if group != "apps" => {
            diags.push(Diagnostic::at_field(
                Severity::Error,
                &origin,
                Some(format!("{kind} {name}")),
                &[PathSeg::Key("apiVersion".into())],
                format!("unsupported apiVersion {api:?} for {kind}"),
            ));
            None
        }
        _ => {
            out.skipped.push(Skipped {
                file: origin.file.to_string(),
                kind,
                name,
            });
            None
        }
    };
    if let Some(o) = obj {
        out.push(origin, o);
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    value: Value,
    origin: &Origin,
    kind: &str,
    name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let path: Vec<PathSeg> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
                    serde_path_to_error::Segment::Enum { variant } => {
                        Some(PathSeg::Key(variant.clone()))
                    }
                    serde_path_to_error::Segment::Unknown => None,
                })
                .collect();
            diags.push(Diagnostic::at_field(
                Severity::Error,
                origin,
                Some(format!("{kind} {name}")),
                &path,
                e.into_inner().to_string(),
            ));
            None
        }
    }
}

/// Fills in line/column of every diagnostic that has a field path, one replay per file.
pub fn locate(diags: &mut [Diagnostic], sources: &[Source]) {
    for src in sources {
        let idx: Vec<usize> = (0..diags.len())
            .filter(|&i| {
                diags[i].file == src.name && diags[i].line.is_none() && diags[i].at.is_some()
            })
            .collect();
        if idx.is_empty() {
            continue;
        }
        let reqs: Vec<(usize, Vec<PathSeg>)> =
            idx.iter().map(|&i| diags[i].at.clone().unwrap()).collect();
        let found = locate::locate_all(&src.text, &reqs);
        for (&i, f) in idx.iter().zip(found) {
            if let Some((l, c)) = f {
                diags[i].line = Some(l);
                diags[i].column = (c > 0).then_some(c);
            }
        }
    }
}
