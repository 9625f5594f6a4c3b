//! Duplicate keys on the fast path.
//!
//! k8s-openapi's generated deserializers take the last of two equal keys without a word
//! (`clusterIP` twice: the second wins), and serde_yaml_ng checks for duplicates only when it
//! builds a `Mapping`. kubectl refuses such a file, and so does svcc: [`Checked`] wraps a
//! deserializer and every map inside it, remembers a hash of each key of each map, and fails on
//! a repeated one. The caller then takes the general path (`Value`), whose `Mapping` reports
//! the duplicate with its position — so a hash collision costs a slow parse, never a wrong
//! answer. Keys are hashed (FNV-1a) from the strings the key deserializer hands out, nothing is
//! copied; maps of up to 16 keys keep their hashes inline.

use std::fmt;

use serde::de::{self, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

/// A deserializer whose maps, at every depth, refuse a repeated key.
pub(super) struct Checked<D>(pub D);

struct CheckedVisitor<V>(V);

struct CheckedSeed<S>(S);

struct CheckedMap<A> {
    inner: A,
    seen: Seen,
}

struct CheckedSeq<A>(A);

struct KeySeed<'a, S> {
    seed: S,
    out: &'a mut Option<u64>,
}

struct KeyDe<'a, D> {
    inner: D,
    out: &'a mut Option<u64>,
}

struct KeyVisitor<'a, V> {
    inner: V,
    out: &'a mut Option<u64>,
}

/// The key hashes of one map.
#[derive(Default)]
struct Seen {
    inline: [u64; 16],
    len: usize,
    more: Vec<u64>,
}

impl Seen {
    /// false when `h` was there already.
    fn insert(&mut self, h: u64) -> bool {
        let n = self.len.min(16);
        if self.inline[..n].contains(&h) || self.more.contains(&h) {
            return false;
        }
        if self.len < 16 {
            self.inline[self.len] = h;
        } else {
            self.more.push(h);
        }
        self.len += 1;
        true
    }
}

fn fnv(tag: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(tag);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Forwards every `deserialize_*` method to the inner deserializer, the visitor wrapped (`split`).
macro_rules! forward_deserializer {
    () => {
        forward_deserializer!(@ deserialize_any deserialize_bool deserialize_i8
            deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128 deserialize_u8
            deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128 deserialize_f32
            deserialize_f64 deserialize_char deserialize_str deserialize_string
            deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
            deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any);

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            v: V,
        ) -> Result<V::Value, Self::Error> {
            let (inner, w) = self.split();
            inner.deserialize_unit_struct(name, w(v))
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            v: V,
        ) -> Result<V::Value, Self::Error> {
            let (inner, w) = self.split();
            inner.deserialize_newtype_struct(name, w(v))
        }
        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            len: usize,
            v: V,
        ) -> Result<V::Value, Self::Error> {
            let (inner, w) = self.split();
            inner.deserialize_tuple(len, w(v))
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            len: usize,
            v: V,
        ) -> Result<V::Value, Self::Error> {
            let (inner, w) = self.split();
            inner.deserialize_tuple_struct(name, len, w(v))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Self::Error> {
            let (inner, w) = self.split();
            inner.deserialize_struct(name, fields, w(v))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Self::Error> {
            let (inner, w) = self.split();
            inner.deserialize_enum(name, variants, w(v))
        }
    };
    (@ $($m:ident)*) => {
        $(
            fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
                let (inner, w) = self.split();
                inner.$m(w(v))
            }
        )*
    };
}

