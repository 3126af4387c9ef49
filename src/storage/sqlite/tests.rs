//! Tests of the SQLite backend's internals: migration from version 1, and the merge of recent
//! rows into `rollups`. The storage contract itself is tested through the trait, on every
//! backend, in `tests/storage.rs`.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::maintain::{ROWS_PER_STEP, merge_deltas, merge_pending};
use super::schema::MIGRATIONS;
use super::*;
use crate::storage::{PruneBefore, Store, StoreOptions, WriteBatch};

/// A store written by a binary that knew only migration 1 (text keys, text decimals) opens
/// with every bucket intact, and takes new commits on top.
#[tokio::test]
async fn a_version_1_store_is_migrated_with_its_rollups() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v1.db");
    let path = path.to_str().expect("utf-8 path");
    {
        let c = Connection::open(path).expect("open");
        c.execute_batch(MIGRATIONS[0]).expect("migration 1");
        c.pragma_update(None, "user_version", 1).expect("version");
        c.execute_batch(
            "INSERT INTO rollups VALUES ('sales_amount', 'product_id', '3', 0, 0, 2, '1.10', '0.10', '1.00');
             INSERT INTO rollups VALUES ('sales_amount', 'product_id', '3', 60, 120, 1, '0.10', '0.10', '0.10');
             INSERT INTO rollups VALUES ('rating', '', '', 0, 0, 1, '4', NULL, NULL);",
        )
        .expect("v1 rows");
    }
    let store = SqliteStore::open(path, StoreOptions::default()).await.expect("migrates");
    let s = SeriesKey::new("sales_amount", "product_id", "3");
    let all = [Span { res: Resolution::All, from: 0, to: 1 }];
    let got = store.read_aggregate(&s, &all).await.expect("read");
    let d = |v: &str| Decimal::from_str(v).expect("decimal");
    assert_eq!(got, Agg { count: 2, sum: d("1.10"), min: Some(d("0.10")), max: Some(d("1.00")) });
    let minute = store.read_points(&s, Resolution::Minute, 0, 600).await.expect("points");
    assert_eq!(minute, vec![(120, Agg::of(d("0.10")))]);
    let rating = store.read_aggregate(&SeriesKey::new("rating", "", ""), &all).await.expect("read");
    assert_eq!((rating.count, rating.sum, rating.min), (1, d("4"), None));

    let batch = WriteBatch {
        rollups: crate::rollup::RollupRows::from_buckets([(
            crate::rollup::BucketKey { series: s.clone(), res: Resolution::All, start: 0 },
            Agg::of(d("0.05")),
        )]),
        ..Default::default()
    };
    store.commit(batch).await.expect("commit");
    let got = store.read_aggregate(&s, &all).await.expect("read");
    assert_eq!(got, Agg { count: 3, sum: d("1.15"), min: Some(d("0.05")), max: Some(d("1.00")) });
}

