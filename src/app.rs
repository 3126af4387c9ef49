//! The running server: store, writer, background tasks, the Kafka consumer (when brokers are
//! configured) and the HTTP listener (unless it is a consumer-only process), started together and
//! stopped in order (stop accepting → finish requests → stop the Kafka consumer and let its
//! in-flight batches commit → drain the writer → close the store).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, ReadCache, Shared};
use crate::auth::Tokens;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::event::Validator;
use crate::health::Health;
use crate::ingest::kafka::{ConsumerParts, KafkaConsumer};
use crate::ingest::writer::{CommitObserver, Writer};
use crate::rollup::Metrics;
use crate::storage::{self, PruneBefore, Store};

/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Application {
    /// `None` for a consumer-only process (`jetstream consume`).
    listener: Option<TcpListener>,
    state: AppState,
    writer_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    kafka: Option<KafkaConsumer>,
    /// Serve HTTPS with this configuration instead of HTTP (see `with_tls`).
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The ops listener (`/metrics`, `/healthz`, `/readyz` without a token), if asked for.
    ops: Option<TcpListener>,
    /// The store's URL with any password masked, for the startup line.
    store_label: String,
}

impl Application {
    /// Opens the store, starts the writer, background tasks and (when `settings.kafka.brokers`
    /// is set) the Kafka consumer, and binds `listen` (port 0 picks a free port; see
    /// `local_addr`).
    pub async fn build(settings: Settings, store_url: &str, listen: &str) -> anyhow::Result<Self> {
        Self::build_with(settings, store_url, Some(listen)).await
    }

    /// A process that only consumes Kafka: no HTTP API.
    pub async fn build_consumer(settings: Settings, store_url: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(!settings.kafka.brokers.is_empty(), "no Kafka brokers are configured");
        Self::build_with(settings, store_url, None).await
    }

    async fn build_with(settings: Settings, store_url: &str, listen: Option<&str>) -> anyhow::Result<Self> {
        // Redacted: a PostgreSQL URL may carry a password, and this context is printed.
        let options = storage::StoreOptions {
            wal_limit_bytes: settings.storage.wal_limit_bytes,
            second_buckets_s: Some(crate::config::secs_i64(settings.retention.second_buckets)),
            minute_buckets_s: Some(crate::config::secs_i64(settings.retention.minute_buckets)),
        };
        let url = storage::StoreUrl::parse(store_url)?;
        let store = storage::open_url(&url, options).await.with_context(|| format!("opening store {url}"))?;
        let listener = match listen {
            Some(l) => Some(TcpListener::bind(l).await.with_context(|| format!("binding {l}"))?),
            None => None,
        };
        crate::telemetry::metrics::install();
        crate::telemetry::metrics::declare_events(settings.events.keys().map(String::as_str));
        let settings = Arc::new(settings);
        let cache = ReadCache::new(settings.api.cache_ttl, store.clone());
        let commits = Arc::new(api::CommitBell::default());
        let (writer, writer_task) = Writer::spawn(
            store.clone(),
            settings.ingest.max_batch_events,
            settings.ingest.commit_linger,
            vec![cache.clone() as Arc<dyn CommitObserver>, commits.clone() as Arc<dyn CommitObserver>],
        );
        let health = Arc::new(Health::default());
        let tokens = Arc::new(Tokens::default());
        tokens.reload(&*store).await.context("loading tokens")?;
        let changes = crate::rebuild::defs::check(&*store, &settings)
            .await
            .context("comparing the declared metrics with the store's")?;
        crate::rebuild::defs::report(&changes, store_url);
        let mut background = vec![
            tokio::spawn(tokens.clone().keep_fresh(store.clone())),
            tokio::spawn(prune_forever(store.clone(), settings.clone())),
            tokio::spawn(watch_disk(store.clone(), writer.clone(), health.clone(), settings.storage.min_free_bytes)),
        ];
        let ingest_gate = Arc::new(tokio::sync::Semaphore::new(settings.http.max_inflight_ingest_bytes.div_ceil(1024)));
        let state = AppState::new(Shared {
            store,
            validator: Arc::new(Validator::new(&settings)),
            metrics: Arc::new(Metrics::new(&settings)),
            settings,
            writer,
            tokens,
            cache,
            health,
            ingest_gate,
            streams: Arc::default(),
            commits,
            routes: Arc::default(),
            rebuilds: Arc::default(),
        });
        let foreign = state.store.foreign_commits();
        if listener.is_some() {
            // Only a process that answers queries has a use for the index.
            background.push(tokio::spawn(state.cache.clone().keep_index(foreign.is_some())));
        }
        if let Some(foreign) = foreign {
            background.push(tokio::spawn(follow_foreign_commits(foreign, state.cache.clone(), state.commits.clone())));
        }
        if state.settings.rollups.auto_rebuild && !changes.to_rebuild().is_empty() {
            start_auto_rebuild(&state, changes.to_rebuild()).await;
        }
        let kafka = if state.settings.kafka.brokers.is_empty() {
            None
        } else {
            let parts = ConsumerParts {
                store: state.store.clone(),
                writer: state.writer.clone(),
                validator: state.validator.clone(),
                metrics: state.metrics.clone(),
                health: state.health.clone(),
            };
            Some(KafkaConsumer::start(&state.settings.kafka, parts).context("starting the Kafka consumer")?)
        };
        Ok(Self { listener, state, writer_task, background, kafka, tls: None, ops: None, store_label: url.to_string() })
    }

