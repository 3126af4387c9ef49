//! The settings file: event schemas, metric declarations, limits and retention.
//!
//! Everything has a default that works out of the box (the original design's two events and the
//! metrics its dashboard needs). Unknown keys are rejected so a typo is an error, not a silent
//! default. `Settings::check` reports every problem at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod kafka;
mod load;

pub use kafka::{ENV_PREFIX as KAFKA_ENV_PREFIX, KafkaProperties, is_secret};

/// Problems found in a configuration; all of them, not just the first.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default = "Settings::empty")]
pub struct Settings {
    /// Keep the built-in events and metrics (the seed endpoints' `sales_amount` and `rating`)
    /// besides the file's own; a file's event or metric of the same name replaces a built-in one.
    /// `false`: only what the file declares.
    pub builtins: bool,
    /// Limits applied to incoming events.
    pub ingest: IngestSettings,
    /// How long raw data and fine-grained buckets are kept.
    pub retention: RetentionSettings,
    /// Query-side settings.
    pub api: ApiSettings,
    /// Kafka consumer settings (brokers may also come from flags or the environment).
    pub kafka: KafkaSettings,
    /// The HTTP listener's limits: timeouts, connections, work in flight.
    pub http: HttpSettings,
    /// Disk bounds of the store.
    pub storage: StorageSettings,
    /// What happens when a metric's definition changes.
    pub rollups: RollupsSettings,
    /// Event schemas by event name. Events with other names are accepted unvalidated.
    pub events: BTreeMap<String, EventSchema>,
    /// Declared metrics: what is rolled up into time buckets.
    pub metrics: Vec<MetricDef>,
    /// Per dimension, the field that names its values (the latest seen is kept): e.g.
    /// `product_id = "name_of_product"`, which the dimension-values endpoint shows.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Largest accepted HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// How far in the future an event's timestamp may be (clock skew allowance).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub max_future_skew: Duration,
    /// How old (before its receipt) an event's timestamp may be; older ones are rejected with
    /// the reason. 0s (the default): any age, as late data is folded into its own buckets.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub max_lateness: Duration,
    /// Most events the writer puts in one transaction.
    pub max_batch_events: usize,
    /// Longest a commit waits for request bodies still being parsed to join it (0s: never).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub commit_linger: Duration,
    /// Longest accepted single event (raw bytes); longer ones become dead letters.
    pub max_event_bytes: usize,
    /// Most events in one request body (413 above): a body of millions of tiny events costs far
    /// more memory to answer than its size suggests.
    pub max_events_per_request: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Raw events (the source for rebuilding rollups).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub raw_events: Duration,
    /// Dead letters.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub dead_letters: Duration,
    /// One-second buckets (windows finer than a minute need them).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub second_buckets: Duration,
    /// One-minute buckets.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub minute_buckets: Duration,
    /// Idempotency keys of ingest requests: a retry with the same key within this time gets the
    /// first answer again instead of counting twice.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub idempotency_keys: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Longest time a cached answer may be served (bounds staleness across instances).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub cache_ttl: Duration,
    /// Window of `GET /api/product/sale/{id}`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub sales_window: Duration,
    /// Shortest time between two evaluations of a live stream's subscriptions: a commit is
    /// pushed within about this (plus the evaluation), and a subscription gets at most one event
    /// per this much time. Lower costs CPU per open subscription.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub stream_coalesce: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap servers; empty means "no Kafka consumer".
    pub brokers: String,
    /// Topic to consume.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Optional topic that dead letters are also produced to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Largest accepted record value, in bytes.
    pub max_record_bytes: usize,
    /// librdkafka properties for every Kafka client (security, SASL, TLS); see [`KafkaProperties`].
    pub properties: KafkaProperties,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Longest a client may take to send a request's headers; also how long an idle keep-alive
    /// connection is kept (the timer starts when the server waits for the next request).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// Time a request body may take on top of what `min_body_rate` allows for its size.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub body_timeout: Duration,
    /// The slowest body upload accepted, in bytes per second (a 16 MiB body at 64 KiB/s: 256 s).
    pub min_body_rate: u64,
    /// Most connections open at once; beyond it a new connection is answered 503 and closed.
    /// Lowered to leave headroom below the process's file limit.
    pub max_connections: usize,
    /// After SIGTERM/SIGINT, how long requests in progress may take before the process exits
    /// anyway (nothing acknowledged is lost: an answer is sent only after its commit).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub shutdown_timeout: Duration,
    /// Most bytes ingest requests hold at once while they are read, parsed and committed: each
    /// body, and the batch parsing it made (several times the body); beyond it ingest answers
    /// 503 with Retry-After instead of queueing without bound.
    pub max_inflight_ingest_bytes: usize,
    /// Proxies whose `X-Forwarded-For` is believed for the access log's client address (their
    /// IP addresses); empty: the connection's peer is the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Origins allowed to call the API from a browser (CORS), such as `https://dash.example.com`,
    /// or `*` for any; empty (the default): no CORS headers at all.
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupsSettings {
    /// At start, rebuild a new or changed metric's rollups from the raw events in the background
    /// (`false`: report it with the `jetstream rollups rebuild` command to run).
    pub auto_rebuild: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// SQLite: the size the write-ahead log is kept under (checkpoints run as it grows; over
    /// this, a truncating checkpoint empties it).
    pub wal_limit_bytes: u64,
    /// Below this much free space on the store's file system, ingest is refused (507, with the
    /// reason) before a commit could fail half-way; reads keep working. 0 turns it off.
    pub min_free_bytes: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self { wal_limit_bytes: 256 * 1024 * 1024, min_free_bytes: 512 * 1024 * 1024 }
    }
}

