//! Jetstream: a real-time analytics backend.
//!
//! # Layout
//! How an event flows, module by module (see ARCHITECTURE.md for the why). Each module depends
//! only on the ones listed before it (`scripts/check-layers.py` checks that no two modules depend
//! on each other, at any level):
//!
//! - [`clock`], [`health`]: the wall clock; the consumer's state that `/readyz` reports;
//!   [`dashboard`]: the built-in live dashboard page (`web/`'s build, embedded).
//! - [`telemetry`]: metric names and the Prometheus recorder, the log format, error tracking;
//!   every layer reports through it, and it names no other module.
//! - [`config`]: the typed settings file with defaults for the original design.
//! - [`event`]: a body becomes events: split, named (`event_name` or `event`), timed, validated
//!   against the configured schemas; a rejection says precisely why; numbers are read exactly.
//! - [`rollup`]: declared metrics fold events into count/sum/min/max buckets at five resolutions;
//!   [`rollup::cover`] answers any window from a handful of buckets.
//! - [`storage`]: the [`storage::Store`] trait and its backends (SQLite, PostgreSQL), chosen by URL.
//! - [`ingest`]: sources turn received records into a [`ingest::Pending`] batch (rollup deltas, raw
//!   lines, dead letters, offsets); [`ingest::kafka`] consumes a topic exactly once;
//!   [`ingest::writer`] group-commits whatever is queued in one store transaction.
//! - [`auth`]: scoped bearer tokens (hash-only storage, hot reload).
//! - [`api`]: the axum router: the original design's two endpoints, `/api/v1` (aggregates, series,
//!   top-N, dimension values, batches, live push), the read cache; HTTP ingest hands bodies to `ingest`.
//! - [`server`]: the listener (HTTP and HTTPS): connection cap, timeouts, shutdown deadline.
//! - [`app`]: starts everything and stops it in order; [`cli`] is the binary's edge.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod event;
pub mod health;
pub mod ingest;
pub mod rebuild;
pub mod rollup;
pub mod server;
pub mod storage;
pub mod telemetry;
