//! The storage contract, through the `Store` trait: one body per behaviour, run against every
//! backend (`both_backends!`: SQLite in a temp dir, PostgreSQL in a fresh database).

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestStore};
use jetstream::rollup::{Agg, BucketKey, DimRow, Resolution, RollupRows, SeriesKey, Span, cover};
use jetstream::storage::{
    self, IdempotencyRecord, NewDeadLetter, OffsetAdvance, PruneBefore, Pruned, RawBlock, Store, StoreError,
    TokenRecord, WriteBatch,
};
use rust_decimal::Decimal;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("a decimal literal")
}

fn key(value: &str, res: Resolution, start: i64) -> BucketKey {
    BucketKey { series: SeriesKey::new("amount", "product_id", value), res, start }
}

fn rollups(rows: Vec<(BucketKey, Agg)>) -> WriteBatch {
    WriteBatch { rollups: RollupRows::from_buckets(rows), ..Default::default() }
}

fn advance(partition: i32, expected: Option<i64>, next: i64) -> OffsetAdvance {
    OffsetAdvance { source: "kafka:events".into(), partition, expected, next }
}

fn letter(received_ms: i64, reason: &str) -> NewDeadLetter {
    NewDeadLetter {
        received_ms,
        source: "http".into(),
        reason: reason.into(),
        raw: reason.as_bytes().to_vec(),
        topic: None,
        partition: None,
        offset: None,
    }
}

fn block(name: &str, max_time_ms: i64, data: &[u8]) -> RawBlock {
    RawBlock { name: name.into(), min_time_ms: max_time_ms - 10, max_time_ms, count: 2, data: data.to_vec() }
}

fn dim_row(dim: &str, value: &str, first_seen: i64, label: Option<&str>) -> DimRow {
    DimRow { dim: dim.into(), value: value.into(), first_seen, label: label.map(String::from) }
}

async fn open(ts: &TestStore) -> Arc<dyn Store> {
    storage::open(&ts.url).await.expect("store opens")
}

/// Everything stored for one bucket (count 0 when absent).
async fn bucket(store: &dyn Store, k: &BucketKey) -> Agg {
    let spans = [Span { res: k.res, from: k.start, to: k.start + k.res.seconds().max(1) }];
    store.read_aggregate(&k.series, &spans).await.expect("read")
}

async fn a_fenced_batch_applies_nothing(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let k = key("7", Resolution::All, 0);
    let mut first = rollups(vec![(k.clone(), Agg::of(dec("1.5")))]);
    first.offsets = vec![advance(0, None, 10), advance(1, None, 100)];
    store.commit(first).await.expect("first batch");

    // Partition 0's advance is right, partition 1's is stale: the whole batch must be refused.
    let stale = WriteBatch {
        rollups: RollupRows::from_buckets([
            (k.clone(), Agg::of(dec("1000"))),
            (key("8", Resolution::All, 0), Agg::of(dec("1"))),
        ]),
        dims: vec![dim_row("product_id", "8", 1, None)],
        raw_blocks: vec![block("productSold", 5, b"raw")],
        dead_letters: vec![letter(5, "no event name")],
        offsets: vec![advance(0, Some(10), 20), advance(1, Some(50), 60)],
        idempotency: vec![IdempotencyRecord {
            scope: "p".into(),
            key: "k".into(),
            answer: "{}".into(),
            at_ms: 5,
            fingerprint: "f".into(),
        }],
        replayed: vec![],
    };
    match store.commit(stale).await {
        Err(StoreError::Fenced { partition: 1, stored: Some(100), expected: Some(50), .. }) => {}
        other => panic!("expected a fence on partition 1, got {other:?}"),
    }
    assert_eq!(bucket(&*store, &k).await, Agg::of(dec("1.5")), "no rollup of the fenced batch");
    assert_eq!(bucket(&*store, &key("8", Resolution::All, 0)).await.count, 0);
    assert!(!store.is_known("product_id", "8").await.expect("is_known"));
    assert!(store.raw_blocks("productSold", None, 10).await.expect("raw").is_empty());
    assert!(store.dead_letters(None, 10).await.expect("dead letters").is_empty());
    assert_eq!(store.stored_offsets("kafka:events").await.expect("offsets"), [(0, 10), (1, 100)]);
    assert_eq!(store.idempotent_answer("p", "k").await.expect("key"), None, "nor its idempotency key");
}