/// The fields an event must (or may) carry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventSchema {
    pub fields: BTreeMap<String, FieldSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    #[serde(rename = "type")]
    pub kind: FieldKind,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Decimal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// A non-negative integer, or a string of digits (an identifier).
    Id,
    /// A non-negative integer.
    Uint,
    /// A decimal: a JSON number or a numeric string such as "19.99".
    Decimal,
    /// A short string kept as a label (usable as a dimension).
    Label,
}

/// A metric rolled up into buckets. Every bucket keeps count, sum, min and max; `aggregation` is
/// what the API reports by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDef {
    pub name: String,
    /// The event name it folds, or `*` for every accepted event.
    pub event: String,
    pub aggregation: Aggregation,
    /// The numeric field; omitted for `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Each dimension gets its own series per value (plus one overall series).
    #[serde(default)]
    pub dimensions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Sum,
    Count,
    Avg,
    Min,
    Max,
}

/// The dimension the built-in `events` metric uses: every accepted event, counted by name.
pub const EVENT_NAME_DIMENSION: &str = "event_name";

const DAY: u64 = 86_400;

/// The longest duration any setting takes (100 years): times computed from settings then fit
/// every integer type they meet.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * DAY);

fn yes() -> bool {
    true
}

/// A duration in its largest whole unit (`90d`, not humantime's `2months 29days 2h 52m 48s`).
fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let text = match secs {
        _ if ms != 0 || secs == 0 => format!("{}ms", d.as_millis()),
        _ if secs % DAY == 0 => format!("{}d", secs / DAY),
        _ if secs % 3600 == 0 => format!("{}h", secs / 3600),
        _ if secs % 60 == 0 => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    };
    s.serialize_str(&text)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Whole seconds of a duration as an `i64`, saturating (never wraps).
pub fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Milliseconds of a duration as an `i64`, saturating (never wraps).
pub fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Parses `90s`, `15m`, `12h`, `30d` (and anything `humantime` accepts).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 90s, 15m, 12h, 30d"))
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_future_skew: Duration::from_secs(300),
            max_lateness: Duration::ZERO,
            max_batch_events: 50_000,
            commit_linger: Duration::from_millis(25),
            max_event_bytes: 1024 * 1024,
            max_events_per_request: 100_000,
        }
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            raw_events: Duration::from_secs(30 * DAY),
            dead_letters: Duration::from_secs(30 * DAY),
            second_buckets: Duration::from_secs(2 * DAY),
            minute_buckets: Duration::from_secs(90 * DAY),
            idempotency_keys: Duration::from_secs(DAY),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(1),
            sales_window: Duration::from_secs(3600),
            stream_coalesce: Duration::from_millis(50),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            min_body_rate: 64 * 1024,
            max_connections: 10_000,
            shutdown_timeout: Duration::from_secs(10),
            max_inflight_ingest_bytes: 256 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "analytics".into(),
            group: "jetstream".into(),
            dead_letter_topic: None,
            max_record_bytes: 1024 * 1024,
            properties: KafkaProperties::default(),
        }
    }
}

/// The configuration shipped with Jetstream: the original design's events and metrics.
pub const DEFAULT_CONFIG: &str = r#"
[events.productSold.fields]
product_id      = { type = "id" }
no_of_units     = { type = "uint" }
amount          = { type = "decimal", min = 0 }
name_of_product = { type = "label", required = false }
category        = { type = "label", required = false }

[events.productRated.fields]
product_id      = { type = "id" }
rating          = { type = "decimal", min = 1, max = 5 }
name_of_product = { type = "label", required = false }
category        = { type = "label", required = false }

