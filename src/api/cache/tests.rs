//! The cache's rules, without a store.

use std::time::Duration;

use rust_decimal::Decimal;

use super::core::{Core, RECENT_COMMITS};
use crate::ingest::writer::Committed;
use crate::rollup::{Agg, SeriesKey};
use crate::storage::CommitPos;

/// A local commit at position `pos` adding `seconds` to `series`.
fn commit(c: &Core, pos: CommitPos, series: &[SeriesKey], seconds: &[(u32, i64, Agg)]) {
    c.committed(&Committed { series, seconds: Some(seconds), pos: Some(pos) });
}

#[test]
fn a_read_without_a_position_answers_its_request_but_is_not_cached() {
    let c = Core::new(Duration::from_secs(10));
    let s = SeriesKey::new("m", "", "");
    assert!(!c.put(&s, (0, 10), Agg::of(Decimal::ONE), None, c.ticket()));
    assert_eq!(c.get(&s, (0, 10)), None);
    assert!(c.put(&s, (0, 10), Agg::of(Decimal::ONE), Some(0), c.ticket()));
    assert_eq!(c.get(&s, (0, 10)), Some(Agg::of(Decimal::ONE)));
    assert_eq!(c.get(&s, (0, 11)), None, "another window is another entry");
}

#[test]
fn a_commit_adds_its_seconds_to_the_cached_windows_that_hold_them() {
    let c = Core::new(Duration::from_secs(10));
    let (a, b) = (SeriesKey::new("m", "p", "1"), SeriesKey::new("m", "p", "2"));
    let d = |v: i64| Decimal::from(v);
    for s in [&a, &b] {
        c.put(s, (100, 200), Agg::of(d(10)), Some(0), c.ticket());
        c.put(s, (i64::MIN, i64::MAX), Agg::of(d(10)), Some(0), c.ticket());
    }
    let series = [a.clone(), b.clone()];
    // a: one event at the window's first second, one at its end (outside), one long before.
    // b: two at second 150.
    let mut two = Agg::of(d(3));
    two.merge(&Agg::of(d(4)));
    commit(&c, 1, &series, &[(0, 50, Agg::of(d(1))), (0, 100, Agg::of(d(2))), (0, 200, Agg::of(d(5))), (1, 150, two)]);

    let window_a = c.get(&a, (100, 200)).expect("still cached");
    assert_eq!((window_a.count, window_a.sum, window_a.min, window_a.max), (2, d(12), Some(d(2)), Some(d(10))));
    let all_a = c.get(&a, (i64::MIN, i64::MAX)).expect("still cached");
    assert_eq!((all_a.count, all_a.sum, all_a.min, all_a.max), (4, d(18), Some(d(1)), Some(d(10))));
    let window_b = c.get(&b, (100, 200)).expect("still cached");
    assert_eq!((window_b.count, window_b.sum, window_b.min, window_b.max), (3, d(17), Some(d(3)), Some(d(10))));

    // A commit without per-second deltas, or a failed one, drops what it touched.
    c.committed(&Committed { series: std::slice::from_ref(&a), seconds: None, pos: Some(2) });
    assert_eq!(c.get(&a, (100, 200)), None);
    assert!(c.get(&b, (100, 200)).is_some());
    c.commit_failed(std::slice::from_ref(&b));
    assert_eq!(c.get(&b, (100, 200)), None);
}

/// A commit at position `pos` adding `v` at second 5 to series `s`.
fn commit_at(c: &Core, s: &SeriesKey, pos: CommitPos, v: i64) {
    c.committed(&Committed {
        series: std::slice::from_ref(s),
        seconds: Some(&[(0, 5, Agg::of(Decimal::from(v)))]),
        pos: Some(pos),
    });
}

