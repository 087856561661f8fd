//! Every unknown key of a file in one pass, for configuration (TOML through
//! the `config` crate) and playbooks (YAML through serde-saphyr).
//!
//! serde's `deny_unknown_fields` stops at the first unknown key, so five typos
//! take five rounds of `precert check`. [`Lenient`] wraps a deserializer and
//! hands each struct only the keys it declares: an unknown key is recorded
//! (with where it sits, the keys allowed there and, for YAML, its line and
//! column) and skipped, so the raw types keep `deny_unknown_fields` as a
//! backstop that is never reached. When an unknown key is one typo away from a
//! declared key the map does not have (`timzone`, `clik`), it is read as that
//! key: the checks after it then see what was meant instead of reporting a
//! missing `timezone` or a step without a step key. Either way the key is an
//! error and the file does not load; the reading only lets one run show every
//! problem.
//!
//! The wrapper follows `serde_ignored`'s design (forward every call, wrap
//! every visitor, map and sequence); enums pass through unwrapped, as no raw
//! type has one whose keys need checking.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// One step of the way to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// Dotted form, as configuration errors name keys: `payers.sandbox`,
/// `locations[0].name`.
pub fn dotted(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A key no struct declares where it was written.
#[derive(Clone, Debug)]
pub struct UnknownKey {
    /// The keys and indexes above it (`payers`, `sandbox`). Tracked for
    /// [`Keys::Plain`] input only; YAML errors use `at`.
    pub parent: Vec<PathSeg>,
    pub key: String,
    /// Where the key is written, when the parser tells ([`Keys::Spanned`]).
    pub at: Option<Location>,
    /// The keys allowed there.
    pub expected: &'static [&'static str],
    /// The declared key it was read as, being one typo away from it.
    pub read_as: Option<&'static str>,
}

impl UnknownKey {
    /// The key's full path, dotted.
    pub fn path(&self) -> Vec<PathSeg> {
        let mut p = self.parent.clone();
        p.push(PathSeg::Key(self.key.clone()));
        p
    }

    /// What to write instead: the close key, or the keys allowed there.
    pub fn hint(&self) -> String {
        match self.read_as {
            Some(k) => format!("did you mean `{k}`?"),
            None if self.expected.is_empty() => "no keys are allowed here".to_owned(),
            None => format!("the keys here are {}", self.expected.join(", ")),
        }
    }
}

/// How map keys are read: as plain strings (with the path tracked, for
/// messages that name the key), or as serde-saphyr `Spanned` strings (with
/// their line and column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    Plain,
    Spanned,
}

/// The declared key `key` most likely meant: the closest by edit distance
/// (ignoring case, `-` for `_`), and only when close for its length.
pub fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let norm = key.to_lowercase().replace('-', "_");
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&norm, k), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Deserializes `T` from `de`, recording every unknown key in `found`
/// instead of failing at the first.
pub fn deserialize<'de, D, T>(de: D, keys: Keys, found: &RefCell<Vec<UnknownKey>>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    T::deserialize(Lenient::new(de, keys, found))
}

#[derive(Clone)]
struct Ctx<'a> {
    found: &'a RefCell<Vec<UnknownKey>>,
    keys: Keys,
    path: Vec<PathSeg>,
}

/// A deserializer that checks struct keys (see the module documentation).
pub struct Lenient<'a, D> {
    de: D,
    ctx: Ctx<'a>,
    /// This is serde-saphyr's view of a `Spanned<T>` (`value`, `referenced`,
    /// `defined`): only `value` is the document's.
    span_view: bool,
}

impl<'a, D> Lenient<'a, D> {
    pub fn new(de: D, keys: Keys, found: &'a RefCell<Vec<UnknownKey>>) -> Self {
        Lenient {
            de,
            ctx: Ctx {
                found,
                keys,
                path: Vec::new(),
            },
            span_view: false,
        }
    }
}

/// serde-saphyr's name for the newtype behind `Spanned<T>`.
const SPANNED_NEWTYPE: &str = "__yaml_spanned";

#[derive(Clone, Copy)]
enum MapKind {
    /// A map (`BTreeMap`, a JSON value): every key is data.
    Plain,
    /// A struct: only these keys.
    Struct(&'static [&'static str]),
    /// serde-saphyr's `Spanned<T>` view.
    SpanView,
}

struct Wrap<'a, V> {
    visitor: V,
    ctx: Ctx<'a>,
    map: MapKind,
    /// A newtype that is serde-saphyr's `Spanned<T>`.
    spanned_newtype: bool,
}

