//! The event model: splitting a body into events, naming, timing and validating each one.
//!
//! Everything here is pure: no I/O, no clock (the caller passes the time of receipt).
//!
//! - [`body`]: a request body → the raw bytes of each event;
//! - [`fields`]: an event's top-level fields, borrowed from those bytes (numbers keep their text);
//! - [`number`]: exact decimals, identifiers and counts from a field's text;
//! - [`validate`]: the event's name and time, and its schema's fields checked.

mod body;
mod fields;
mod number;
mod validate;

pub use body::{BodyError, BodyFormat, split_body};
pub use fields::{FieldValue, Fields};
pub use number::{MAX_DECIMAL, canonical_id, exact_decimal, id_number, parse_decimal, parse_id};
pub use validate::{Event, MAX_NAME_BYTES, Rejection, Validator, parse_timestamp};

#[cfg(test)]
mod tests;