/// A bucket with a merged part in `rollups` and a recent part in `rollup_deltas` reads as one.
#[tokio::test]
async fn merged_and_recent_parts_of_a_bucket_read_as_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.db");
    let store = SqliteStore::open(path.to_str().expect("utf-8"), StoreOptions::default()).await.expect("open");
    let s = SeriesKey::new("m", "d", "1");
    let d = |v: &str| Decimal::from_str(v).expect("decimal");
    let row = |res, start, v: &str| {
        let key = crate::rollup::BucketKey { series: s.clone(), res, start };
        WriteBatch { rollups: crate::rollup::RollupRows::from_buckets([(key, Agg::of(d(v)))]), ..Default::default() }
    };
    store.commit(row(Resolution::Minute, 60, "1.5")).await.expect("commit");
    let merged = store.write(|w| merge_deltas(w)).await.expect("merge");
    assert_eq!(merged, 1);
    store.commit(row(Resolution::Minute, 60, "0.25")).await.expect("commit");
    store.commit(row(Resolution::Minute, 120, "7")).await.expect("commit");
    let (in_rollups, in_deltas): (i64, i64) = store
        .read(|c| {
            c.query_row("SELECT (SELECT count(*) FROM rollups), (SELECT count(*) FROM rollup_deltas)", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db_err)
        })
        .await
        .expect("counts");
    assert_eq!((in_rollups, in_deltas), (1, 2), "one part merged, two recent");

    let span = [Span { res: Resolution::Minute, from: 0, to: 180 }];
    let all = store.read_aggregate(&s, &span).await.expect("read");
    assert_eq!(all, Agg { count: 3, sum: d("8.75"), min: Some(d("0.25")), max: Some(d("7")) });
    let points = store.read_points(&s, Resolution::Minute, 0, 180).await.expect("points");
    let mut sixty = Agg::of(d("1.5"));
    sixty.merge(&Agg::of(d("0.25")));
    assert_eq!(points, vec![(60, sixty), (120, Agg::of(d("7")))]);

    // Pruning merges first, so it counts buckets, not parts.
    let before = PruneBefore {
        raw_ms: 0,
        dead_letters_ms: 0,
        second_buckets_s: Some(0),
        minute_buckets_s: Some(100),
        idempotency_keys_ms: 0,
    };
    assert_eq!(store.prune(before).await.expect("prune").buckets, 1);
    let left = store.read_points(&s, Resolution::Minute, 0, 180).await.expect("points");
    assert_eq!(left, vec![(120, Agg::of(d("7")))]);
}

/// The background merge goes a few rows at a time, through the series that have pending rows
/// only; across several steps it still moves every pending row exactly once (a series with more
/// rows than a step moves whole), and a commit can land between two steps.
#[tokio::test]
async fn a_merge_in_steps_moves_every_series_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("steps.db");
    let store = SqliteStore::open(path.to_str().expect("utf-8"), StoreOptions::default()).await.expect("open");
    // The steps are counted here, so no background merge may move the rows first: a commit more
    // than `MERGE_EVERY` after the last merge starts one (on a slow machine the first commit and
    // merge below took that long, and the steps counted were 0).
    store.maintaining.store(true, std::sync::atomic::Ordering::Release);
    const STEP: i64 = 16;
    let key = |i: i64| SeriesKey::new("m", "product_id", &i.to_string());
    // 3 * STEP + 5 series with a second each, and series 7 with 40 seconds.
    let n = 3 * STEP + 5;
    let batch = |t: i64| WriteBatch {
        rollups: crate::rollup::RollupRows::from_seconds(
            (0..n)
                .map(|i| (key(i), t, Agg::of(Decimal::from(i))))
                .chain((1..40).map(|s| (key(7), t + s, Agg::of(Decimal::ONE)))),
        ),
        ..Default::default()
    };
    // 10,000 series with nothing pending, below those of the batch: skipped, not stepped through.
    let idle = (0..10_000).map(|i| (key(1_000 + i), 50, Agg::of(Decimal::ONE)));
    store
        .commit(WriteBatch { rollups: crate::rollup::RollupRows::from_seconds(idle), ..Default::default() })
        .await
        .expect("commit");
    store.write(|w| merge_deltas(w)).await.expect("merge");
    store.commit(batch(100)).await.expect("commit");
    let w = store.writer.clone();
    let (moved, steps) =
        tokio::task::spawn_blocking(move || merge_pending(&w, STEP)).await.expect("join").expect("merge");
    // 52 series of one row (16 a step) and series 7 with 40 rows (a step of its own, whole): the
    // step before series 7 may end short, so 5 or 6 steps, not one per 16 series ids.
    assert!((5..=6).contains(&steps), "{steps} steps");
    // Each series: its seconds and the minute, hour, day and all-time buckets derived from them
    // (series 7: 40 seconds, 100-139, in two minutes, one hour and one day).
    assert_eq!(moved, 5 * (n as usize - 1) + 40 + 5);
    // The steps commit without an fsync of their own; acknowledged commits still wait for one.
    let sync: i64 = store
        .write(|w| w.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).map_err(db_err))
        .await
        .expect("pragma");
    assert_eq!(sync, 2, "the writer is back to synchronous=FULL after a merge");
    store.commit(batch(200)).await.expect("commit after the merge");
    let recent: i64 = store
        .read(|c| c.query_row("SELECT count(*) FROM rollup_seconds", [], |r| r.get(0)).map_err(db_err))
        .await
        .expect("count");
    assert_eq!(recent, n + 39, "only the second commit is still recent");
    let all = [Span { res: Resolution::All, from: 0, to: 1 }];
    for i in [0, 7, STEP - 1, STEP, n - 1] {
        let got = store.read_aggregate(&key(i), &all).await.expect("read");
        let (count, sum) = if i == 7 { (80, Decimal::from(2 * 7 + 78)) } else { (2, Decimal::from(2 * i)) };
        assert_eq!((got.count, got.sum), (count, sum), "series {i}");
    }
}

