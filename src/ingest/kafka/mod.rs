//! Kafka ingestion with an exactly-once effect.
//!
//! Kafka delivers at least once; Jetstream makes the *effect* exactly once by storing each
//! partition's next offset in the same store transaction as the rollups, raw events and dead
//! letters its records produced ([`OffsetAdvance`], fenced by the store), and by resuming from the
//! stored offsets — never from Kafka's committed ones — whenever partitions are assigned.
//!
//! # How the consumer runs
//! One OS thread per consumer owns an rdkafka [`BaseConsumer`] (librdkafka, bundled 2.12). It
//! polls records and copies them into a batch, which is validated and folded into a [`Pending`]
//! on the blocking pool (so the thread only fetches) and handed to the group-commit writer, in
//! order. A batch goes as soon as the fetched records are used up (or at [`BATCH_RECORDS`]
//! records, or after [`BATCH_LINGER`]), with at most [`MAX_IN_FLIGHT`] batches awaiting their
//! commit: while they commit it keeps fetching into the next batch (so batches grow with the
//! load and an idle stream waits for no timer), and
//! beyond that it waits (librdkafka's own prefetch is capped by `queued.max.messages.kbytes`), so
//! memory is bounded whatever the backlog. A thread rather than a task because librdkafka runs
//! the rebalance callback inside `poll`, and the callback must block: it reads the store and
//! waits for in-flight batches before partitions change hands.
//!
//! # Assignment: a rebalance callback, not a seek afterwards
//! The custom [`ConsumerContext`] overrides `rebalance`. On *assign* it reads the stored offsets
//! and writes them into the partition list before calling `assign`, so librdkafka's very first
//! fetch starts at the store's position (a seek after the fact would race with fetches from the
//! group's committed offsets). On *revoke* it first waits for the batches in flight, so the next
//! owner reads offsets that include them, and drops the unsent batch (it will be fetched again
//! by whoever owns the partition next). The eager `range` assignor is configured so that every
//! rebalance is a full revoke-then-assign.
//!
//! # When the store says no
//! A batch whose offsets the store fences ([`WriteError::Fenced`]: another consumer advanced the
//! partition) or fails to write is *resynchronised*: wait for everything in flight, drop the
//! unsent batch, re-read the stored offsets and re-assign there. Records below a partition's
//! position are skipped (stale prefetch), so nothing is counted twice; nothing above it is ever
//! skipped, so nothing is lost. A fetch that resumes *past* its offset (tansu 0.6 answers a
//! fetch with the first batch starting at or after the offset, skipping the rest of the batch
//! holding it) is guarded against: a resumed fetch starts a little earlier and skips up to the
//! stored offset, rewinding further if the offset is still not seen (`Ctx::take`).
//!
//! Offsets are also committed to Kafka (asynchronously, after the store commit) so lag tools
//! show sensible numbers; Jetstream itself never reads them.
//!
//! Known about the test broker (tansu 0.6): it does not hand a SIGKILLed member's partitions to
//! the surviving members until another member joins; real Kafka does so after
//! `session.timeout.ms`. A killed consumer that is restarted (as a supervisor would) gets them back.

//!
//! - [`consumer`]: the consumer's thread and its loop; [`context`]: its state and the rebalance
//!   callback; [`fold`]: records validated and folded off the thread;
//! - [`lag`]: per-partition lag; [`producer`]: `jetstream send`, the demo, dead-letter copies;
//!   [`client`]: what every client shares.

mod client;
mod consumer;
mod context;
mod fold;
mod lag;
mod producer;

pub use client::source_name;
pub use consumer::KafkaConsumer;
pub use context::ConsumerParts;
pub use lag::{LagError, PartitionLag, topic_lag};
pub use producer::{Delivered, EventProducer, LogDelivery, ensure_topic, event_key};
