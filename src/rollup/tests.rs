//! Unit and property tests of bucket arithmetic and folding.

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::config::Settings;
fn total_len(spans: &[Span]) -> i64 {
    spans.iter().map(|s| s.to - s.from).sum()
}

#[test]
fn the_last_hour_is_the_3600_seconds_ending_with_this_one() {
    let now_ms = 1_700_000_000_500;
    let (from, to) = trailing_window(now_ms, 3600);
    assert_eq!(to - from, 3600);
    let now = now_ms / 1000;
    assert!(from <= now - 3590 && now - 3610 < from);
    assert!(now < to);
}

#[test]
fn an_aligned_day_is_one_bucket() {
    assert_eq!(cover(86_400, 2 * 86_400), vec![Span { res: Resolution::Day, from: 86_400, to: 172_800 }]);
}

#[test]
fn an_unaligned_hour_uses_seconds_at_the_edges_and_minutes_between() {
    let spans = cover(100, 3700);
    let rows: i64 = spans.iter().map(|s| (s.to - s.from) / s.res.seconds()).sum();
    assert_eq!(
        spans.iter().map(|s| s.res).collect::<Vec<_>>(),
        [Resolution::Second, Resolution::Minute, Resolution::Second]
    );
    assert!(rows <= 59 + 60 + 59, "{rows}");
}

proptest! {
    #[test]
    fn a_cover_is_exact_aligned_and_small(from in -1_000_000i64..10_000_000, len in 0i64..5_000_000) {
        let to = from + len;
        let spans = cover(from, to);
        prop_assert_eq!(total_len(&spans), len);
        let mut at = from;
        let mut rows = 0;
        for s in &spans {
            prop_assert_eq!(s.from, at, "spans are contiguous");
            prop_assert!(s.from < s.to);
            prop_assert_eq!(s.from.rem_euclid(s.res.seconds()), 0);
            prop_assert_eq!(s.to.rem_euclid(s.res.seconds()), 0);
            rows += (s.to - s.from) / s.res.seconds();
            at = s.to;
        }
        prop_assert!(rows <= 2 * (23 + 59 + 59) + len / 86_400, "{} rows", rows);
    }

    #[test]
    fn a_spans_seconds_are_exactly_those_in_its_buckets(
        from in -200_000i64..200_000, len in 0i64..200_000, t in -300_000i64..300_000, r in 0usize..5,
    ) {
        let res = RESOLUTIONS[r];
        let span = Span { res, from, to: from + len };
        let (lo, hi) = span.seconds();
        let b = res.bucket_of(t);
        prop_assert_eq!(lo <= t && t < hi, span.from <= b && b < span.to, "second {} bucket {}", t, b);
    }

    #[test]
    fn snapping_only_widens_and_aligns(from in 0i64..10_000_000, len in 0i64..5_000_000, back in 0i64..20_000_000) {
        let now = 20_000_000;
        let (f, t) = snap_window(from, from + len, now, 172_800, 7_776_000);
        prop_assert!(f <= from && t >= from + len);
        prop_assert_eq!(f, finest_kept(from, now, 172_800, 7_776_000).bucket_of(from));
        let _ = back;
    }

    #[test]
    fn bucket_of_contains_the_second(t in -10_000_000i64..10_000_000) {
        for r in RESOLUTIONS.into_iter().filter(|r| *r != Resolution::All) {
            let b = r.bucket_of(t);
            prop_assert!(b <= t && t < b + r.seconds());
        }
    }
}

#[test]
fn averages_are_of_the_whole_window_not_of_buckets() {
    let mut a = Agg::of(Decimal::from(5));
    let mut b = Agg::of(Decimal::from(1));
    b.merge(&Agg::of(Decimal::from(1)));
    a.merge(&b);
    assert_eq!(a.avg(), Some(Decimal::from(7) / Decimal::from(3)));
    assert_eq!((a.min, a.max), (Some(Decimal::ONE), Some(Decimal::from(5))));
}

