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