    /// The HTTP API's address. Only `build` applications have one (`build_consumer` has no API).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .expect("local_addr is only asked of an application with an HTTP API")
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves HTTPS (terminated by rustls, see `crate::server::tls`) instead of HTTP.
    pub fn with_tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Also serves `/metrics`, `/healthz` and `/readyz`, without a token, on `listen` (meant for
    /// a loopback or private address: the scraper's side of the fleet).
    pub async fn with_ops_listener(mut self, listen: &str) -> anyhow::Result<Self> {
        self.ops = Some(TcpListener::bind(listen).await.with_context(|| format!("binding the ops listener {listen}"))?);
        Ok(self)
    }

    /// The ops listener's address, if there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops in order and flushes everything.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { listener, state, writer_task, background, kafka, tls, ops, store_label: _ } = self;
        let (ops_stop, ops_stopped) = tokio::sync::watch::channel(());
        let ops_task = ops.map(|l| {
            let (router, http) = (api::ops_router(state.clone()), state.settings.http.clone());
            let mut stopped = ops_stopped;
            tokio::spawn(async move {
                crate::server::serve(l, None, router, &http, async move {
                    let _ = stopped.changed().await;
                })
                .await
            })
        });
        match listener {
            Some(listener) => {
                let router = api::router(state.clone());
                let bell = state.commits.clone();
                let shutdown = async move {
                    shutdown.await;
                    // Live streams end now rather than at the shutdown deadline.
                    bell.close();
                };
                crate::server::serve(listener, tls, router, &state.settings.http, shutdown).await;
            }
            None => shutdown.await,
        }
        // The ops router holds the state too: it must be gone before the writer can drain.
        drop(ops_stop);
        if let Some(t) = ops_task {
            let _ = t.await;
        }
        // The consumer submits to the writer: it must stop (and its batches commit) first.
        if let Some(k) = kafka {
            k.stop().await;
        }
        for task in &background {
            task.abort();
        }
        let store = state.store.clone();
        // Dropping the last writer handle lets the writer drain its queue and end.
        drop(state);
        writer_task.await.context("writer task")?;
        store.close().await.context("closing the store")?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

impl Application {
    /// One line saying what runs: version, store (password masked), Kafka, listen addresses
    /// (the commands log it once everything is configured, before they announce the address).
    pub fn log_startup(&self) {
        let k = &self.state.settings.kafka;
        let kafka = if k.brokers.is_empty() {
            "off".to_string()
        } else {
            format!("{} topic {} group {}", k.brokers, k.topic, k.group)
        };
        let addr = |l: &Option<TcpListener>| {
            l.as_ref().and_then(|l| l.local_addr().ok()).map_or_else(|| "none".to_string(), |a| a.to_string())
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            store = %self.store_label,
            kafka = %kafka,
            listen = %addr(&self.listener),
            scheme = self.scheme(),
            ops_listen = %addr(&self.ops),
            "jetstream started"
        );
    }
}

/// How often the store's footprint and free space are looked at.
const DISK_EVERY: Duration = Duration::from_secs(1);

/// Keeps `disk` current, and makes the writer refuse work while free space is below
/// `min_free_bytes` (0: never).
async fn watch_disk(store: Arc<dyn Store>, writer: Writer, health: Arc<Health>, min_free_bytes: u64) {
    let mut tick = tokio::time::interval(DISK_EVERY);
    let mut refusing = false;
    loop {
        tick.tick().await;
        let Ok(f) = store.footprint().await else { continue };
        health.disk.set(f.database_bytes, f.wal_bytes, f.free_bytes);
        crate::telemetry::metrics::store_footprint(f.database_bytes, f.wal_bytes, f.free_bytes);
        let low = f.free_bytes.filter(|free| min_free_bytes > 0 && *free < min_free_bytes);
        match (low, refusing) {
            (Some(free), _) => {
                let why = format!(
                    "the disk holding the store has {} MiB free, under the floor of {} MiB (storage.min_free_bytes): \
                     ingest resumes once space is freed",
                    free >> 20,
                    min_free_bytes >> 20
                );
                if !refusing {
                    tracing::error!(free_bytes = free, min_free_bytes, "disk nearly full: ingest is refused");
                }
                writer.refuse(Some(why));
                refusing = true;
            }
            (None, true) => {
                tracing::info!("disk space recovered: ingest resumes");
                writer.refuse(None);
                refusing = false;
            }
            (None, false) => {}
        }
    }
}

/// Applies retention once a minute; expired second and minute buckets only once their cut-off
/// has moved by a hundredth of their retention (at least a minute) since they were last pruned.
/// Finding them reads every series (SQLite: a lookup per series; PostgreSQL: a scan of the table),
/// which on 1.7M series took 115 s on SQLite, so once a minute it never stopped. Queries never
/// see the difference: a window older than a resolution's retention is read from coarser buckets
/// (`rollup::window`), so at worst 1 % more of those rows are kept on disk.
async fn prune_forever(store: Arc<dyn Store>, settings: Arc<Settings>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cuts: [Option<i64>; 2] = [None, None];
    loop {
        tick.tick().await;
        let now = now_ms();
        let r = &settings.retention;
        // Durations are at most 100 years (`Settings::check`); saturating all the same, so a
        // duration that did not fit could never turn into a cut-off in the future.
        let ms = |d: Duration| now.saturating_sub(crate::config::millis_i64(d));
        let s = |d: Duration| (now / 1000).saturating_sub(crate::config::secs_i64(d));
        let before = PruneBefore {
            raw_ms: ms(r.raw_events),
            dead_letters_ms: ms(r.dead_letters),
            second_buckets_s: bucket_cut(&mut last_cuts[0], s(r.second_buckets), r.second_buckets),
            minute_buckets_s: bucket_cut(&mut last_cuts[1], s(r.minute_buckets), r.minute_buckets),
            idempotency_keys_ms: ms(r.idempotency_keys),
        };
        let start = std::time::Instant::now();
        let result = store.prune(before).await;
        let ms = start.elapsed().as_millis() as u64;
        match result {
            Ok(p) if p != Default::default() => tracing::info!(?p, ms, "retention pruned"),
            Ok(_) => tracing::debug!(ms, "retention: nothing to prune"),
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}

/// `cut` if buckets before it are due to be pruned (see `prune_forever`), remembered in `last`.
fn bucket_cut(last: &mut Option<i64>, cut: i64, retention: Duration) -> Option<i64> {
    let slack = crate::config::secs_i64(retention / 100).max(60);
    if last.is_some_and(|l| cut >= l && cut - l < slack) {
        return None;
    }
    *last = Some(cut);
    Some(cut)
}

/// Completes on SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    // The handlers are installed now, not when the future is first polled: a SIGTERM that comes
    // right after the address is announced must take the graceful path (which also flushes the
    // non-blocking log writer), not the default action that kills the process mid-line.
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! { _ = recv(term) => {}, _ = recv(int) => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

/// `rollups.auto_rebuild`: rebuilds the new and changed metrics in the background; the server
/// answers meanwhile (from the old rows, swapped for the rebuilt ones at the end).
async fn start_auto_rebuild(state: &AppState, metrics: Vec<String>) {
    let cache = state.cache.clone();
    let req = crate::rebuild::Request { metrics: metrics.clone(), from_ms: None };
    match state.rebuilds.start(state.store.clone(), state.settings.clone(), req, move || cache.invalidate_all()).await {
        Ok(job) => tracing::info!(job = job.id, ?metrics, "rebuilding new and changed metrics (rollups.auto_rebuild)"),
        Err(e) => tracing::warn!(error = %e, ?metrics, "could not start the automatic rebuild"),
    }
}

/// At most one reaction to other processes' commits per this: a fleet instance sees another's
/// writes within about this (plus a read), and a busy fleet does not clear every cache at every
/// commit.
const FOREIGN_COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Another process committed to the shared store (PostgreSQL `LISTEN`): what this one cached may
/// be stale, and its live streams may have new figures.
async fn follow_foreign_commits(
    mut foreign: tokio::sync::watch::Receiver<u64>,
    cache: Arc<ReadCache>,
    bell: Arc<api::CommitBell>,
) {
    while foreign.changed().await.is_ok() {
        cache.invalidate_all();
        bell.ring_foreign();
        tokio::time::sleep(FOREIGN_COALESCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_buckets_are_pruned_once_their_cut_off_moved_a_hundredth_of_the_retention() {
        let two_days = Duration::from_secs(2 * 86_400); // slack: 1,728 s
        let mut last = None;
        assert_eq!(bucket_cut(&mut last, 1_000_000, two_days), Some(1_000_000), "the first pass prunes");
        assert_eq!(bucket_cut(&mut last, 1_000_060, two_days), None);
        assert_eq!(bucket_cut(&mut last, 1_001_727, two_days), None);
        assert_eq!(bucket_cut(&mut last, 1_001_728, two_days), Some(1_001_728));
        assert_eq!(bucket_cut(&mut last, 1_001_800, two_days), None);
        // A clock set back (or a longer retention) prunes at once, to the new cut-off.
        assert_eq!(bucket_cut(&mut last, 900_000, two_days), Some(900_000));
        // Short retentions still wait at least a minute.
        let mut last = Some(0);
        assert_eq!(bucket_cut(&mut last, 59, Duration::from_secs(3_720)), None);
        assert_eq!(bucket_cut(&mut last, 60, Duration::from_secs(3_720)), Some(60));
    }
}