/// What a seed request for a product not known from memory asks, in one read: is the value
/// known, and if so the aggregate (the same as `read_aggregate_at` gives).
async fn one_read_says_whether_a_value_is_known_and_gives_its_aggregate(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let k = key("7", Resolution::All, 0);
    let mut batch = rollups(vec![(k.clone(), Agg::of(dec("2.5")))]);
    batch.dims = vec![dim_row("product_id", "7", 1, None)];
    store.commit(batch).await.expect("commit");
    let spans = [Span { res: Resolution::All, from: 0, to: 1 }];
    let (agg, pos) =
        store.read_known_aggregate_at(("product_id", "7"), &k.series, &spans).await.expect("read").expect("known");
    assert_eq!(agg, Agg::of(dec("2.5")));
    assert_eq!((agg, pos), store.read_aggregate_at(&k.series, &spans).await.expect("read"));
    let unknown = key("8", Resolution::All, 0);
    assert_eq!(store.read_known_aggregate_at(("product_id", "8"), &unknown.series, &spans).await.expect("read"), None);
    // Known but without this metric's rows: known, and nothing in it.
    let mut other = rollups(vec![]);
    other.dims = vec![dim_row("product_id", "9", 1, None)];
    store.commit(other).await.expect("commit");
    let (empty, _) = store
        .read_known_aggregate_at(("product_id", "9"), &key("9", Resolution::All, 0).series, &spans)
        .await
        .expect("read")
        .expect("known");
    assert_eq!(empty.count, 0);
}

async fn offsets_are_fenced(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    // Never stored: only `expected: None` may start it.
    assert!(matches!(
        store.commit(WriteBatch { offsets: vec![advance(3, Some(0), 5)], ..Default::default() }).await,
        Err(StoreError::Fenced { stored: None, expected: Some(0), .. })
    ));
    store.commit(WriteBatch { offsets: vec![advance(3, None, 5)], ..Default::default() }).await.expect("start");
    assert!(matches!(
        store.commit(WriteBatch { offsets: vec![advance(3, None, 9)], ..Default::default() }).await,
        Err(StoreError::Fenced { stored: Some(5), expected: None, .. })
    ));
    assert!(matches!(
        store.commit(WriteBatch { offsets: vec![advance(3, Some(4), 9)], ..Default::default() }).await,
        Err(StoreError::Fenced { stored: Some(5), expected: Some(4), .. })
    ));
    // Two advances of one partition in one batch chain, in batch order.
    let chained = WriteBatch { offsets: vec![advance(3, Some(5), 9), advance(3, Some(9), 12)], ..Default::default() };
    store.commit(chained).await.expect("right expected offsets advance");
    assert_eq!(store.stored_offsets("kafka:events").await.expect("offsets"), [(3, 12)]);
    assert!(store.stored_offsets("kafka:other").await.expect("offsets").is_empty());
}

/// Six writers commit one bucket of `k` at the same instant (behind a barrier), writer `i` with
/// the offset advance `offsets(i)`; their results, in writer order.
async fn race(
    store: &Arc<dyn Store>,
    k: &BucketKey,
    offsets: impl Fn(i64) -> OffsetAdvance,
) -> Vec<Result<(), StoreError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let mut b = rollups(vec![(k.clone(), Agg::of(Decimal::ONE))]);
            b.offsets = vec![offsets(i)];
            tokio::spawn(async move {
                barrier.wait().await;
                store.commit(b).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("writer task").map(|_| ()));
    }
    results
}