[[metrics]]
name = "sales_amount"
event = "productSold"
aggregation = "sum"
field = "amount"
dimensions = ["product_id", "category"]

[[metrics]]
name = "sales_units"
event = "productSold"
aggregation = "sum"
field = "no_of_units"
dimensions = ["product_id", "category"]

[[metrics]]
name = "rating"
event = "productRated"
aggregation = "avg"
field = "rating"
dimensions = ["product_id", "category"]

[[metrics]]
name = "events"
event = "*"
aggregation = "count"
dimensions = ["event_name"]
"#;

impl Default for Settings {
    fn default() -> Self {
        Self::parse(DEFAULT_CONFIG).expect("the built-in configuration is valid (pinned by a test)")
    }
}

impl Settings {
    /// Default limits with no events and no metrics (what a file's omitted sections start from).
    fn empty() -> Self {
        Self {
            builtins: true,
            ingest: IngestSettings::default(),
            retention: RetentionSettings::default(),
            api: ApiSettings::default(),
            kafka: KafkaSettings::default(),
            http: HttpSettings::default(),
            storage: StorageSettings::default(),
            rollups: RollupsSettings::default(),
            events: BTreeMap::new(),
            metrics: Vec::new(),
            labels: BTreeMap::from([("product_id".to_string(), "name_of_product".to_string())]),
        }
    }

