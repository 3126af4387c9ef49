//! Reads: one statement each where it matters (a statement is one snapshot).

use deadpool_postgres::Client;
use tokio_postgres::Row;

use super::error::pg_err;
use crate::rollup::{Agg, Resolution, SeriesKey, Span};
use crate::storage::{
    CommitPos, DEAD_LETTER_PAGE_RAW, DeadLetter, NewDeadLetter, RawBlock, StoreError, StoredAnswer, TokenRecord,
};

pub(super) fn res_code(r: Resolution) -> i32 {
    // At most 86 400: always fits.
    r.seconds() as i32
}

pub(super) fn agg_from_row(r: &Row, at: usize) -> Result<Agg, StoreError> {
    Ok(Agg {
        count: r.try_get(at).map_err(pg_err)?,
        sum: r.try_get(at + 1).map_err(pg_err)?,
        min: r.try_get(at + 2).map_err(pg_err)?,
        max: r.try_get(at + 3).map_err(pg_err)?,
    })
}

/// The merged buckets of `series` covered by `spans`, and the number of this process's (`writer`)
/// last commit that the snapshot holds.
pub(super) async fn aggregate_at(
    client: &Client,
    writer: i64,
    series: &SeriesKey,
    spans: &[Span],
) -> Result<(Agg, Option<CommitPos>), StoreError> {
    let res: Vec<i32> = spans.iter().map(|s| res_code(s.res)).collect();
    let from: Vec<i64> = spans.iter().map(|s| s.from).collect();
    let to: Vec<i64> = spans.iter().map(|s| s.to).collect();
    // One round trip for the whole cover; the server sums the NUMERICs exactly. One statement
    // is one snapshot: the position read with the buckets is the one they stand at.
    let st = client
        .prepare_cached(
            "SELECT COALESCE(SUM(r.count), 0)::int8, COALESCE(SUM(r.sum), 0), MIN(r.min), MAX(r.max),
                    COALESCE((SELECT seq FROM writer_positions WHERE writer = $7), 0)
             FROM UNNEST($4::int4[], $5::int8[], $6::int8[]) AS s(res, lo, hi)
             JOIN rollups r ON r.metric = $1 AND r.dim = $2 AND r.val = $3
                            AND r.res = s.res AND r.bucket >= s.lo AND r.bucket < s.hi",
        )
        .await
        .map_err(pg_err)?;
    let row = client
        .query_one(&st, &[&&*series.metric, &&*series.dim, &series.value, &res, &from, &to, &writer])
        .await
        .map_err(pg_err)?;
    let pos: i64 = row.try_get(4).map_err(pg_err)?;
    Ok((agg_from_row(&row, 0)?, Some(pos as u64)))
}

/// Each of a chart's buckets `[bounds[i], bounds[i + 1])`, covered exactly, in one statement.
pub(super) async fn buckets(client: &Client, series: &SeriesKey, bounds: &[i64]) -> Result<Vec<Agg>, StoreError> {
    let (mut idx, mut res, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, w) in bounds.windows(2).enumerate() {
        for s in crate::rollup::cover(w[0], w[1]) {
            idx.push(i as i32);
            res.push(res_code(s.res));
            lo.push(s.from);
            hi.push(s.to);
        }
    }
    let st = client
        .prepare_cached(
            "SELECT s.i, COALESCE(SUM(r.count), 0)::int8, COALESCE(SUM(r.sum), 0), MIN(r.min), MAX(r.max)
             FROM UNNEST($4::int4[], $5::int4[], $6::int8[], $7::int8[]) AS s(i, res, lo, hi)
             JOIN rollups r ON r.metric = $1 AND r.dim = $2 AND r.val = $3
                            AND r.res = s.res AND r.bucket >= s.lo AND r.bucket < s.hi
             GROUP BY s.i",
        )
        .await
        .map_err(pg_err)?;
    let rows = client
        .query(&st, &[&&*series.metric, &&*series.dim, &series.value, &idx, &res, &lo, &hi])
        .await
        .map_err(pg_err)?;
    let mut out = vec![Agg::default(); bounds.len().saturating_sub(1)];
    for r in &rows {
        let i: i32 = r.try_get(0).map_err(pg_err)?;
        out[i as usize] = agg_from_row(r, 1)?;
    }
    Ok(out)
}

/// Every value of `dim` in `metric` with its aggregate over `spans`, in one statement.
pub(super) async fn dim_aggregates(
    client: &Client,
    metric: &str,
    dim: &str,
    spans: &[Span],
) -> Result<Vec<(String, Agg)>, StoreError> {
    let res: Vec<i32> = spans.iter().map(|s| res_code(s.res)).collect();
    let from: Vec<i64> = spans.iter().map(|s| s.from).collect();
    let to: Vec<i64> = spans.iter().map(|s| s.to).collect();
    let st = client
        .prepare_cached(
            "SELECT r.val, SUM(r.count)::int8, SUM(r.sum), MIN(r.min), MAX(r.max)
             FROM UNNEST($3::int4[], $4::int8[], $5::int8[]) AS s(res, lo, hi)
             JOIN rollups r ON r.metric = $1 AND r.dim = $2 AND r.res = s.res AND r.bucket >= s.lo AND r.bucket < s.hi
             GROUP BY r.val",
        )
        .await
        .map_err(pg_err)?;
    let rows = client.query(&st, &[&metric, &dim, &res, &from, &to]).await.map_err(pg_err)?;
    rows.iter().map(|r| Ok((r.try_get(0).map_err(pg_err)?, agg_from_row(r, 1)?))).collect()
}