#[test]
fn ten_sales_of_ten_cents_total_exactly_one() {
    let settings = Settings::default();
    let metrics = Metrics::new(&settings);
    let v = crate::event::Validator::new(&settings);
    let mut delta = RollupDelta::default();
    for _ in 0..10 {
        let e = v
            .validate(br#"{"event_name":"productSold","product_id":3,"no_of_units":1,"amount":"0.10"}"#, 0, 0)
            .unwrap();
        metrics.fold(&e, &mut delta);
    }
    let (rows, dims) = delta.into_rows();
    let all = rows
        .iter()
        .find(|(k, r)| **k == SeriesKey::new("sales_amount", "product_id", "3") && r.res == Resolution::All)
        .map(|(_, r)| r.agg.clone())
        .expect("the all-time bucket");
    assert_eq!(all.sum, Decimal::ONE);
    assert_eq!(all.sum.normalize().to_string(), "1");
    assert_eq!(all.count, 10);
    assert!(dims.iter().any(|d| &*d.dim == "product_id" && d.value == "3"));
}

fn fold_all(metrics: &Metrics, events: &[(&str, i64)]) -> RollupDelta {
    let v = crate::event::Validator::new(&Settings::default());
    let mut delta = RollupDelta::default();
    for (json, ms) in events {
        metrics.fold(&v.validate(json.as_bytes(), *ms, *ms).expect("valid"), &mut delta);
    }
    delta
}

fn sale(product: u32, amount: &str) -> String {
    format!(
        r#"{{"event_name":"productSold","product_id":{product},"no_of_units":1,"amount":"{amount}","category":"c"}}"#
    )
}

#[test]
fn rows_derive_every_resolution_from_seconds_in_lock_order() {
    let metrics = Metrics::new(&Settings::default());
    let (a, b, c) = (sale(2, "1.50"), sale(1, "2"), sale(2, "0.25"));
    let delta = fold_all(&metrics, &[(&a, 3_599_000), (&b, 3_599_500), (&c, 3_601_000)]);
    let (rows, dims) = delta.into_rows();
    // The same rows as folding every resolution per event, then sorting.
    let mut expect = Vec::new();
    for (p, amount, t) in [("2", "1.50", 3599), ("1", "2", 3599), ("2", "0.25", 3601)] {
        for res in RESOLUTIONS {
            let v = Decimal::from_str_exact(amount).expect("decimal");
            expect.push((
                BucketKey { series: SeriesKey::new("sales_amount", "product_id", p), res, start: res.bucket_of(t) },
                Agg::of(v),
            ));
        }
    }
    let want = RollupRows::from_buckets(expect);
    let flat = |rows: &RollupRows| -> Vec<(SeriesKey, Resolution, i64, Agg)> {
        rows.iter()
            .filter(|(k, _)| &*k.metric == "sales_amount" && &*k.dim == "product_id")
            .map(|(k, r)| (k.clone(), r.res, r.start, r.agg.clone()))
            .collect()
    };
    assert_eq!(flat(&rows), flat(&want));
    let keys: Vec<_> = rows.iter().map(|(k, r)| (k.clone(), r.res, r.start)).collect();
    assert!(keys.is_sorted(), "rows come in lock order");
    assert_eq!(
        dims.iter().find(|d| &*d.dim == "product_id" && d.value == "2").map(|d| d.first_seen),
        Some(3599),
        "first seen"
    );
}

#[test]
fn rows_from_buckets_are_sorted_with_each_key_once() {
    let k = |v: &str| BucketKey { series: SeriesKey::new("m", "d", v), res: Resolution::Second, start: 1 };
    let rows = RollupRows::from_buckets([
        (k("b"), Agg::of(Decimal::ONE)),
        (k("a"), Agg::of(Decimal::TWO)),
        (k("b"), Agg::of(Decimal::TEN)),
    ]);
    let keys: Vec<_> = rows.iter().map(|(s, _)| s.value.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(rows.series().len(), 2);
    assert_eq!(
        rows.rows()[1].agg,
        Agg { count: 2, sum: Decimal::from(11), min: Some(Decimal::ONE), max: Some(Decimal::TEN) }
    );
}

#[test]
fn out_of_order_seconds_merge_into_one_row_each() {
    let metrics = Metrics::new(&Settings::default());
    let secs = [5, 1, 5, 3, 1, 2, 6, 7, 8, 9, 5, 61, 1];
    let events: Vec<(String, i64)> = secs.iter().map(|t| (sale(1, "1"), t * 1000)).collect();
    let events: Vec<(&str, i64)> = events.iter().map(|(j, t)| (j.as_str(), *t)).collect();
    let (rows, dims) = fold_all(&metrics, &events).into_rows();
    let series = SeriesKey::new("sales_amount", "product_id", "1");
    let got: Vec<(Resolution, i64, i64)> =
        rows.iter().filter(|(k, _)| **k == series).map(|(_, r)| (r.res, r.start, r.agg.count)).collect();
    use Resolution::*;
    let want = [
        (All, 0, 13),
        (Day, 0, 13),
        (Hour, 0, 13),
        (Minute, 0, 12),
        (Minute, 60, 1),
        (Second, 1, 3),
        (Second, 2, 1),
        (Second, 3, 1),
        (Second, 5, 3),
        (Second, 6, 1),
        (Second, 7, 1),
        (Second, 8, 1),
        (Second, 9, 1),
        (Second, 61, 1),
    ];
    assert_eq!(got, want);
    assert!(dims.iter().any(|d| &*d.dim == "product_id" && d.value == "1" && d.first_seen == 1));
}