impl<D> Checked<D> {
    #[allow(clippy::type_complexity)]
    fn split<V>(self) -> (D, fn(V) -> CheckedVisitor<V>) {
        (self.0, CheckedVisitor)
    }
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for Checked<D> {
    type Error = D::Error;
    forward_deserializer!();
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

impl<'a, D> KeyDe<'a, D> {
    #[allow(clippy::type_complexity)]
    fn split<V>(self) -> (D, impl FnOnce(V) -> KeyVisitor<'a, V>) {
        let out = self.out;
        (self.inner, move |v| KeyVisitor { inner: v, out })
    }
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for KeyDe<'_, D> {
    type Error = D::Error;
    forward_deserializer!();
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for CheckedSeed<S> {
    type Value = S::Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Checked(d))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, S> {
    type Value = S::Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(KeyDe {
            inner: d,
            out: self.out,
        })
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for CheckedMap<A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let mut h = None;
        let k = self.inner.next_key_seed(KeySeed { seed, out: &mut h })?;
        if let Some(h) = h {
            if !self.seen.insert(h) {
                return Err(A::Error::custom("duplicate key"));
            }
        }
        Ok(k)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(CheckedSeed(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for CheckedSeq<A> {
    type Error = A::Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(CheckedSeed(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// Forwards the visit methods of plain values to `self.$inner` (after `$record`).
macro_rules! forward_visits {
    ($inner:tt, $record:ident) => {
        forward_visits!(@ $inner $record; visit_bool bool, visit_i8 i8, visit_i16 i16,
            visit_i32 i32, visit_i64 i64, visit_i128 i128, visit_u8 u8, visit_u16 u16,
            visit_u32 u32, visit_u64 u64, visit_u128 u128, visit_f32 f32, visit_f64 f64,
            visit_char char);
        fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Self::Value, E> {
            self.$record(|| fnv(1, v.as_bytes()));
            self.$inner.visit_str(v)
        }
        fn visit_borrowed_str<E: de::Error>(mut self, v: &'de str) -> Result<Self::Value, E> {
            self.$record(|| fnv(1, v.as_bytes()));
            self.$inner.visit_borrowed_str(v)
        }
        fn visit_string<E: de::Error>(mut self, v: String) -> Result<Self::Value, E> {
            self.$record(|| fnv(1, v.as_bytes()));
            self.$inner.visit_string(v)
        }
        fn visit_bytes<E: de::Error>(mut self, v: &[u8]) -> Result<Self::Value, E> {
            self.$record(|| fnv(2, v));
            self.$inner.visit_bytes(v)
        }
        fn visit_borrowed_bytes<E: de::Error>(mut self, v: &'de [u8]) -> Result<Self::Value, E> {
            self.$record(|| fnv(2, v));
            self.$inner.visit_borrowed_bytes(v)
        }
        fn visit_byte_buf<E: de::Error>(mut self, v: Vec<u8>) -> Result<Self::Value, E> {
            self.$record(|| fnv(2, &v));
            self.$inner.visit_byte_buf(v)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            self.$inner.visit_none()
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.$inner.visit_unit()
        }
        fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
            self.$inner.visit_enum(a)
        }
    };
    (@ $inner:tt $record:ident; $($m:ident $t:ty),*) => {
        $(
            fn $m<E: de::Error>(mut self, v: $t) -> Result<Self::Value, E> {
                self.$record(|| fnv(3, v.to_string().as_bytes()));
                self.$inner.$m(v)
            }
        )*
    };
}

impl<V> CheckedVisitor<V> {
    /// Values are not keys: nothing to remember.
    #[inline(always)]
    fn record(&mut self, _hash: impl FnOnce() -> u64) {}
}

impl<'de, V: Visitor<'de>> Visitor<'de> for CheckedVisitor<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }
    forward_visits!(0, record);
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Checked(d))
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(Checked(d))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(CheckedSeq(seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(CheckedMap {
            inner: map,
            seen: Seen::default(),
        })
    }
}

impl<V> KeyVisitor<'_, V> {
    fn record(&mut self, hash: impl FnOnce() -> u64) {
        *self.out = Some(hash());
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KeyVisitor<'_, V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }
    forward_visits!(inner, record);
    // A key that is itself a container: not compared (YAML allows it, Kubernetes never uses it).
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(d)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(map)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, parse_sources, Source};

    fn errors(text: &str) -> Vec<String> {
        let mut diags = Vec::new();
        let src = Source {
            name: "f.yaml".into(),
            text: text.into(),
        };
        let parsed = parse_sources(std::slice::from_ref(&src), &mut diags);
        super::super::locate(&mut diags, std::slice::from_ref(&src));
        assert!(diags.is_empty() || parsed.objects.is_empty() || diags.len() == 1);
        diags.iter().map(|d| d.to_string()).collect()
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: n\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n";

    #[test]
    fn a_repeated_key_is_an_error_with_its_line() {
        assert_eq!(errors(SVC), Vec::<String>::new());
        let dup = format!("{SVC}  clusterIP: 10.96.0.2\n");
        assert_eq!(
            errors(&dup),
            ["error: f.yaml:10:3: cannot parse YAML/JSON: spec: duplicate entry with key \"clusterIP\""]
        );
        // Deeper, in an annotation map, and in an item of a kubectl List (the parallel path).
        let deep = SVC.replace(
            "  namespace: n\n",
            "  namespace: n\n  labels: {x: a, x: b}\n",
        );
        assert_eq!(errors(&deep).len(), 1, "{:?}", errors(&deep));
        assert!(
            errors(&deep)[0].contains("f.yaml:6:"),
            "{:?}",
            errors(&deep)
        );
        let item: String = SVC.lines().map(|l| format!("  {l}\n")).collect();
        let item =
            format!("-{}", &item[1..]).replace("- port: 80\n", "- port: 80\n      port: 81\n");
        let list = format!("apiVersion: v1\nitems:\n{item}kind: List\n");
        let e = errors(&list);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("f.yaml:12:7:") && e[0].contains("\"port\""),
            "{e:?}"
        );
    }

    #[test]
    fn a_document_with_a_repeated_key_leaves_the_next_documents_readable() {
        let text = format!(
            "{SVC}  clusterIP: 10.96.0.2\n---\n{}",
            SVC.replace("name: a", "name: b")
        );
        let mut diags = Vec::new();
        let src = Source {
            name: "f.yaml".into(),
            text,
        };
        let parsed = parse_sources(std::slice::from_ref(&src), &mut diags);
        assert_eq!(diags.len(), 1);
        assert_eq!(parsed.objects.len(), 1, "the second document is read");
        assert_eq!(parsed.objects[0].0.doc, 1);
    }

    #[test]
    fn bad_utf8_names_its_offset_line_and_column() {
        let d = decode("f.yaml", b"a: 1\nb: caf\xc3\xa9 \xff\n".to_vec()).unwrap_err();
        assert_eq!(
            d.to_string(),
            "error: f.yaml:2:9: not UTF-8 text: invalid byte 0xff at byte offset 14; the file is not read"
        );
        assert!(decode("f", b"ok".to_vec()).is_ok());
    }

    #[test]
    fn an_empty_file_is_a_warning() {
        for t in ["", "\n\n", "# nothing\n---\n...\n"] {
            let e = errors(t);
            assert_eq!(e.len(), 1, "{t:?}");
            assert!(
                e[0].starts_with("warning: f.yaml: no Kubernetes objects"),
                "{e:?}"
            );
        }
        assert!(errors("apiVersion: v1\nkind: List\nitems: []\n").is_empty());
    }
}