#[test]
fn with_positions_a_read_gets_exactly_the_local_commits_its_snapshot_missed() {
    let c = Core::new(Duration::from_secs(10));
    let s = SeriesKey::new("m", "", "");
    let sum = |w| c.get(&s, w).map(|a: Agg| (a.count, a.sum));
    // The store holds commits 1..=3 (1 + 2 + 4 at second 5); reads race commits 4 and 5.
    commit_at(&c, &s, 4, 8);

    // Read at position 3 (before commit 4), put after commit 4 was applied, while 5 runs:
    // the put adds 4; commit 5 adds itself when it ends.
    let t = c.ticket();
    c.put(&s, (0, 10), Agg { count: 3, sum: Decimal::from(7), ..Agg::default() }, Some(3), t);
    assert_eq!(sum((0, 10)), Some((4, Decimal::from(15))));

    // Read at position 5: commit 5 is durable but not yet reported; it must not count twice.
    let t = c.ticket();
    c.put(&s, (0, 20), Agg { count: 5, sum: Decimal::from(31), ..Agg::default() }, Some(5), t);
    commit_at(&c, &s, 5, 16);
    assert_eq!(sum((0, 10)), Some((5, Decimal::from(31))), "the older read got commit 5 added once");
    assert_eq!(sum((0, 20)), Some((5, Decimal::from(31))), "the newer read already held it");

    // A read older than the commits still kept cannot be brought up to date.
    for p in 6..6 + RECENT_COMMITS as u64 + 1 {
        commit_at(&c, &s, p, 0);
    }
    let t = c.ticket();
    c.put(&s, (0, 30), Agg::default(), Some(5), t);
    assert_eq!(sum((0, 30)), None);
    let last = 6 + RECENT_COMMITS as u64;
    c.put(&s, (0, 30), Agg { count: 5, sum: Decimal::from(31), ..Agg::default() }, Some(last - 3), c.ticket());
    assert_eq!(sum((0, 30)).map(|(n, _)| n), Some(8), "brought up by the last three commits");

    // A failed commit's outcome is unknown: no read that overlapped it is cached.
    let t = c.ticket();
    c.commit_failed(std::slice::from_ref(&s));
    c.put(&s, (0, 40), Agg::default(), Some(last), t);
    assert_eq!(sum((0, 40)), None);
}

#[test]
fn entries_expire_after_the_ttl() {
    let c = Core::new(Duration::from_millis(20));
    let s = SeriesKey::new("m", "", "");
    c.put(&s, (0, 1), Agg::default(), Some(0), c.ticket());
    assert!(c.get(&s, (0, 1)).is_some());
    std::thread::sleep(Duration::from_millis(30));
    assert!(c.get(&s, (0, 1)).is_none());
}

#[test]
fn an_answer_ages_from_the_start_of_its_read() {
    let c = Core::new(Duration::from_millis(1000));
    let s = SeriesKey::new("m", "", "");
    let slow = c.ticket();
    std::thread::sleep(Duration::from_millis(600));
    let fast = c.ticket();
    c.put(&s, (0, 1), Agg::of(Decimal::TWO), Some(0), fast);
    c.put(&s, (0, 1), Agg::of(Decimal::ONE), Some(0), slow);
    assert_eq!(c.get(&s, (0, 1)), Some(Agg::of(Decimal::TWO)), "the older read does not replace the newer");
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.get(&s, (0, 1)).is_some(), "the newer read is about 500 ms old");
    let s2 = SeriesKey::new("m2", "", "");
    c.put(&s2, (0, 1), Agg::default(), Some(0), slow);
    assert!(c.get(&s2, (0, 1)).is_none(), "a read that began 1.1 s ago is past the 1 s ttl");
}

#[test]
fn an_entry_past_half_its_life_asks_for_one_refresh_at_a_time() {
    let c = Core::new(Duration::from_millis(200));
    let s = SeriesKey::new("m", "", "");
    c.put(&s, (0, 1), Agg::default(), Some(0), c.ticket());
    assert_eq!(c.get_fresh(&s, (0, 1)), Some((Agg::default(), false)));
    std::thread::sleep(Duration::from_millis(110));
    assert_eq!(c.get_fresh(&s, (0, 1)), Some((Agg::default(), true)), "still served, but old");
    assert!(c.begin_refresh(&s, (0, 1)));
    assert!(!c.begin_refresh(&s, (0, 1)), "one refresh per entry");
    c.end_refresh(&s, (0, 1));
    assert!(c.begin_refresh(&s, (0, 1)));
}

/// A commit at position `pos` adding one event at second 5 to each of `series` (sorted).
fn ones(series: &[SeriesKey]) -> Vec<(u32, i64, Agg)> {
    (0..series.len() as u32).map(|i| (i, 5, Agg::of(Decimal::ONE))).collect()
}