/// A fresh store opened with `options`, holding an event of 1 at each second of `times` in one
/// series, committed and merged into `rollups`; with its directory and the series.
async fn merged_events(options: StoreOptions, times: &[i64]) -> (tempfile::TempDir, SqliteStore, SeriesKey) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("merged.db");
    let store = SqliteStore::open(path.to_str().expect("utf-8"), options).await.expect("open");
    let s = SeriesKey::new("m", "product_id", "1");
    let seconds = times.iter().map(|t| (s.clone(), *t, Agg::of(Decimal::ONE)));
    let batch = WriteBatch { rollups: crate::rollup::RollupRows::from_seconds(seconds), ..Default::default() };
    store.commit(batch).await.expect("commit");
    let w = store.writer.clone();
    tokio::task::spawn_blocking(move || merge_pending(&w, ROWS_PER_STEP)).await.expect("join").expect("merge");
    (dir, store, s)
}

/// A second past `second_buckets_s` (a late event) is not written to `rollups` by the merge; its
/// minute, hour, day and all-time buckets are.
#[tokio::test]
async fn a_merge_leaves_out_seconds_past_their_retention() {
    let now = crate::clock::now_ms() / 1000;
    let options = StoreOptions { second_buckets_s: Some(3_600), ..Default::default() };
    let (_dir, store, s) = merged_events(options, &[now - 7_200, now - 10]).await;
    let kept: Vec<i64> = store
        .read_points(&s, Resolution::Second, 0, now + 1)
        .await
        .expect("seconds")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(kept, [now - 10], "only the second within retention");
    let all = store.read_aggregate(&s, &[Span { res: Resolution::All, from: 0, to: 1 }]).await.expect("read");
    assert_eq!(all.count, 2, "the late event still counts in the coarser buckets");
    let old_hour = (now - 7_200).div_euclid(3_600) * 3_600;
    let hour = [Span { res: Resolution::Hour, from: old_hour, to: old_hour + 3_600 }];
    assert_eq!(store.read_aggregate(&s, &hour).await.expect("read").count, 1);
}

/// A store file at `path` as a binary of schema `version` left it, holding the `rollups` rows
/// `(series, res, bucket, agg)` of series `m/product_id/<id>`.
fn store_of_version(path: &str, version: usize, rows: &[(i64, i64, i64, Agg)]) {
    let mut c = Connection::open(path).expect("open");
    super::decimal::register_decimal_functions(&c).expect("functions");
    let tx = c.transaction().expect("begin");
    for sql in &MIGRATIONS[..version] {
        tx.execute_batch(sql).expect("migration");
    }
    tx.pragma_update(None, "user_version", version as i64).expect("version");
    let mut ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        tx.execute("INSERT INTO series (id, metric, dim, val) VALUES (?1, 'm', 'product_id', ?1)", [id])
            .expect("series");
    }
    for (id, res, bucket, a) in rows {
        tx.execute(
            "INSERT INTO rollups VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![id, res, bucket, super::decimal::encode_agg(a)],
        )
        .expect("row");
    }
    tx.commit().expect("commit");
}

