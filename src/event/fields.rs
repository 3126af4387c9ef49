//! An event's top-level fields, parsed once and borrowed from the bytes they came in.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A top-level field's value as validation and folding read it. Strings are borrowed from the
/// raw bytes unless they hold escapes; numbers keep their exact text (a float would change
/// `123456789012345.67` into `…69`); arrays and objects are only named (their contents stay in the
/// raw bytes: no metric or schema reads inside them). Parsing into this instead of a
/// `serde_json::Value` map saves an allocation per key, per string and per map node.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    /// A JSON number's text, as sent (always valid JSON number syntax).
    Number(&'a str),
    Str(Cow<'a, str>),
    Array,
    Object,
}

/// An event's top-level fields, in the order they came. A key given twice reads as its last value,
/// as in a JSON object parsed into a map.
#[derive(Debug, Clone, Default)]
pub struct Fields<'a>(Vec<(Cow<'a, str>, FieldValue<'a>)>);

impl<'a> Fields<'a> {
    pub fn get(&self, key: &str) -> Option<&FieldValue<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> FieldValue<'a> {
    /// Classifies a value from its raw JSON text (already validated by the parser).
    fn from_raw(raw: &'a str) -> Result<Self, serde_json::Error> {
        Ok(match raw.as_bytes().first() {
            Some(b'n') => FieldValue::Null,
            Some(b't') => FieldValue::Bool(true),
            Some(b'f') => FieldValue::Bool(false),
            Some(b'[') => FieldValue::Array,
            Some(b'{') => FieldValue::Object,
            // Without a backslash the string's text is its value: borrow it.
            Some(b'"') if !raw.contains('\\') => FieldValue::Str(Cow::Borrowed(&raw[1..raw.len() - 1])),
            Some(b'"') => FieldValue::Str(Cow::Owned(serde_json::from_str::<String>(raw)?)),
            _ => FieldValue::Number(raw),
        })
    }
}

/// An object key: borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A whole event's JSON: an object's fields, or the kind of value it was instead.
pub(super) enum TopLevel<'a> {
    Object(Fields<'a>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let raw: &'de serde_json::value::RawValue = map.next_value()?;
                    fields.push((key, FieldValue::from_raw(raw.get()).map_err(serde::de::Error::custom)?));
                }
                Ok(TopLevel::Object(Fields(fields)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("null"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a boolean"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a number"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a string"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TopLevel::Other("an array"))
            }
        }
        d.deserialize_any(Top)
    }
}
