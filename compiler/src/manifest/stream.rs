//! The fast path of manifest parsing: typed objects straight from the YAML event stream.
//!
//! kubectl prints `apiVersion` and `kind` first in every object, so the kind is known before
//! the rest is read and the object can be handed to its k8s-openapi deserializer directly —
//! no intermediate `Value` tree (which costs about as much time as the YAML scan itself, and
//! most of the memory). Anything unusual (kind not leading, an object with a type error) is
//! handed back to the general `Value` path in `super`, which reports precise diagnostics:
//! an item whose kind is not leading goes there alone; a document whose typed read fails is
//! re-read there whole.

use std::collections::VecDeque;
use std::fmt;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::value::{MapAccessDeserializer, StrDeserializer, StringDeserializer};
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::nodup::Checked;
use super::{handle_value, object_kind, Object, Parsed};
use crate::diag::{Diagnostic, Origin, PathSeg};

/// Reads one document; on error the caller discards what it added and takes the slow path.
pub(super) fn parse_document<'de, D: serde::Deserializer<'de>>(
    de: D,
    origin: Origin,
    out: &mut Parsed,
    diags: &mut Vec<Diagnostic>,
) -> Result<(), D::Error> {
    de.deserialize_any(ObjectSeed {
        origin,
        defaults: None,
        out,
        diags,
    })
}

/// Reads a one-element sequence (`- …`, an item of a List cut out of its file) as the object
/// at `origin`; anything else is an error, and the caller takes the general path.
pub(super) fn parse_item<'de, D: serde::Deserializer<'de>>(
    de: D,
    origin: Origin,
    out: &mut Parsed,
    diags: &mut Vec<Diagnostic>,
) -> Result<(), D::Error> {
    de.deserialize_seq(OneItem(ObjectSeed {
        origin,
        defaults: None,
        out,
        diags,
    }))
}

struct OneItem<'a>(ObjectSeed<'a>);

impl<'de> Visitor<'de> for OneItem<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("one list item")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if seq.next_element_seed(self.0)?.is_none() || seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("not one list item"));
        }
        Ok(())
    }
}

/// One object (or list) at `origin`; `defaults` = (apiVersion, kind) for items of typed lists.
struct ObjectSeed<'a> {
    origin: Origin,
    defaults: Option<(String, String)>,
    out: &'a mut Parsed,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        // An empty document (`---` alone).
        if self.origin.base.is_empty() {
            Ok(())
        } else {
            Err(E::custom("not an object"))
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut api: Option<String> = None;
        let mut kind: Option<String> = None;
        let mut other: Vec<(Value, Value)> = Vec::new();
        while api.is_none() || kind.is_none() {
            let Some(k) = map.next_key::<String>()? else {
                break;
            };
            match k.as_str() {
                "apiVersion" => api = Some(map.next_value()?),
                "kind" => kind = Some(map.next_value()?),
                _ => {
                    other.push((Value::String(k), map.next_value::<Value>()?));
                    break;
                }
            }
        }
        let (api, kind) = match (api, kind) {
            (Some(a), Some(k)) if other.is_empty() => (a, k),
            (api, kind) => {
                // Not kubectl's shape: read the rest as a Value and take the general path.
                let mut m = serde_yaml_ng::Mapping::new();
                if let Some(a) = api {
                    m.insert("apiVersion".into(), Value::String(a));
                }
                if let Some(k) = kind {
                    m.insert("kind".into(), Value::String(k));
                }
                for (k, v) in other {
                    m.insert(k, v);
                }
                while let Some(k) = map.next_key::<Value>()? {
                    let v = map.next_value::<Value>()?;
                    m.insert(k, v);
                }
                if let Some((a, k)) = &self.defaults {
                    m.entry("kind".into())
                        .or_insert_with(|| Value::String(k.clone()));
                    m.entry("apiVersion".into())
                        .or_insert_with(|| Value::String(a.clone()));
                }
                handle_value(Value::Mapping(m), self.origin, self.out, self.diags);
                return Ok(());
            }
        };
        if let Some(item_kind) = kind.strip_suffix("List") {
            let defaults = (!item_kind.is_empty()).then(|| (api.clone(), item_kind.to_string()));
            while let Some(k) = map.next_key::<String>()? {
                if k == "items" {
                    let mut base = self.origin.base.clone();
                    base.push(PathSeg::Key("items".into()));
                    let origin = Origin {
                        base,
                        ..self.origin.clone()
                    };
                    map.next_value_seed(ItemsSeed {
                        origin,
                        defaults: defaults.clone(),
                        out: self.out,
                        diags: self.diags,
                    })?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            return Ok(());
        }
        let replay = Replay {
            prefix: VecDeque::from([("apiVersion", api.clone()), ("kind", kind.clone())]),
            pending: None,
            inner: map,
        };
        // Every map of the object refuses a repeated key (k8s-openapi would keep the last).
        let de = Checked(MapAccessDeserializer::new(replay));
        match object_kind(&kind, &api) {
            Some(ObjectKind::Service) => push(
                self.out,
                self.origin,
                Object::Service(Box::new(Deserialize::deserialize(de)?)),
            ),
            Some(ObjectKind::EndpointSlice) => push(
                self.out,
                self.origin,
                Object::EndpointSlice(Box::new(EndpointSlice::deserialize(de)?.into())),
            ),
            Some(ObjectKind::Endpoints) => push(
                self.out,
                self.origin,
                Object::Endpoints(Box::new(Deserialize::deserialize(de)?)),
            ),
            Some(ObjectKind::Node) => push(
                self.out,
                self.origin,
                Object::Node(Box::new(Deserialize::deserialize(de)?)),
            ),
            // Rare kinds, unsupported versions and other kinds: the general path decides.
            _ => {
                let mut v: serde_yaml_ng::Mapping = Deserialize::deserialize(de)?;
                v.insert("apiVersion".into(), Value::String(api));
                v.insert("kind".into(), Value::String(kind));
                handle_value(Value::Mapping(v), self.origin, self.out, self.diags);
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        Err(A::Error::custom("not an object"))
    }
}

fn push(out: &mut Parsed, origin: Origin, o: Object) {
    out.push(origin, o);
}

/// The kinds the fast path reads directly.
pub(super) enum ObjectKind {
    Service,
    EndpointSlice,
    Endpoints,
    Node,
    ServiceCidr,
}

struct ItemsSeed<'a> {
    origin: Origin,
    defaults: Option<(String, String)>,
    out: &'a mut Parsed,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of objects")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let mut base = self.origin.base.clone();
            base.push(PathSeg::Index(i));
            let seed = ObjectSeed {
                origin: Origin {
                    base,
                    ..self.origin.clone()
                },
                defaults: self.defaults.clone(),
                out: &mut *self.out,
                diags: &mut *self.diags,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// A map whose first entries (already consumed to learn the kind) are replayed.
struct Replay<A> {
    prefix: VecDeque<(&'static str, String)>,
    pending: Option<String>,
    inner: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if let Some((k, v)) = self.prefix.pop_front() {
            self.pending = Some(v);
            return seed
                .deserialize(StrDeserializer::<A::Error>::new(k))
                .map(Some);
        }
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if let Some(v) = self.pending.take() {
            return seed.deserialize(StringDeserializer::<A::Error>::new(v));
        }
        self.inner.next_value_seed(seed)
    }
}