/// Commits `agg` at second `t` of series `s` and merges it into `rollups`.
async fn commit_merged(store: &SqliteStore, s: &SeriesKey, t: i64, agg: Agg) {
    let batch =
        WriteBatch { rollups: crate::rollup::RollupRows::from_seconds([(s.clone(), t, agg)]), ..Default::default() };
    store.commit(batch).await.expect("commit");
    store.write(|w| merge_deltas(w)).await.expect("merge");
}

/// The pairs of integers a query of `store` answers.
async fn pairs(store: &SqliteStore, sql: &'static str) -> Vec<(i64, i64)> {
    store
        .read(move |c| {
            c.prepare(sql)
                .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(db_err)
        })
        .await
        .expect("rows")
}

/// A store of version 10 (a row per day, hour and minute bucket) opens with those rows as day
/// packs (migration 11), every bucket reading as before, and takes commits on top.
#[tokio::test]
async fn a_version_10_store_is_repacked_with_every_bucket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v10.db");
    let path = path.to_str().expect("utf-8 path");
    let s = SeriesKey::new("m", "product_id", "1");
    let d = |v: &str| Decimal::from_str(v).expect("decimal");
    let day = 19_000 * 86_400;
    // (resolution, start, value): two days, an hour of two minutes, an hour row without minutes,
    // values of different scales, and the second and all-time rows that stay as they are.
    let rows = [
        (Resolution::All, 0, "10.50"),
        (Resolution::Day, day, "7.5"),
        (Resolution::Hour, day + 3_600, "7.5"),
        (Resolution::Minute, day + 3_600 + 60, "2.50"),
        (Resolution::Minute, day + 3_600 + 120, "5"),
        (Resolution::Day, day + 86_400, "3.00"),
        (Resolution::Hour, day + 86_400 + 23 * 3_600, "3.00"),
        (Resolution::Second, day + 86_400 + 23 * 3_600 + 5, "3.00"),
    ];
    let old: Vec<(i64, i64, i64, Agg)> = rows.iter().map(|(res, t, v)| (1, res.seconds(), *t, Agg::of(d(v)))).collect();
    store_of_version(path, 10, &old);
    let store = SqliteStore::open(path, StoreOptions::default()).await.expect("migrates");
    let stored = pairs(&store, "SELECT res, count(*) FROM rollups GROUP BY res ORDER BY res").await;
    assert_eq!(stored, [(0, 1), (1, 1), (86_400, 2)], "one pack per day");
    for res in [Resolution::Day, Resolution::Hour, Resolution::Minute, Resolution::Second] {
        let want: Vec<(i64, Agg)> =
            rows.iter().filter(|r| r.0 == res).map(|(_, start, v)| (*start, Agg::of(d(v)))).collect();
        let got = store.read_points(&s, res, day, day + 2 * 86_400).await.expect("points");
        assert_eq!(got, want, "{res:?}");
        // Byte for byte: the scale of each sum is kept.
        let scales: Vec<u32> = got.iter().map(|(_, a)| a.sum.scale()).collect();
        assert_eq!(scales, want.iter().map(|(_, a)| a.sum.scale()).collect::<Vec<_>>(), "{res:?}");
    }
    commit_merged(&store, &s, day + 3_600 + 61, Agg::of(d("1"))).await;
    let minute = store.read_points(&s, Resolution::Minute, day, day + 7_200).await.expect("points");
    assert_eq!(
        minute,
        vec![
            (day + 3_660, Agg { count: 2, sum: d("3.50"), min: Some(d("1")), max: Some(d("2.50")) }),
            (day + 3_720, Agg::of(d("5")))
        ]
    );
    let window = [Span { res: Resolution::Day, from: day, to: day + 2 * 86_400 }];
    assert_eq!(store.read_aggregate(&s, &window).await.expect("read").sum, d("11.50"));
}