/// Consumers racing for a partition nobody has stored yet: exactly one wins, and only its rollups
/// count.
async fn two_first_time_writers_cannot_both_win(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let k = key("1", Resolution::All, 0);
    for round in 0..5 {
        let partition = 10 + round;
        let mut won = 0;
        for result in race(&store, &k, |i| advance(partition, None, 100 + i)).await {
            match result {
                Ok(()) => won += 1,
                Err(StoreError::Fenced { stored: Some(s), .. }) => assert!((100..106).contains(&s)),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(won, 1, "round {round}: exactly one first-time writer commits");
        assert_eq!(bucket(&*store, &k).await.count, i64::from(round) + 1);
    }
    // Then stale consumers that all believe partition 10 is where they left it: one advances it,
    // the others are fenced by the row lock, not by luck.
    let stored = store.stored_offsets("kafka:events").await.expect("offsets")[0];
    assert_eq!(stored.0, 10);
    let results = race(&store, &k, |i| advance(10, Some(stored.1), 1000 + i)).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one writer with the same expected offset commits");
    assert_eq!(bucket(&*store, &k).await.count, 6);
}

async fn decimal_sums_are_exact(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let k = key("3", Resolution::Hour, 3600);
    for _ in 0..10 {
        store.commit(rollups(vec![(k.clone(), Agg::of(dec("0.10")))])).await.expect("commit");
    }
    let a = bucket(&*store, &k).await;
    assert_eq!((a.count, a.sum), (10, Decimal::ONE));
    assert_eq!(a.sum.to_string(), "1.00", "scale kept, no float drift");

    // Large magnitudes with many fraction digits stay exact.
    let big = key("4", Resolution::All, 0);
    for v in ["12345678901234567890.123456789", "87654321098765432109.876543211", "-0.000000001"] {
        store.commit(rollups(vec![(big.clone(), Agg::of(dec(v)))])).await.expect("commit");
    }
    let a = bucket(&*store, &big).await;
    assert_eq!(a.sum, dec("99999999999999999999.999999999"));
    assert_eq!(a.min, Some(dec("-0.000000001")));
    assert_eq!(a.max, Some(dec("87654321098765432109.876543211")));
}

async fn min_and_max_fold_across_commits(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let k = key("5", Resolution::Day, 86_400);
    // A count-only delta (no min/max) must not erase the extremes.
    let count_only = Agg { count: 2, sum: Decimal::ZERO, min: None, max: None };
    for a in [count_only.clone(), Agg::of(dec("5")), Agg::of(dec("-2.5")), count_only, Agg::of(dec("7.25"))] {
        store.commit(rollups(vec![(k.clone(), a)])).await.expect("commit");
    }
    let a = bucket(&*store, &k).await;
    assert_eq!(a, Agg { count: 7, sum: dec("9.75"), min: Some(dec("-2.5")), max: Some(dec("7.25")) });
}

async fn reads_cover_several_resolutions(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    // One event per second from t = 3590 to 7210 (a full hour bucket plus ragged edges), all at
    // each resolution, as the ingest side folds them.
    let mut delta = std::collections::BTreeMap::new();
    for t in 3590..7210 {
        for res in [Resolution::Hour, Resolution::Minute, Resolution::Second] {
            let e: &mut Agg = delta.entry(key("9", res, res.bucket_of(t))).or_default();
            e.merge(&Agg::of(Decimal::new(t, 2)));
        }
    }
    store.commit(rollups(delta.into_iter().collect())).await.expect("commit");
    let series = SeriesKey::new("amount", "product_id", "9");
    let (from, to) = (3595, 7205);
    let got = store.read_aggregate(&series, &cover(from, to)).await.expect("read");
    let want_sum: i64 = (from..to).sum();
    assert_eq!(got.count, to - from);
    assert_eq!(got.sum, Decimal::new(want_sum, 2));
    assert_eq!((got.min, got.max), (Some(Decimal::new(from, 2)), Some(Decimal::new(to - 1, 2))));
    assert_eq!(store.read_aggregate(&series, &[]).await.expect("read"), Agg::default());

    let points = store.read_points(&series, Resolution::Minute, 3600, 3780).await.expect("points");
    let starts: Vec<i64> = points.iter().map(|p| p.0).collect();
    assert_eq!(starts, [3600, 3660, 3720], "in time order, [from, to)");
    assert!(points.iter().all(|p| p.1.count == 60));
    assert!(store.read_points(&series, Resolution::Day, 0, 1_000_000).await.expect("points").is_empty());
}

/// Commits one value per second of `range` (`t + cents` hundredths) as a batch of seconds with its
/// coarser buckets derived, and notes the values in `events`.
async fn commit_seconds(
    store: &dyn Store,
    series: &SeriesKey,
    events: &mut Vec<(i64, Decimal)>,
    range: std::ops::Range<i64>,
    cents: i64,
) {
    let secs: Vec<(SeriesKey, i64, Agg)> =
        range.clone().map(|t| (series.clone(), t, Agg::of(Decimal::new(t + cents, 2)))).collect();
    events.extend(range.map(|t| (t, Decimal::new(t + cents, 2))));
    let batch = WriteBatch { rollups: RollupRows::from_seconds(secs), ..Default::default() };
    store.commit(batch).await.expect("commit");
}

/// Batches of seconds whose coarser buckets are derived (what the ingest writer commits) read the
/// same at every resolution whether the store has merged them yet or not, alongside a batch of
/// buckets given one by one.
/// Each backend numbers the commits of its process and says where each commit and each read
/// stands, so the read cache can tell which of its commits a read holds.
async fn commits_and_reads_say_where_they_stand_when_the_backend_numbers_commits(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let series = SeriesKey::new("amount", "product_id", "11");
    let all = [Span { res: Resolution::All, from: 0, to: 1 }];
    let mut positions = Vec::new();
    for v in ["1", "2"] {
        let pos = store.commit(rollups(vec![(key("11", Resolution::All, 0), Agg::of(dec(v)))])).await.expect("commit");
        let (agg, read_at) = store.read_aggregate_at(&series, &all).await.expect("read");
        positions.push((pos, read_at, agg.count));
    }
    let (p1, p2) = (positions[0].0.expect("numbered"), positions[1].0.expect("numbered"));
    assert!(p2 > p1, "{positions:?}");
    assert_eq!(positions, [(Some(p1), Some(p1), 1), (Some(p2), Some(p2), 2)], "a read stands at the last commit");
    // A failed commit's number is never given again: its outcome may be unknown.
    let mut stale = rollups(vec![(key("11", Resolution::All, 0), Agg::of(dec("5")))]);
    stale.offsets = vec![advance(9, Some(1), 2)];
    assert!(matches!(store.commit(stale).await, Err(StoreError::Fenced { .. })));
    let p4 = store.commit(rollups(vec![(key("11", Resolution::All, 0), Agg::of(dec("3")))])).await.expect("commit");
    assert!(p4.expect("numbered") > p2, "{p4:?}");
    let (agg, read_at) = store.read_aggregate_at(&series, &all).await.expect("read");
    assert_eq!((agg.count, read_at), (3, p4));
}

/// An idempotency key is committed with its batch, once per scope: a batch repeating it applies
/// nothing, the first answer can be read back, and retention removes old keys.
async fn an_idempotency_key_commits_once(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let record = |scope: &str, answer: &str, at_ms| IdempotencyRecord {
        scope: scope.into(),
        key: "order-42".into(),
        answer: answer.into(),
        at_ms,
        fingerprint: format!("body of {answer}"),
    };
    let k = key("42", Resolution::All, 0);
    let mut first = rollups(vec![(k.clone(), Agg::of(dec("2.5")))]);
    first.idempotency = vec![record("producer-a", r#"{"accepted":1}"#, 1_000)];
    store.commit(first).await.expect("first use of the key");
    let mut again = rollups(vec![(k.clone(), Agg::of(dec("2.5")))]);
    again.idempotency = vec![record("producer-a", r#"{"accepted":9}"#, 2_000)];
    match store.commit(again).await {
        Err(StoreError::Duplicate { scope, key }) => {
            assert_eq!((scope.as_str(), key.as_str()), ("producer-a", "order-42"))
        }
        other => panic!("expected a duplicate key, got {other:?}"),
    }
    assert_eq!(bucket(&*store, &k).await, Agg::of(dec("2.5")), "the repeat applied nothing");
    let stored = store.idempotent_answer("producer-a", "order-42").await.expect("read").expect("stored");
    assert_eq!(
        (stored.answer.as_str(), stored.fingerprint.as_deref()),
        (r#"{"accepted":1}"#, Some(r#"body of {"accepted":1}"#)),
        "the first answer, with the fingerprint of its request"
    );
    // Another scope (token) has its own keys.
    let mut other = rollups(vec![(k.clone(), Agg::of(dec("1")))]);
    other.idempotency = vec![record("producer-b", r#"{"accepted":1}"#, 3_000)];
    store.commit(other).await.expect("same key, another scope");
    assert_eq!(bucket(&*store, &k).await.count, 2);

    let cut = PruneBefore {
        raw_ms: 0,
        dead_letters_ms: 0,
        second_buckets_s: Some(0),
        minute_buckets_s: Some(0),
        idempotency_keys_ms: 2_000,
    };
    store.prune(cut).await.expect("prune");
    assert_eq!(store.idempotent_answer("producer-a", "order-42").await.expect("read"), None, "older than the cut");
    assert!(store.idempotent_answer("producer-b", "order-42").await.expect("read").is_some());
}

async fn derived_batches_read_the_same_before_and_after_a_merge(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let series = SeriesKey::new("amount", "product_id", "11");
    let mut events: Vec<(i64, Decimal)> = Vec::new();
    commit_seconds(&*store, &series, &mut events, 3590..5000, 0).await;
    commit_seconds(&*store, &series, &mut events, 4990..7210, 7).await; // ten seconds get a second value
    // Given bucket by bucket: counted at the resolution it names, and nowhere else.
    store.commit(rollups(vec![(key("11", Resolution::All, 0), Agg::of(dec("100")))])).await.expect("commit");

    let expect = |events: &[(i64, Decimal)], from: i64, to: i64| {
        let mut a = Agg::default();
        for (_, v) in events.iter().filter(|(t, _)| from <= *t && *t < to) {
            a.merge(&Agg::of(*v));
        }
        a
    };
    let all = [Span { res: Resolution::All, from: 0, to: 1 }];
    let check = async |events: &[(i64, Decimal)], when: &str| {
        let got = store.read_aggregate(&series, &cover(3595, 7205)).await.expect("read");
        assert_eq!(got, expect(events, 3595, 7205), "window, {when}");
        let mut total = expect(events, i64::MIN, i64::MAX);
        total.merge(&Agg::of(dec("100")));
        assert_eq!(store.read_aggregate(&series, &all).await.expect("read"), total, "all time, {when}");
        for (res, from, to) in
            [(Resolution::Minute, 3600, 3780), (Resolution::Hour, 0, 10_800), (Resolution::Second, 4995, 5002)]
        {
            let points = store.read_points(&series, res, from, to).await.expect("points");
            let want: Vec<(i64, Agg)> = (from..to)
                .step_by(res.seconds() as usize)
                .map(|b| (b, expect(events, b, b + res.seconds())))
                .filter(|(_, a)| a.count > 0)
                .collect();
            assert_eq!(points, want, "{res:?} points, {when}");
        }
    };
    check(&events, "before the merge").await;
    // Pruning merges first; nothing here is older than these cut-offs.
    let nothing = PruneBefore {
        raw_ms: 0,
        dead_letters_ms: 0,
        second_buckets_s: Some(0),
        minute_buckets_s: Some(0),
        idempotency_keys_ms: 0,
    };
    store.prune(nothing).await.expect("prune");
    check(&events, "after the merge").await;
    commit_seconds(&*store, &series, &mut events, 7000..7100, 3).await;
    check(&events, "merged and recent together").await;
}

/// Several writers (as several consumers on PostgreSQL) hammer overlapping buckets: no update may
/// be lost and no commit may deadlock, even when a batch arrives in the reverse key order.
async fn concurrent_commits_lose_no_update(backend: Backend) {
    const TASKS: i64 = 8;
    const BATCHES: i64 = 50;
    const KEYS: i64 = 24;
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let keys: Vec<BucketKey> = (0..KEYS).map(|i| key(&format!("p{i:02}"), Resolution::Minute, 60 * (i % 3))).collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, keys) = (store.clone(), keys.clone());
            tokio::spawn(async move {
                for n in 0..BATCHES {
                    // Overlapping windows of keys, so batches share rows with different neighbours.
                    let mut rows: Vec<_> = keys
                        .iter()
                        .skip(((task + n) % 4) as usize)
                        .take(20)
                        .map(|k| (k.clone(), Agg::of(Decimal::new(task + 1, 2))))
                        .collect();
                    if task % 2 == 1 {
                        rows.reverse();
                    }
                    let mut b = rollups(rows);
                    b.dims = vec![dim_row("product_id", &format!("t{task}"), n, None)];
                    store.commit(b).await.expect("concurrent commit");
                }
            })
        })
        .collect();
    let all = futures::future::join_all(tasks);
    for t in tokio::time::timeout(Duration::from_secs(120), all).await.expect("no deadlock within 120 s") {
        t.expect("task");
    }
    // What each key must hold, computed the same way.
    let mut want = vec![Agg::default(); KEYS as usize];
    for task in 0..TASKS {
        for n in 0..BATCHES {
            for i in (((task + n) % 4) as usize..).take(20) {
                want[i].merge(&Agg::of(Decimal::new(task + 1, 2)));
            }
        }
    }
    for (k, w) in keys.iter().zip(&want) {
        assert_eq!(&bucket(&*store, k).await, w, "{k:?}");
    }
    for task in 0..TASKS {
        assert!(store.is_known("product_id", &format!("t{task}")).await.expect("is_known"));
    }
}

async fn tokens_are_created_listed_and_revoked(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let v0 = store.tokens_version().await.expect("version");
    let token = |name: &str, hash: &str| TokenRecord {
        name: name.into(),
        hash: hash.into(),
        scopes: vec!["read".into(), "admin".into()],
        created_ms: 1_700_000_000_000,
        expires_ms: Some(1_800_000_000_000),
        revoked_ms: None,
    };
    store.create_token(token("dash", "h1")).await.expect("create");
    let v1 = store.tokens_version().await.expect("version");
    assert_ne!(v1, v0, "creating a token changes the version");
    assert!(matches!(store.create_token(token("dash", "h2")).await, Err(StoreError::TokenExists(n)) if n == "dash"));
    assert_eq!(store.tokens_version().await.expect("version"), v1, "a refused duplicate changes nothing");
    store.create_token(TokenRecord { expires_ms: None, ..token("agent", "h3") }).await.expect("create");

    let listed = store.list_tokens().await.expect("list");
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["agent", "dash"]);
    assert_eq!(listed[1], token("dash", "h1"), "every field round-trips");
    assert_eq!(listed[0].expires_ms, None);

    let v2 = store.tokens_version().await.expect("version");
    assert!(store.revoke_token("dash", 1_750_000_000_000).await.expect("revoke"));
    let v3 = store.tokens_version().await.expect("version");
    assert_ne!(v3, v2, "revoking changes the version");
    assert!(!store.revoke_token("dash", 1_760_000_000_000).await.expect("revoke"), "already revoked");
    assert!(!store.revoke_token("nobody", 1).await.expect("revoke"));
    let dash = store.list_tokens().await.expect("list").into_iter().find(|t| t.name == "dash").expect("dash");
    assert_eq!(dash.revoked_ms, Some(1_750_000_000_000), "the first revocation's time stays");
    // A revoked token's name can be reused (rotation); the new token replaces the old row.
    store.create_token(TokenRecord { created_ms: 1_770_000_000_000, ..token("dash", "h4") }).await.expect("reuse");
    let dash = store.list_tokens().await.expect("list").into_iter().find(|t| t.name == "dash").expect("dash");
    assert_eq!((dash.hash.as_str(), dash.revoked_ms), ("h4", None));
    let v4 = store.tokens_version().await.expect("version");
    assert!(store.delete_token("dash").await.expect("delete"));
    assert_ne!(store.tokens_version().await.expect("version"), v4, "deleting changes the version");
    assert!(!store.delete_token("dash").await.expect("delete"), "already gone");
    assert_eq!(store.list_tokens().await.expect("list").len(), 1);
}

async fn dead_letters_page_newest_first(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let kafka = NewDeadLetter {
        received_ms: 8,
        source: "kafka".into(),
        reason: "rating 6 is above 5".into(),
        raw: vec![0xff, 0x00, b'{'],
        topic: Some("events".into()),
        partition: Some(2),
        offset: Some(41),
    };
    store
        .commit(WriteBatch {
            dead_letters: (0..5).map(|i| letter(i, &format!("r{i}"))).collect(),
            ..Default::default()
        })
        .await
        .expect("commit");
    store
        .commit(WriteBatch {
            dead_letters: vec![letter(5, "r5"), letter(6, "r6"), kafka.clone()],
            ..Default::default()
        })
        .await
        .expect("commit");
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.dead_letters(before, 3).await.expect("page");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        seen.extend(page);
    }
    let reasons: Vec<_> = seen.iter().map(|d| d.letter.reason.as_str()).collect();
    assert_eq!(reasons, ["rating 6 is above 5", "r6", "r5", "r4", "r3", "r2", "r1", "r0"]);
    assert!(seen.windows(2).all(|w| w[0].id > w[1].id), "ids strictly decrease");
    let k = &seen[0].letter;
    assert_eq!(
        (&k.raw, &k.topic, k.partition, k.offset, k.received_ms, k.source.as_str()),
        (&kafka.raw, &kafka.topic, kafka.partition, kafka.offset, 8, "kafka")
    );
    assert_eq!(seen[1].letter.raw, b"r6", "raw bytes round-trip");
    assert_eq!(seen[1].letter.topic, None);
}

async fn raw_blocks_round_trip_newest_first(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    for i in 0..4 {
        let b = WriteBatch {
            raw_blocks: vec![block("productSold", 1000 + i, &bytes[i as usize..]), block("other", 1000 + i, b"x")],
            ..Default::default()
        };
        store.commit(b).await.expect("commit");
    }
    let first = store.raw_blocks("productSold", None, 3).await.expect("raw");
    assert_eq!(first.iter().map(|(_, b)| b.max_time_ms).collect::<Vec<_>>(), [1003, 1002, 1001]);
    let (id, b) = &first[0];
    assert_eq!((b.name.as_str(), b.min_time_ms, b.count), ("productSold", 993, 2));
    assert_eq!(b.data, &bytes[3..], "bytes round-trip exactly");
    let rest = store.raw_blocks("productSold", Some(first[2].0), 3).await.expect("raw");
    assert_eq!(rest.iter().map(|(_, b)| b.max_time_ms).collect::<Vec<_>>(), [1000]);
    assert!(rest[0].0 < first[2].0 && first[2].0 < *id);
    assert_eq!(store.raw_blocks("other", None, 10).await.expect("raw").len(), 4);
    assert!(store.raw_blocks("nothing", None, 10).await.expect("raw").is_empty());
}

async fn prune_removes_only_what_retention_expired(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let store = open(&ts).await;
    let one = || Agg::of(Decimal::ONE);
    let b = WriteBatch {
        rollups: RollupRows::from_buckets([
            (key("1", Resolution::All, 0), one()),
            (key("1", Resolution::Hour, 0), one()),
            (key("1", Resolution::Minute, 60), one()),
            (key("1", Resolution::Minute, 600), one()),
            (key("1", Resolution::Second, 100), one()),
            (key("1", Resolution::Second, 101), one()),
            (key("1", Resolution::Second, 5000), one()),
        ]),
        raw_blocks: vec![block("e", 1_000, b"old"), block("e", 9_000, b"new")],
        dead_letters: vec![letter(1_000, "old"), letter(9_000, "new")],
        ..Default::default()
    };
    store.commit(b).await.expect("commit");
    let cut = PruneBefore {
        raw_ms: 5_000,
        dead_letters_ms: 5_000,
        second_buckets_s: Some(4_000),
        minute_buckets_s: Some(300),
        idempotency_keys_ms: 5_000,
    };
    // Without bucket cut-offs the buckets stay (a pass that only prunes raw events and letters).
    let no_buckets = PruneBefore { second_buckets_s: None, minute_buckets_s: None, ..cut };
    assert_eq!(store.prune(no_buckets).await.expect("prune"), Pruned { raw_blocks: 1, dead_letters: 1, buckets: 0 });
    assert_eq!(store.prune(PruneBefore { second_buckets_s: None, ..cut }).await.expect("prune").buckets, 1);
    assert_eq!(store.prune(cut).await.expect("prune"), Pruned { raw_blocks: 0, dead_letters: 0, buckets: 2 });
    assert_eq!(store.prune(cut).await.expect("prune"), Pruned::default(), "nothing left to prune");
    for (res, start, count) in [
        (Resolution::All, 0, 1),
        (Resolution::Hour, 0, 1),
        (Resolution::Minute, 60, 0),
        (Resolution::Minute, 600, 1),
        (Resolution::Second, 100, 0),
        (Resolution::Second, 5000, 1),
    ] {
        assert_eq!(bucket(&*store, &key("1", res, start)).await.count, count, "{res:?} {start}");
    }
    let raw = store.raw_blocks("e", None, 10).await.expect("raw");
    assert_eq!(raw.iter().map(|(_, b)| b.data.as_slice()).collect::<Vec<_>>(), [b"new"]);
    let dead = store.dead_letters(None, 10).await.expect("dead letters");
    assert_eq!(dead.iter().map(|d| d.letter.reason.as_str()).collect::<Vec<_>>(), ["new"]);
}

/// Opening an existing store (a restart, or a second instance) migrates nothing twice and keeps
/// the data; instances starting at the same moment do not trip over each other.
async fn migrations_are_idempotent(backend: Backend) {
    let ts = TestStore::fresh(backend).await;
    let opened = futures::future::join_all((0..4).map(|_| storage::open(&ts.url))).await;
    let stores: Vec<_> = opened.into_iter().map(|s| s.expect("concurrent opens succeed")).collect();
    let k = key("2", Resolution::All, 0);
    stores[0].commit(rollups(vec![(k.clone(), Agg::of(dec("2.5")))])).await.expect("commit");
    for s in &stores {
        s.close().await.expect("close");
    }
    let again = open(&ts).await;
    assert_eq!(bucket(&*again, &k).await, Agg::of(dec("2.5")));
    assert_eq!(again.tokens_version().await.expect("version"), 0, "seed rows inserted once");
}

both_backends!(
    an_idempotency_key_commits_once,
    commits_and_reads_say_where_they_stand_when_the_backend_numbers_commits,
    a_fenced_batch_applies_nothing,
    one_read_says_whether_a_value_is_known_and_gives_its_aggregate,
    offsets_are_fenced,
    two_first_time_writers_cannot_both_win,
    decimal_sums_are_exact,
    min_and_max_fold_across_commits,
    reads_cover_several_resolutions,
    derived_batches_read_the_same_before_and_after_a_merge,
    concurrent_commits_lose_no_update,
    tokens_are_created_listed_and_revoked,
    dead_letters_page_newest_first,
    raw_blocks_round_trip_newest_first,
    prune_removes_only_what_retention_expired,
    migrations_are_idempotent,
);

/// A database migrated by a newer binary is refused rather than misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_schema_newer_than_the_binary() {
    let ts = TestStore::fresh(Backend::Postgres).await;
    open(&ts).await.close().await.expect("close");
    let (client, conn) = tokio_postgres::connect(&ts.url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client.batch_execute("INSERT INTO schema_migrations (version) VALUES (999)").await.expect("insert");
    match storage::open(&ts.url).await {
        Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

/// A sum beyond what a decimal can hold fails the commit (as in SQLite) instead of storing a value
/// no reader could load; the row keeps its last good value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_sum_that_overflows_a_decimal() {
    let ts = TestStore::fresh(Backend::Postgres).await;
    let store = open(&ts).await;
    let k = key("1", Resolution::All, 0);
    store.commit(rollups(vec![(k.clone(), Agg::of(Decimal::MAX))])).await.expect("commit");
    let err = store.commit(rollups(vec![(k.clone(), Agg::of(Decimal::ONE))])).await.expect_err("overflow refused");
    assert!(err.to_string().contains("rollups_sum_fits_a_decimal"), "{err}");
    assert_eq!(bucket(&*store, &k).await.sum, Decimal::MAX);
}

/// A commit writes the rows every writer shares (a metric's overall series, its series by event
/// name) after everything else: held by another writer's open transaction, they make it wait
/// only once it has written its own products' rows, so two consumers' commits overlap instead of
/// queueing behind each other's first row. (Taking the shared rows first still counts right, but
/// left two consumers waiting on each other ~40 % of the time in `bench/cluster.sh`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commits_write_the_shared_series_last() {
    let ts = TestStore::fresh(Backend::Postgres).await;
    let store = open(&ts).await;
    let overall = BucketKey { series: SeriesKey::new("amount", "", ""), res: Resolution::All, start: 0 };
    let by_name =
        BucketKey { series: SeriesKey::new("amount", "event_name", "productSold"), res: Resolution::All, start: 0 };
    let product = key("7", Resolution::All, 0);
    let batch = {
        let (overall, by_name, product) = (overall.clone(), by_name.clone(), product.clone());
        move |d: &str| {
            let mut b = rollups(vec![
                (overall.clone(), Agg::of(dec(d))),
                (by_name.clone(), Agg::of(dec(d))),
                (product.clone(), Agg::of(dec(d))),
            ]);
            b.dims = vec![dim_row("event_name", "productSold", 0, None), dim_row("product_id", "7", 0, None)];
            b
        }
    };
    store.commit(batch("1")).await.expect("the rows exist");

    // Another writer's transaction holds the overall series' row.
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&ts.url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        client
    };
    let mut other = connect().await;
    let held = other.transaction().await.expect("begin");
    held.execute("SELECT 1 FROM rollups WHERE metric = 'amount' AND dim = '' FOR UPDATE", &[]).await.expect("lock");
    let commit = tokio::spawn({
        let store = store.clone();
        async move { store.commit(batch("2")).await }
    });

    // Once the commit waits for that row, it has written (and holds) the product's row already.
    let probe = connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = probe
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the commit never waited for the held row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let product_row =
        "SELECT 1 FROM rollups WHERE metric = 'amount' AND dim = 'product_id' AND val = '7' FOR UPDATE NOWAIT";
    let err = probe.execute(product_row, &[]).await.expect_err("the waiting commit holds the product's row");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE), "{err}");

    held.rollback().await.expect("release");
    commit.await.expect("task").expect("the commit goes through once the row is free");
    let mut want = Agg::of(dec("1"));
    want.merge(&Agg::of(dec("2")));
    for k in [&overall, &by_name, &product] {
        assert_eq!(bucket(&*store, k).await, want, "{k:?}");
    }
}

#[test]
fn store_urls_are_dispatched_by_scheme() {
    assert!(storage::StoreUrl::parse("postgres://u@127.0.0.1:5432/db").is_ok());
    assert!(storage::StoreUrl::parse("postgresql://u@localhost/db").is_ok());
    let err = storage::StoreUrl::parse("mysql://u@h/db").expect_err("refused");
    assert!(err.to_string().contains("postgres://"), "the message names both schemes: {err}");
    assert!(storage::StoreUrl::parse("postgres://h/db?bogus=1").is_err());
}

/// A server that is not there is an error that says so, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_a_prompt_error() {
    let started = std::time::Instant::now();
    let err = storage::open("postgres://postgres@127.0.0.1:1/nothing").await.err().expect("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let msg = err.to_string();
    assert!(msg.contains("postgres") && msg.contains("onnect"), "{msg}");
}
