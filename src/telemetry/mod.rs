//! What an operator sees: Prometheus metrics ([`metrics`]: names, descriptions, the recorder,
//! the one function per thing that happened), the log format ([`logs`]) and error tracking
//! ([`errors`]).
//!
//! This module names no other module of the crate: every layer above reports through it, and the
//! API renders it at `/metrics`. Labels have bounded cardinality: an event name is a label only
//! when the configuration declares it (else `other`), a route is its template, never its path.

pub mod errors;
pub mod logs;
pub mod metrics;