/// Minute retention: a late event's minute past it is not written to its day's pack (its hour,
/// day and all-time buckets are), and a prune drops the minutes before its cut from the packs of
/// the days since the last cut, counting them.
#[tokio::test]
async fn minutes_past_retention_leave_the_packs() {
    let now = crate::clock::now_ms() / 1000;
    let late = now - 3 * 86_400;
    let options = StoreOptions { minute_buckets_s: Some(86_400), ..Default::default() };
    let (_dir, store, s) = merged_events(options, &[late, now - 7_200, now - 10]).await;
    let minutes = |from: i64| {
        let store = &store;
        let s = s.clone();
        async move { store.read_points(&s, Resolution::Minute, from, now + 60).await.expect("points") }
    };
    let kept: Vec<i64> = minutes(0).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(kept, [now - 7_200, now - 10].map(|t| t.div_euclid(60) * 60), "the late minute is left out");
    let all = store.read_aggregate(&s, &[Span { res: Resolution::All, from: 0, to: 1 }]).await.expect("read");
    assert_eq!(all.count, 3);
    let late_hour = late.div_euclid(3_600) * 3_600;
    let hour = [Span { res: Resolution::Hour, from: late_hour, to: late_hour + 3_600 }];
    assert_eq!(store.read_aggregate(&s, &hour).await.expect("read").count, 1, "its hour holds it");

    let prune = |cut: i64| PruneBefore {
        raw_ms: 0,
        dead_letters_ms: 0,
        second_buckets_s: None,
        minute_buckets_s: Some(cut),
        idempotency_keys_ms: 0,
    };
    assert_eq!(store.prune(prune(now - 3_600)).await.expect("prune").buckets, 1, "the minute two hours ago");
    assert_eq!(minutes(0).await.len(), 1);
    assert_eq!(store.prune(prune(now)).await.expect("prune").buckets, 1);
    assert!(minutes(0).await.is_empty());
    let all = store.read_aggregate(&s, &[Span { res: Resolution::All, from: 0, to: 1 }]).await.expect("read");
    assert_eq!(all.count, 3, "pruning minutes leaves every coarser bucket");
}

/// A store fed `events` (series, second, value) and the plain oracle of what it must answer.
struct Seen<'a> {
    store: &'a SqliteStore,
    series: &'a [SeriesKey],
    events: &'a [(usize, i64, Decimal)],
    seed: u64,
    base: i64,
}

impl Seen<'_> {
    /// Series `s`'s buckets at `res` from `cut` on, summed from the events in a plain loop.
    fn buckets(&self, s: usize, res: Resolution, cut: i64) -> Vec<(i64, Agg)> {
        let mut m: std::collections::BTreeMap<i64, Agg> = Default::default();
        for (_, t, v) in self.events.iter().filter(|(e, t, _)| *e == s && res.bucket_of(*t) >= cut) {
            m.entry(res.bucket_of(*t)).or_default().merge(&Agg::of(*v));
        }
        m.into_iter().collect()
    }

    /// Every series' seconds and minutes from their cuts on, its hours, and (when nothing was
    /// pruned) its aggregate over each of `windows`, against the oracle.
    async fn check(&self, windows: &[(i64, i64)], (second_cut, minute_cut): (i64, i64)) {
        let seed = self.seed;
        for (i, s) in self.series.iter().enumerate() {
            for (res, cut) in
                [(Resolution::Second, second_cut), (Resolution::Minute, minute_cut), (Resolution::Hour, 0)]
            {
                let got = self.store.read_points(s, res, self.base - 3_600, self.base + 3_600).await.expect("points");
                assert_eq!(got, self.buckets(i, res, cut), "seed {seed}, series {i}, {res:?}");
            }
            if (second_cut, minute_cut) != (i64::MIN, i64::MIN) {
                continue;
            }
            for (from, to) in windows {
                let mut want = Agg::default();
                for (_, _, v) in self.events.iter().filter(|(e, t, _)| *e == i && (*from..*to).contains(t)) {
                    want.merge(&Agg::of(*v));
                }
                let got = self.store.read_aggregate(s, &crate::rollup::cover(*from, *to)).await.expect("read");
                assert_eq!(got, want, "seed {seed}, series {i}, window {from}..{to}");
            }
        }
    }
}