impl<'a, V> Wrap<'a, V> {
    fn new(visitor: V, ctx: Ctx<'a>, map: MapKind) -> Self {
        Wrap {
            visitor,
            ctx,
            map,
            spanned_newtype: false,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let kind = if self.span_view { MapKind::SpanView } else { MapKind::Plain };
            self.de.$method(Wrap::new(visitor, self.ctx, kind))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Lenient<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_unit_struct(name, Wrap::new(visitor, self.ctx, MapKind::Plain))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        let mut wrap = Wrap::new(visitor, self.ctx, MapKind::Plain);
        wrap.spanned_newtype = name == SPANNED_NEWTYPE;
        self.de.deserialize_newtype_struct(name, wrap)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_tuple(len, Wrap::new(visitor, self.ctx, MapKind::Plain))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_tuple_struct(name, len, Wrap::new(visitor, self.ctx, MapKind::Plain))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let kind = if self.span_view {
            MapKind::SpanView
        } else {
            MapKind::Struct(fields)
        };
        self.de
            .deserialize_struct(name, fields, Wrap::new(visitor, self.ctx, kind))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_ignored_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D2: Deserializer<'de>>(self, de: D2) -> Result<V::Value, D2::Error> {
        self.visitor.visit_some(Lenient {
            de,
            ctx: self.ctx,
            span_view: false,
        })
    }

    fn visit_newtype_struct<D2: Deserializer<'de>>(self, de: D2) -> Result<V::Value, D2::Error> {
        self.visitor.visit_newtype_struct(Lenient {
            de,
            ctx: self.ctx,
            span_view: self.spanned_newtype,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(WrapSeq {
            seq,
            ctx: self.ctx,
            index: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(WrapMap {
            map,
            ctx: self.ctx,
            kind: self.map,
            key: None,
            taken: Vec::new(),
        })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

struct WrapSeed<'a, S> {
    seed: S,
    ctx: Ctx<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for WrapSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Lenient {
            de,
            ctx: self.ctx,
            span_view: false,
        })
    }
}

struct WrapSeq<'a, A> {
    seq: A,
    ctx: Ctx<'a>,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for WrapSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        let mut ctx = self.ctx.clone();
        if ctx.keys == Keys::Plain {
            ctx.path.push(PathSeg::Index(self.index));
        }
        self.index += 1;
        self.seq.next_element_seed(WrapSeed { seed, ctx })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct WrapMap<'a, A> {
    map: A,
    ctx: Ctx<'a>,
    kind: MapKind,
    /// The key whose value comes next, when known.
    key: Option<String>,
    /// Declared keys given to the struct so far (an unknown key read as a
    /// declared one takes it).
    taken: Vec<&'static str>,
}

impl<'de, A: MapAccess<'de>> WrapMap<'_, A> {
    fn give<K: DeserializeSeed<'de>>(&mut self, seed: K, field: &'static str) -> Result<K::Value, A::Error> {
        self.taken.push(field);
        self.key = Some(field.to_owned());
        seed.deserialize(IntoDeserializer::<A::Error>::into_deserializer(field))
    }

    fn next_struct_key<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
        fields: &'static [&'static str],
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let (key, at) = match self.ctx.keys {
                Keys::Spanned => match self.map.next_key::<Spanned<String>>()? {
                    Some(k) => (k.value, Some(k.referenced)),
                    None => return Ok(None),
                },
                Keys::Plain => match self.map.next_key::<String>()? {
                    Some(k) => (k, None),
                    None => return Ok(None),
                },
            };
            if let Some(field) = fields.iter().find(|f| **f == key) {
                if self.taken.contains(field) {
                    // An unknown key was read as this one already.
                    self.map.next_value::<IgnoredAny>()?;
                    continue;
                }
                return self.give(seed, field).map(Some);
            }
            let read_as = closest(&key, fields).filter(|f| !self.taken.contains(f));
            self.ctx.found.borrow_mut().push(UnknownKey {
                parent: self.ctx.path.clone(),
                key,
                at,
                expected: fields,
                read_as,
            });
            match read_as {
                Some(field) => return self.give(seed, field).map(Some),
                None => {
                    self.map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WrapMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        match self.kind {
            MapKind::Struct(fields) => self.next_struct_key(seed, fields),
            // YAML maps need no path (errors carry line and column), and
            // their keys need not be strings: pass them through.
            MapKind::Plain if self.ctx.keys == Keys::Spanned => {
                self.key = None;
                self.map.next_key_seed(seed)
            }
            MapKind::Plain | MapKind::SpanView => match self.map.next_key::<String>()? {
                Some(k) => {
                    let value = seed.deserialize(IntoDeserializer::<A::Error>::into_deserializer(k.as_str()))?;
                    self.key = Some(k);
                    Ok(Some(value))
                }
                None => Ok(None),
            },
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let key = self.key.take();
        let mut ctx = self.ctx.clone();
        match self.kind {
            MapKind::SpanView if key.as_deref() == Some("value") => {}
            // The marker and the locations are serde-saphyr's own.
            MapKind::SpanView => return self.map.next_value_seed(seed),
            _ if ctx.keys == Keys::Plain => ctx.path.extend(key.map(PathSeg::Key)),
            _ => {}
        }
        self.map.next_value_seed(WrapSeed { seed, ctx })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_key_is_suggested_and_a_far_one_is_not() {
        let known = &["timezone", "name", "npi", "tax_id", "locations"];
        assert_eq!(closest("timzone", known), Some("timezone"));
        assert_eq!(closest("nmae", known), Some("name"));
        assert_eq!(closest("Tax-Id", known), Some("tax_id"));
        assert_eq!(closest("colour", known), None);
        assert_eq!(closest("zone", known), None);
    }
}
