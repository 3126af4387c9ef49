//! The error that means "called or configured wrongly".

/// A mistake in how Jetstream was called or configured: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