/// The latest second `scan_latest` reports for each series.
#[derive(Default)]
struct LatestSeconds(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, i64>>>);

impl crate::storage::LatestVisitor for LatestSeconds {
    fn begin(&mut self, _: u64) {}
    fn value(&mut self, _: &str, _: &str) {}
    fn bucket(&mut self, (_, _, value): (&str, &str, &str), res: Resolution, start: i64) {
        if res == Resolution::Second {
            let mut m = self.0.lock().expect("lock");
            let t = m.entry(value.to_string()).or_insert(i64::MIN);
            *t = (*t).max(start);
        }
    }
    fn end(&mut self) {}
}

/// A lone second of its minute is carried by the minute's entry in its day pack instead of a row
/// of its own (see `pack`). Random events over three series and ten minutes, committed in small
/// batches merged at random points, read back as the plain sums of the events (each second,
/// minute and random window), before and after the merge and after a prune of seconds and
/// minutes; the latest-bucket scan never puts a series' latest second before its real one.
#[tokio::test]
async fn carried_seconds_read_and_prune_as_second_rows_did() {
    use rand::{Rng, SeedableRng};

    let base = (crate::clock::now_ms() / 1000 - 3_600).div_euclid(60) * 60;
    for seed in 0..4u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("carried.db");
        let store = SqliteStore::open(path.to_str().expect("utf-8"), StoreOptions::default()).await.expect("open");
        let series: Vec<SeriesKey> = (1..=3).map(|i| SeriesKey::new("m", "product_id", &i.to_string())).collect();
        let mut events: Vec<(usize, i64, Decimal)> = Vec::new();
        let merge = |store: &SqliteStore| {
            let w = store.writer.clone();
            tokio::task::spawn_blocking(move || merge_pending(&w, ROWS_PER_STEP))
        };
        for _ in 0..25 {
            let batch: Vec<(usize, i64, Decimal)> = (0..rng.random_range(1..6))
                .map(|_| {
                    (
                        rng.random_range(0..3),
                        base + rng.random_range(0..600),
                        Decimal::new(rng.random_range(1..10_000), 2),
                    )
                })
                .collect();
            let seconds = batch.iter().map(|(s, t, v)| (series[*s].clone(), *t, Agg::of(*v)));
            let wb = WriteBatch { rollups: crate::rollup::RollupRows::from_seconds(seconds), ..Default::default() };
            store.commit(wb).await.expect("commit");
            events.extend(batch);
            if rng.random_bool(0.4) {
                merge(&store).await.expect("join").expect("merge");
            }
        }
        let mut windows = || -> Vec<(i64, i64)> {
            (0..8)
                .map(|_| {
                    let a = base - 30 + rng.random_range(0..660);
                    (a, a + rng.random_range(1..700))
                })
                .collect()
        };
        let none = (i64::MIN, i64::MIN);
        let seen = Seen { store: &store, series: &series, events: &events, seed, base };
        seen.check(&windows(), none).await;
        merge(&store).await.expect("join").expect("merge");
        seen.check(&windows(), none).await;
        let rows: i64 = store
            .read(|c| c.query_row("SELECT count(*) FROM rollups WHERE res = 1", [], |r| r.get(0)).map_err(db_err))
            .await
            .expect("rows");
        let distinct: std::collections::BTreeSet<(usize, i64)> = events.iter().map(|(s, t, _)| (*s, *t)).collect();
        assert!(rows < distinct.len() as i64, "seed {seed}: {rows} second rows for {} seconds", distinct.len());

        let latest = LatestSeconds::default();
        let reported_latest = latest.0.clone();
        assert!(store.scan_latest(Box::new(latest)).await.expect("scan"));
        for (i, s) in series.iter().enumerate() {
            let real = events.iter().filter(|(e, _, _)| *e == i).map(|(_, t, _)| *t).max();
            let reported = reported_latest.lock().expect("lock").get(&s.value).copied();
            assert!(real <= reported, "seed {seed}, series {i}: latest second {real:?}, reported {reported:?}");
        }

        // Minutes first, alone: the seconds their minutes carried stay, as rows; then both.
        let minutes: std::collections::BTreeSet<(usize, i64)> =
            events.iter().map(|(s, t, _)| (*s, Resolution::Minute.bucket_of(*t))).collect();
        // The seconds' cut inside a minute: that minute loses only its seconds before it.
        let cuts = (base + 317, base + 120);
        for (second_cut, gone) in [
            (None, minutes.iter().filter(|(_, t)| *t < cuts.1).count()),
            (Some(cuts.0), distinct.iter().filter(|(_, t)| *t < cuts.0).count()),
        ] {
            let before = PruneBefore {
                raw_ms: 0,
                dead_letters_ms: 0,
                second_buckets_s: second_cut,
                minute_buckets_s: Some(cuts.1),
                idempotency_keys_ms: 0,
            };
            assert_eq!(store.prune(before).await.expect("prune").buckets, gone as u64, "seed {seed}");
            seen.check(&windows(), (second_cut.unwrap_or(i64::MIN), cuts.1)).await;
        }
    }
}