pub(super) async fn dim_labels(
    client: &Client,
    dim: &str,
    values: &[String],
) -> Result<Vec<Option<String>>, StoreError> {
    let st = client
        .prepare_cached(
            "SELECT v.val, d.label FROM UNNEST($2::text[]) AS v(val) LEFT JOIN dim_values d ON d.dim = $1 AND d.val = v.val",
        )
        .await
        .map_err(pg_err)?;
    let rows = client.query(&st, &[&dim, &values]).await.map_err(pg_err)?;
    let found: std::collections::HashMap<String, Option<String>> = rows
        .iter()
        .map(|r| Ok((r.try_get::<_, String>(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?)))
        .collect::<Result<_, StoreError>>()?;
    Ok(values.iter().map(|v| found.get(v).cloned().flatten()).collect())
}

pub(super) async fn dim_values(
    client: &Client,
    dim: &str,
    prefix: &str,
    search: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let pattern = search.map(|s| format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let st = client
        .prepare_cached(
            "SELECT val, label FROM dim_values WHERE dim = $1 AND starts_with(val, $2)
             AND ($3::text IS NULL OR label LIKE $3) ORDER BY val LIMIT $4",
        )
        .await
        .map_err(pg_err)?;
    let rows = client.query(&st, &[&dim, &prefix, &pattern, &i64::from(limit)]).await.map_err(pg_err)?;
    rows.iter().map(|r| Ok((r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?))).collect()
}

pub(super) async fn idempotent_answer(
    client: &Client,
    scope: &str,
    key: &str,
) -> Result<Option<StoredAnswer>, StoreError> {
    let row = client
        .query_opt("SELECT answer, fingerprint FROM idempotency_keys WHERE scope = $1 AND key = $2", &[&scope, &key])
        .await
        .map_err(pg_err)?;
    Ok(row.map(|r| StoredAnswer { answer: r.get(0), fingerprint: r.get(1) }))
}

pub(super) async fn points(
    client: &Client,
    series: &SeriesKey,
    res: Resolution,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Agg)>, StoreError> {
    let st = client
        .prepare_cached(
            "SELECT bucket, count, sum, min, max FROM rollups
             WHERE metric = $1 AND dim = $2 AND val = $3 AND res = $4 AND bucket >= $5 AND bucket < $6
             ORDER BY bucket",
        )
        .await
        .map_err(pg_err)?;
    let rows = client
        .query(&st, &[&&*series.metric, &&*series.dim, &series.value, &res_code(res), &from, &to])
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| Ok((r.try_get(0).map_err(pg_err)?, agg_from_row(r, 1)?))).collect()
}

pub(super) async fn is_known(client: &Client, dim: &str, value: &str) -> Result<bool, StoreError> {
    let st = client
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM dim_values WHERE dim = $1 AND val = $2)")
        .await
        .map_err(pg_err)?;
    Ok(client.query_one(&st, &[&dim, &value]).await.map_err(pg_err)?.get(0))
}

pub(super) async fn stored_offsets(client: &Client, source: &str) -> Result<Vec<(i32, i64)>, StoreError> {
    let st = client
        .prepare_cached("SELECT partition, next_offset FROM offsets WHERE source = $1 ORDER BY partition")
        .await
        .map_err(pg_err)?;
    let rows = client.query(&st, &[&source]).await.map_err(pg_err)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub(super) async fn dead_letters(
    client: &Client,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<DeadLetter>, StoreError> {
    let st = client
        .prepare_cached(
            r#"SELECT id, received_ms, source, reason, substring(raw from 1 for $3::int4), topic, partition, "offset",
                      octet_length(raw)::int8
               FROM dead_letters WHERE id < $1 ORDER BY id DESC LIMIT $2"#,
        )
        .await
        .map_err(pg_err)?;
    let page_raw = DEAD_LETTER_PAGE_RAW as i32;
    let rows = client.query(&st, &[&before.unwrap_or(i64::MAX), &i64::from(limit), &page_raw]).await.map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                id: r.try_get(0).map_err(pg_err)?,
                raw_size: r.try_get(8).map_err(pg_err)?,
                letter: letter_from_row(r)?,
            })
        })
        .collect()
}