    /// Loads the file at `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Ok(Self::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(vec![format!("cannot read config file {}: {e}", p.display())]))?;
                Self::parse(&text).map_err(|ConfigError(v)| {
                    ConfigError(v.into_iter().map(|m| format!("{}: {m}", p.display())).collect())
                })
            }
        }
    }

    /// Every problem at once.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        for m in &self.metrics {
            if !names.insert(&m.name) {
                problems.push(format!("metric {:?} is declared twice", m.name));
            }
            if m.name.is_empty() || !m.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                problems.push(format!("metric name {:?} must be letters, digits and _", m.name));
            }
            match (&m.field, m.aggregation) {
                (None, Aggregation::Count) => {}
                (None, _) => {
                    problems.push(format!("metric {:?}: aggregation {:?} needs a `field`", m.name, m.aggregation))
                }
                (Some(f), _) => {
                    if let Some(schema) = self.events.get(&m.event) {
                        match schema.fields.get(f) {
                            Some(spec) if spec.kind == FieldKind::Label => problems.push(format!(
                                "metric {:?}: field {f:?} of event {:?} is a label, not a number",
                                m.name, m.event
                            )),
                            Some(_) => {}
                            None => problems
                                .push(format!("metric {:?}: event {:?} declares no field {f:?}", m.name, m.event)),
                        }
                    }
                }
            }
            for d in &m.dimensions {
                if d.is_empty() {
                    problems.push(format!("metric {:?}: empty dimension name", m.name));
                }
            }
        }
        for (name, schema) in &self.events {
            for (field, spec) in &schema.fields {
                if let (Some(lo), Some(hi)) = (spec.min, spec.max) {
                    if lo > hi {
                        problems.push(format!("event {name:?} field {field:?}: min {lo} is above max {hi}"));
                    }
                }
                if spec.kind == FieldKind::Label && (spec.min.is_some() || spec.max.is_some()) {
                    problems.push(format!("event {name:?} field {field:?}: a label has no min/max"));
                }
            }
        }
        self.check_durations(&mut problems);
        problems.extend(self.kafka.properties.problems());
        if self.http.max_connections == 0 || self.http.min_body_rate == 0 || self.http.max_inflight_ingest_bytes == 0 {
            problems.push(
                "http.max_connections, http.min_body_rate and http.max_inflight_ingest_bytes must be above 0".into(),
            );
        }
        if self.ingest.max_body_bytes == 0 {
            problems.push("ingest.max_body_bytes must be above 0".into());
        }
        if self.ingest.max_events_per_request == 0 {
            problems.push("ingest.max_events_per_request must be above 0".into());
        }
        if self.ingest.max_batch_events == 0 {
            problems.push("ingest.max_batch_events must be above 0".into());
        }
        if self.retention.second_buckets < self.api.sales_window.saturating_add(Duration::from_secs(120)) {
            problems.push("retention.second_buckets must exceed api.sales_window by at least 2m".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError(problems)) }
    }

    /// Every duration within bounds: arithmetic on times must never overflow or wrap (a
    /// retention of 300000000y used to wrap and delete everything within a minute).
    fn check_durations(&self, problems: &mut Vec<String>) {
        let d = |s: u64| Duration::from_secs(s);
        for (name, value, min, max) in [
            ("ingest.max_future_skew", self.ingest.max_future_skew, d(0), d(365 * DAY)),
            ("ingest.max_lateness", self.ingest.max_lateness, d(0), MAX_DURATION),
            ("ingest.commit_linger", self.ingest.commit_linger, d(0), d(10)),
            ("retention.raw_events", self.retention.raw_events, d(60), MAX_DURATION),
            ("retention.dead_letters", self.retention.dead_letters, d(60), MAX_DURATION),
            ("retention.second_buckets", self.retention.second_buckets, d(60), MAX_DURATION),
            ("retention.minute_buckets", self.retention.minute_buckets, d(60), MAX_DURATION),
            ("retention.idempotency_keys", self.retention.idempotency_keys, d(60), MAX_DURATION),
            ("api.cache_ttl", self.api.cache_ttl, d(0), d(3600)),
            ("api.sales_window", self.api.sales_window, d(1), d(366 * DAY)),
            ("api.stream_coalesce", self.api.stream_coalesce, Duration::from_millis(10), d(60)),
            ("http.header_read_timeout", self.http.header_read_timeout, d(1), d(3600)),
            ("http.body_timeout", self.http.body_timeout, d(1), d(3600)),
            ("http.shutdown_timeout", self.http.shutdown_timeout, d(0), d(3600)),
        ] {
            if value < min || value > max {
                problems.push(format!(
                    "{name} = {} must lie between {} and {}",
                    humantime::format_duration(value),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_configuration_is_valid() {
        let s = Settings::default();
        assert_eq!(s.metrics.len(), 4);
        assert_eq!(s.events["productRated"].fields["rating"].max, Some(Decimal::from(5)));
    }

    #[test]
    fn a_file_with_only_limits_keeps_the_default_metrics() {
        let s = Settings::parse("[ingest]\nmax_body_bytes = 1024\n").unwrap();
        assert_eq!(s.ingest.max_body_bytes, 1024);
        assert!(s.metrics.iter().any(|m| m.name == "sales_amount"));
    }

    #[test]
    fn declaring_a_metric_keeps_the_built_in_ones_unless_they_are_turned_off() {
        let file =
            "[[metrics]]\nname = \"rating\"\nevent = \"productRated\"\naggregation = \"max\"\nfield = \"rating\"\n";
        let s = Settings::parse(file).unwrap();
        let names: Vec<&str> = s.metrics.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"sales_amount") && names.contains(&"events"), "{names:?}");
        let rating: Vec<_> = s.metrics.iter().filter(|m| m.name == "rating").collect();
        assert_eq!(
            (rating.len(), rating[0].aggregation),
            (1, Aggregation::Max),
            "the file's own replaces the built-in"
        );
        let s = Settings::parse(&format!("builtins = false\n{file}")).unwrap();
        assert_eq!(s.metrics.len(), 1);
        assert!(s.events.is_empty());
    }

    #[test]
    fn problems_in_several_sections_are_reported_in_one_pass() {
        let text = r#"
            [ingest]
            max_body_bytes = "big"
            [kafka]
            brokerz = "x"
            [[metrics]]
            name = "m"
            aggregation = "sum"
            [api]
            sales_window = "soon"
        "#;
        let ConfigError(problems) = Settings::parse(text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        for part in ["[ingest]", "[kafka]", "[[metrics]] \"m\"", "[api]"] {
            assert!(problems.iter().any(|p| p.contains(part)), "{part}: {problems:?}");
        }
    }

    #[test]
    fn a_metric_over_an_event_without_a_schema_is_warned_about() {
        let s =
            Settings::parse("[[metrics]]\nname = \"m\"\nevent = \"productSould\"\naggregation = \"count\"\n").unwrap();
        let w = s.warnings();
        assert!(w.iter().any(|w| w.contains("productSould")), "{w:?}");
        assert!(Settings::default().warnings().is_empty(), "{:?}", Settings::default().warnings());
    }

    #[test]
    fn the_shown_configuration_reads_back_as_itself() {
        let shown = toml::to_string(&Settings::default()).unwrap();
        let again = Settings::parse(&shown).unwrap();
        assert_eq!(toml::to_string(&again).unwrap(), shown);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Settings::parse("[ingest]\nmax_bodybytes = 1\n").unwrap_err();
        assert!(e.to_string().contains("max_bodybytes"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [events.x.fields]
            a = { type = "label" }
            [[metrics]]
            name = "m"
            event = "x"
            aggregation = "sum"
            field = "a"
            [[metrics]]
            name = "m"
            event = "x"
            aggregation = "avg"
        "#;
        let ConfigError(problems) = Settings::parse(text).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn durations_take_the_usual_suffixes() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert!(parse_duration("soon").is_err());
    }
}