/// A store of version 12 (a row per second bucket) opens with a row per minute of seconds
/// (migration 13), every second reading as before, and takes commits on top.
#[tokio::test]
async fn a_version_12_store_has_its_seconds_regrouped_by_minute() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v12.db");
    let path = path.to_str().expect("utf-8 path");
    let d = |v: &str| Decimal::from_str(v).expect("decimal");
    let t = 1_800_000_000; // a minute's start
    // (series, second, value): two seconds of one minute, one of the next, another series' second.
    let rows = [(1, t + 3, "1.50"), (1, t + 59, "2"), (1, t + 60, "0.25"), (2, t + 3, "7")];
    let old: Vec<(i64, i64, i64, Agg)> = rows.iter().map(|(id, t, v)| (*id, 1, *t, Agg::of(d(v)))).collect();
    store_of_version(path, 12, &old);
    let store = SqliteStore::open(path, StoreOptions::default()).await.expect("migrates");
    let minutes = pairs(&store, "SELECT series, bucket FROM rollups WHERE res = 1 ORDER BY 1, 2").await;
    assert_eq!(minutes, [(1, t), (1, t + 60), (2, t)], "a row per minute of seconds");
    for id in [1, 2] {
        let s = SeriesKey::new("m", "product_id", &id.to_string());
        let want: Vec<(i64, Agg)> = rows.iter().filter(|r| r.0 == id).map(|(_, t, v)| (*t, Agg::of(d(v)))).collect();
        let got = store.read_points(&s, Resolution::Second, t - 60, t + 120).await.expect("points");
        assert_eq!(got, want, "series {id}");
        assert_eq!(
            got.iter().map(|(_, a)| a.sum.scale()).collect::<Vec<_>>(),
            want.iter().map(|(_, a)| a.sum.scale()).collect::<Vec<_>>()
        );
    }
    // A commit on top adds to the migrated minute.
    let s = SeriesKey::new("m", "product_id", "1");
    commit_merged(&store, &s, t + 3, Agg::of(d("1"))).await;
    let got = store.read_points(&s, Resolution::Second, t, t + 60).await.expect("points");
    assert_eq!(
        got,
        vec![
            (t + 3, Agg { count: 2, sum: d("2.50"), min: Some(d("1")), max: Some(d("1.50")) }),
            (t + 59, Agg::of(d("2")))
        ]
    );
}
