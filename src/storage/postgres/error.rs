//! Errors from PostgreSQL, with what the server said.

use crate::storage::StoreError;

/// Classifies a PostgreSQL error (see [`StoreError`]) and keeps the tokio-postgres error (for
/// retries) under a message that says what the server said:
/// its `Display` alone is only "db error".
pub(super) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let msg = match e.as_db_error() {
        // The server's pg_hba.conf admits only TLS connections (`hostssl`) and this one was not.
        Some(db) if db.message().ends_with("no encryption") => format!(
            "postgres: {} ({}): the server accepts only TLS connections; use sslmode=verify-full (or require)",
            db.message(),
            db.code().code()
        ),
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => match (super::tls::describe(&e), std::error::Error::source(&e)) {
            (Some(tls), _) => format!("postgres: {tls}"),
            (None, Some(cause)) => format!("postgres: {e}: {cause}"),
            (None, None) => format!("postgres: {e}"),
        },
    };
    let class = e.code().map(|c| c.code()[..2].to_string());
    let e = anyhow::Error::new(e).context(msg);
    match class.as_deref() {
        // A data exception or an integrity violation, raised by a statement inside the
        // transaction: rolled back, nothing applied.
        Some("22" | "23") => StoreError::Rejected(e),
        // Connection exceptions, a transaction the server rolled back (a deadlock, a
        // serialisation failure), insufficient resources, operator intervention (shutdown, a
        // statement timeout), a lock not available: worth a retry later.
        Some("08" | "40" | "53" | "57" | "55") | None => StoreError::Unavailable(e),
        _ => StoreError::Backend(e),
    }
}
