//! Jetstream: a real-time analytics backend.
//!
//! # Layout
//! How an event flows, module by module (see ARCHITECTURE.md for the why):
//!
//! - [`event`]: a body becomes events: split, named (`event_name` or `event`), timed, validated
//!   against the configured schemas; a rejection says precisely why.
//! - [`ingest`]: sources turn received records into a [`ingest::Pending`] batch (rollup deltas, raw
//!   lines, dead letters, offsets); [`ingest::http`] is `POST /api/v1/events`; [`ingest::writer`]
//!   group-commits whatever is queued in one store transaction and acknowledges after it.
//! - [`rollup`]: declared metrics fold events into count/sum/min/max buckets at five resolutions;
//!   [`rollup::cover`] answers any window from a handful of buckets.
//! - [`storage`]: the [`storage::Store`] trait and its backends, chosen by URL.
//! - [`api`]: the axum router: the original design's two endpoints, `/api/v1`, the read cache.
//! - [`auth`]: scoped bearer tokens (hash-only storage, hot reload).
//! - [`config`]: the typed settings file with defaults for the original design.
//! - [`tls`]: HTTPS for `serve --tls-cert … --tls-key …` (rustls).
//! - [`app`]: starts everything and stops it in order; [`cli`] and [`demo`] are the binary's edge.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod event;
pub mod ingest;
pub mod rollup;
pub mod storage;
pub mod tls;