#[test]
fn a_fill_between_the_halves_of_a_commit_counts_it_once() {
    let c = Core::new(Duration::from_secs(10));
    let s = SeriesKey::new("m", "", "");
    let series = std::slice::from_ref(&s);
    let seconds = ones(series);
    let four = Committed { series, seconds: Some(&seconds), pos: Some(4) };
    let three = || Agg { count: 3, sum: Decimal::from(3), ..Agg::default() };
    // The store holds commits 1..=3. Commit 4 is logged; a read at 3 fills before the commit
    // reaches the series' shard (it adds 4 from the log), then the commit reaches the shard.
    c.log_commit(&four);
    assert!(c.put(&s, (0, 10), three(), Some(3), c.ticket()));
    c.apply_commit(&four);
    assert_eq!(c.get(&s, (0, 10)).map(|a| a.count), Some(4), "commit 4 once");
    // A read at 3 that fills after the commit was applied everywhere: once too.
    assert!(c.put(&s, (0, 20), three(), Some(3), c.ticket()));
    assert_eq!(c.get(&s, (0, 20)).map(|a| a.count), Some(4));
}

/// Readers fill the cache from snapshots of a store while a writer commits to it and reports
/// each commit, all on their own threads: every answer the cache gives is exactly what the store
/// held at some moment of that request, and at the end what it holds.
#[test]
fn concurrent_fills_and_commits_agree_with_the_store() {
    use std::sync::{Arc, Mutex};
    const SERIES: usize = 64;
    const COMMITS: u64 = 1_000;
    const UNREAD: usize = 1_000;
    let c = Arc::new(Core::new(Duration::from_secs(600)));
    let mut keys: Vec<SeriesKey> = (0..SERIES).map(|i| SeriesKey::new("m", "p", &i.to_string())).collect();
    keys.sort();
    let keys = Arc::new(keys);
    let unread: Vec<SeriesKey> = (0..UNREAD).map(|i| SeriesKey::new("m", "q", &i.to_string())).collect();
    // The store: its position and each series' count (one event per series a commit touches),
    // and each series' count as of the last commit reported to the cache (acknowledged).
    let store = Arc::new(Mutex::new((0u64, vec![0i64; SERIES], vec![0i64; SERIES])));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (c, keys, store, done) = (c.clone(), keys.clone(), store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = r;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    // Every series, and many windows of each (all holding second 5): fills keep
                    // coming for as long as commits do.
                    let (i, w) = (n * 37 % SERIES, (0, 10 + (n / SERIES % 32) as i64));
                    let s = &keys[i];
                    let acked = store.lock().unwrap().2[i];
                    if let Some(a) = c.get(s, w) {
                        let stored = store.lock().unwrap().1[i];
                        assert!(acked <= a.count && a.count <= stored, "{} not in {acked}..={stored}", a.count);
                        continue;
                    }
                    let ticket = c.ticket();
                    let (pos, n) = {
                        let st = store.lock().unwrap();
                        (st.0, st.1[i])
                    };
                    // A store read takes a while: commits land meanwhile.
                    std::thread::sleep(Duration::from_micros(i as u64 % 4 * 100));
                    c.put(s, w, Agg { count: n, sum: Decimal::from(n), ..Agg::default() }, Some(pos), ticket);
                }
            })
        })
        .collect();
    for p in 1..=COMMITS {
        // Each commit touches a different subset of the series, in key order.
        // Beside series nobody reads, so a commit takes a while to reach every shard: a fill
        // lands between its halves (logged, applied) now and then.
        let mut touched: Vec<SeriesKey> =
            keys.iter().enumerate().filter(|(i, _)| (*i as u64 * 31 + p) % 5 < 2).map(|(_, k)| k.clone()).collect();
        touched.extend(unread.iter().cloned());
        touched.sort();
        {
            let mut st = store.lock().unwrap();
            st.0 = p;
            for k in &touched {
                if let Ok(i) = keys.binary_search(k) {
                    st.1[i] += 1;
                }
            }
        }
        let seconds = ones(&touched);
        c.committed(&Committed { series: &touched, seconds: Some(&seconds), pos: Some(p) });
        {
            let mut st = store.lock().unwrap();
            st.2 = st.1.clone();
        }
        // Now and then, reads fall behind the commits the cache keeps.
        std::thread::sleep(Duration::from_micros(if p % 200 == 0 { 2_000 } else { 20 }));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader's check failed");
    }
    let st = store.lock().unwrap();
    let mut cached = 0;
    for (i, k) in keys.iter().enumerate() {
        for w in (10..42).map(|end| (0, end)) {
            if let Some(a) = c.get(k, w) {
                cached += 1;
                assert_eq!(a.count, st.1[i], "series {k:?}, window {w:?}");
            }
        }
    }
    assert!(cached >= SERIES * 32 / 2, "only {cached} answers cached: the test checks little");
}