pub(super) async fn raw_blocks(
    client: &Client,
    name: &str,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<(i64, RawBlock)>, StoreError> {
    let st = client
        .prepare_cached(
            "SELECT id, name, min_time_ms, max_time_ms, count, data FROM raw_blocks
             WHERE name = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .await
        .map_err(pg_err)?;
    let rows = client.query(&st, &[&name, &before.unwrap_or(i64::MAX), &i64::from(limit)]).await.map_err(pg_err)?;
    rows.iter().map(raw_block_from_row).collect()
}

/// `id, name, min_time_ms, max_time_ms, count, data` of `raw_blocks`.
pub(super) fn raw_block_from_row(r: &Row) -> Result<(i64, RawBlock), StoreError> {
    Ok((
        r.try_get(0).map_err(pg_err)?,
        RawBlock {
            name: r.try_get(1).map_err(pg_err)?,
            min_time_ms: r.try_get(2).map_err(pg_err)?,
            max_time_ms: r.try_get(3).map_err(pg_err)?,
            count: r.try_get(4).map_err(pg_err)?,
            data: r.try_get(5).map_err(pg_err)?,
        },
    ))
}

/// Columns 1 to 7 of a dead-letter row: `received_ms, source, reason, raw, topic, partition, "offset"`.
pub(super) fn letter_from_row(r: &Row) -> Result<NewDeadLetter, StoreError> {
    Ok(NewDeadLetter {
        received_ms: r.try_get(1).map_err(pg_err)?,
        source: r.try_get(2).map_err(pg_err)?,
        reason: r.try_get(3).map_err(pg_err)?,
        raw: r.try_get(4).map_err(pg_err)?,
        topic: r.try_get(5).map_err(pg_err)?,
        partition: r.try_get(6).map_err(pg_err)?,
        offset: r.try_get(7).map_err(pg_err)?,
    })
}

pub(super) async fn list_tokens(client: &Client) -> Result<Vec<TokenRecord>, StoreError> {
    let rows = client
        .query("SELECT name, hash, scopes, created_ms, expires_ms, revoked_ms FROM tokens ORDER BY name", &[])
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            Ok(TokenRecord {
                name: r.try_get(0).map_err(pg_err)?,
                hash: r.try_get(1).map_err(pg_err)?,
                scopes: r.try_get(2).map_err(pg_err)?,
                created_ms: r.try_get(3).map_err(pg_err)?,
                expires_ms: r.try_get(4).map_err(pg_err)?,
                revoked_ms: r.try_get(5).map_err(pg_err)?,
            })
        })
        .collect()
}

pub(super) async fn tokens_version(client: &Client) -> Result<i64, StoreError> {
    let st = client.prepare_cached("SELECT value FROM meta WHERE key = 'tokens_version'").await.map_err(pg_err)?;
    Ok(client.query_one(&st, &[]).await.map_err(pg_err)?.get(0))
}

/// Rows visited between two yields to the runtime: a scan of millions of rows feeds the visitor
/// on the request threads, in short runs.
const SCAN_RUN: u32 = 4096;

/// `Store::scan_latest`'s rows, from one snapshot (a read-only REPEATABLE READ transaction): every
/// dimension value, then each series' latest bucket per resolution below all-time. Every
/// resolution lives in `rollups` here (no pending tables), so one grouped scan has them all.
pub(super) async fn scan_latest(
    client: &mut Client,
    visit: &mut dyn crate::storage::LatestVisitor,
) -> Result<(), StoreError> {
    use futures::StreamExt as _;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)?;
    let mut run = 0u32;
    let values = tx.query_raw("SELECT dim, val FROM dim_values", std::iter::empty::<i32>()).await.map_err(pg_err)?;
    let mut values = std::pin::pin!(values);
    while let Some(r) = values.next().await {
        let r = r.map_err(pg_err)?;
        visit.value(r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?);
        run += 1;
        if run % SCAN_RUN == 0 {
            tokio::task::yield_now().await;
        }
    }
    let latest = tx
        .query_raw(
            "SELECT metric, dim, val, res, max(bucket) FROM rollups WHERE res > 0 GROUP BY metric, dim, val, res",
            std::iter::empty::<i32>(),
        )
        .await
        .map_err(pg_err)?;
    let mut latest = std::pin::pin!(latest);
    while let Some(r) = latest.next().await {
        let r = r.map_err(pg_err)?;
        let res: i32 = r.try_get(3).map_err(pg_err)?;
        if let Some(res) = Resolution::from_seconds(i64::from(res)) {
            let key = (r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?, r.try_get(2).map_err(pg_err)?);
            visit.bucket(key, res, r.try_get(4).map_err(pg_err)?);
        }
        run += 1;
        if run % SCAN_RUN == 0 {
            tokio::task::yield_now().await;
        }
    }
    tx.commit().await.map_err(pg_err)
}

/// An upper bound of the number of series, for sizing the index before its scan: the planner's
/// row count of `rollups` (every series has a row per resolution, so rows outnumber series),
/// or the number of dimension values when the table was never analysed.
pub(super) async fn series_bound(client: &Client) -> Result<u64, StoreError> {
    let row = client
        .query_one(
            "SELECT greatest((SELECT reltuples FROM pg_class WHERE oid = 'rollups'::regclass)::int8,
                             (SELECT count(*) FROM dim_values), 0)",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let n: i64 = row.try_get(0).map_err(pg_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
