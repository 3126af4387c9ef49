//! Splitting a request body into the raw bytes of each event.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The shapes a request body can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One object or an array of objects.
    Json,
    /// One JSON value per line.
    Ndjson,
}

/// A body that cannot be read as events at all (answered with 400 or 413, nothing stored).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body must be a JSON object or an array of objects")]
    WrongShape,
    #[error("the body holds more than {0} events; send them in several requests")]
    TooManyEvents(usize),
}

/// A JSON body that does not parse; when its first line is a whole object it is NDJSON sent
/// without its content type, and the message says so.
fn not_json(body: &[u8], e: &serde_json::Error) -> BodyError {
    let first = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let ndjson = first.len() < body.len() && serde_json::from_slice::<serde::de::IgnoredAny>(first).is_ok();
    let hint = if ndjson {
        "; it looks like NDJSON (one object per line): send it with Content-Type: application/x-ndjson"
    } else {
        ""
    };
    BodyError::NotJson(format!("{e}{hint}"))
}

/// Splits a body into the raw bytes of each event, in order; at most `max_events` of them (a body
/// of millions of tiny events would otherwise cost far more memory than its size).
pub fn split_body(body: &[u8], format: BodyFormat, max_events: usize) -> Result<Vec<&[u8]>, BodyError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(BodyError::Empty);
    }
    match format {
        BodyFormat::Ndjson => {
            let mut items = Vec::new();
            for line in trimmed.split(|&b| b == b'\n').map(|l| l.trim_ascii()).filter(|l| !l.is_empty()) {
                if items.len() == max_events {
                    return Err(BodyError::TooManyEvents(max_events));
                }
                items.push(line);
            }
            Ok(items)
        }
        BodyFormat::Json => match trimmed[0] {
            b'{' => {
                // Validate once here so a broken single object is a 400, like any non-JSON body.
                serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).map_err(|e| not_json(trimmed, &e))?;
                Ok(vec![trimmed])
            }
            b'[' => {
                let mut de = serde_json::Deserializer::from_slice(trimmed);
                let items = de.deserialize_seq(Items { max: max_events }).map_err(|e| {
                    if e.to_string().starts_with(TOO_MANY) {
                        BodyError::TooManyEvents(max_events)
                    } else {
                        BodyError::NotJson(e.to_string())
                    }
                })?;
                de.end().map_err(|e| BodyError::NotJson(e.to_string()))?;
                Ok(items)
            }
            _ => match serde_json::from_slice::<serde::de::IgnoredAny>(trimmed) {
                Ok(_) => Err(BodyError::WrongShape),
                Err(e) => Err(BodyError::NotJson(e.to_string())),
            },
        },
    }
}

const TOO_MANY: &str = "too many events";

/// The raw bytes of an array's items, stopping at `max` of them.
struct Items {
    max: usize,
}

impl<'de> Visitor<'de> for Items {
    type Value = Vec<&'de [u8]>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.max {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            items.push(raw.get().as_bytes());
        }
        Ok(items)
    }
}
