//! The PostgreSQL schema and its migrations.

use super::error::pg_err;
use crate::storage::StoreError;

/// Versioned migrations; `schema_migrations` holds the numbers applied (1-based).
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE rollups (
    metric TEXT COLLATE "C" NOT NULL, dim TEXT COLLATE "C" NOT NULL, val TEXT COLLATE "C" NOT NULL,
    res INTEGER NOT NULL, bucket BIGINT NOT NULL,
    count BIGINT NOT NULL, sum NUMERIC NOT NULL, min NUMERIC, max NUMERIC,
    PRIMARY KEY (metric, dim, val, res, bucket),
    CONSTRAINT rollups_sum_fits_a_decimal CHECK (abs(sum) <= 79228162514264337593543950335)
) WITH (fillfactor = 80);
CREATE TABLE dim_values (
    dim TEXT COLLATE "C" NOT NULL, val TEXT COLLATE "C" NOT NULL, first_seen BIGINT NOT NULL,
    PRIMARY KEY (dim, val)
);
CREATE TABLE raw_blocks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL,
    min_time_ms BIGINT NOT NULL, max_time_ms BIGINT NOT NULL, count BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX raw_blocks_by_name ON raw_blocks (name, id);
CREATE INDEX raw_blocks_by_time ON raw_blocks (max_time_ms);
CREATE TABLE dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, received_ms BIGINT NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, raw BYTEA NOT NULL, topic TEXT, partition INTEGER, "offset" BIGINT
);
CREATE INDEX dead_letters_by_time ON dead_letters (received_ms);
CREATE TABLE offsets (
    source TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (source, partition)
);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, scopes TEXT[] NOT NULL,
    created_ms BIGINT NOT NULL, expires_ms BIGINT, revoked_ms BIGINT
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta VALUES ('tokens_version', 0);
"#,
    // 2: idempotency keys of HTTP ingest requests, with the answer each got.
    r#"
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL, key TEXT NOT NULL, answer TEXT NOT NULL, at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_at ON idempotency_keys (at_ms);
"#,
    // 3: the fingerprint of the request body a key was committed with (see the SQLite backend).
    r#"
ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;
"#,
    // 4: each process numbers its own commits (its writer commits one at a time) and records the
    // last number in the commit's transaction: a read returns the number its snapshot holds, so
    // the read cache knows which of the process's commits the read already includes.
    r#"
CREATE TABLE writer_positions (writer BIGINT PRIMARY KEY, seq BIGINT NOT NULL, at_ms BIGINT NOT NULL);
"#,
    // 5: each dimension value's latest label (e.g. the name of a product id), for pickers.
    r#"
ALTER TABLE dim_values ADD COLUMN label TEXT;
"#,
    // 6: rollup rebuilds and the metric definitions the rollups were built with (see SQLite's 10).
    r#"
CREATE TABLE rebuild_jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,
    owner TEXT NOT NULL, lease_until_ms BIGINT NOT NULL, started_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL,
    progress_block BIGINT NOT NULL, target_block BIGINT NOT NULL,
    events_read BIGINT NOT NULL, events_skipped BIGINT NOT NULL
);
CREATE TABLE rebuild_chunks (
    job BIGINT NOT NULL, upto_block BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (job, upto_block)
);
CREATE TABLE metric_defs (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL, updated_ms BIGINT NOT NULL
);
"#,
    // 7: every commit notifies the other processes (`LISTEN jetstream_commits`, payload: the
    // writer id), through the row each commit writes anyway: no extra round trip.
    r#"
CREATE FUNCTION jetstream_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jetstream_commits', NEW.writer::text);
    RETURN NULL;
END $$;
CREATE TRIGGER writer_positions_notify AFTER INSERT OR UPDATE ON writer_positions
    FOR EACH ROW EXECUTE FUNCTION jetstream_notify_commit();
"#,
];

/// Advisory lock key (per database): one instance migrates at a time.
const MIGRATION_LOCK: i64 = 0x6a65_7473_7472_6d01;

pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    // Held to the end of the transaction: a second instance starting now waits here, then finds
    // every migration applied.
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await.map_err(pg_err)?;
    // Checked rather than `CREATE TABLE IF NOT EXISTS`, whose notice would be logged at every start.
    let exists: bool =
        tx.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[]).await.map_err(pg_err)?.get(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE schema_migrations (
                 version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg_err)?;
    }
    let found: i32 =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(pg_err)?.get(0);
    let supported = MIGRATIONS.len() as i64;
    if i64::from(found) > supported {
        return Err(StoreError::SchemaTooNew { found: found.into(), supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
        let version = i as i32 + 1;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).await.map_err(pg_err)?;
        tracing::info!(version, "postgres migration applied");
    }
    tx.commit().await.map_err(pg_err)
}
