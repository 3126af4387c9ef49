//! `jetstream rollups …` and `jetstream dead-letters replay`: changing metrics and schemas
//! without losing history.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::args::{DeadLettersCommand, RollupsCommand, StoreArgs};
use super::error::UsageError;
use super::usage::{load_settings, open_store};
use crate::rebuild::replay::{Filter, Sink};
use crate::rebuild::{Progress, RebuildError, Request, defs};

pub(super) async fn run(command: RollupsCommand) -> anyhow::Result<()> {
    match command {
        RollupsCommand::Rebuild { store, metrics, since, from, step_events } => {
            rebuild(&store, metrics, (since, from), step_events).await
        }
        RollupsCommand::Status { store } => status(&store).await,
        RollupsCommand::Drop { store, metrics } => drop_metrics(&store, metrics).await,
    }
}

async fn rebuild(
    args: &StoreArgs,
    metrics: Vec<String>,
    (since, from): (Option<String>, Option<String>),
    step_events: i64,
) -> anyhow::Result<()> {
    let settings = load_settings(args)?;
    let req = Request::parse(metrics, since.as_deref(), from.as_deref(), crate::clock::now_ms()).map_err(UsageError)?;
    let store = open_store(args).await?;
    let spec = crate::rebuild::plan(&*store, &settings, &req).await.map_err(usage)?;
    let (job, resumed) = crate::rebuild::claim(&*store, &spec).await.map_err(usage)?;
    eprintln!(
        "{} rebuild {} of {} in {}, {}",
        if resumed { "resuming" } else { "starting" },
        job.id,
        spec.metrics.join(", "),
        crate::storage::redact(&args.store),
        match spec.from_s {
            Some(s) => format!("from {} (UTC day start)", crate::clock::rfc3339(s * 1000)),
            None => "from the first raw event".into(),
        }
    );
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(progress.clone());
    let out = crate::rebuild::run(store.clone(), &settings, job, resumed, progress, step_events).await;
    bar.abort();
    let r = out?;
    println!(
        "rebuilt {} from {} events in {:.1} s ({:.0} events/s): {} rows replaced by {} ({} events folded during the swap){}",
        r.metrics.join(", "),
        r.events,
        r.seconds,
        r.events as f64 / r.seconds.max(0.001),
        r.swapped.rows_deleted,
        r.swapped.rows_written,
        r.swapped.tail_events,
        if r.skipped > 0 {
            format!("; {} stored events today's schemas refuse were left out", r.skipped)
        } else {
            String::new()
        }
    );
    eprintln!("time: steps {:.2} s, merging chunks {:.2} s, swap {:.2} s", r.steps_s, r.merge_s, r.swap_s);
    store.close().await?;
    Ok(())
}

/// A refused or busy rebuild is the user's to fix (exit 2), with the reason.
fn usage(e: RebuildError) -> anyhow::Error {
    match e {
        RebuildError::Refused(_) | RebuildError::Busy(_) => UsageError(e.to_string()).into(),
        other => other.into(),
    }
}

/// Events read, events/s and the ETA on the terminal (stderr), updated twice a second.
fn progress_bar(p: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {percent:>3}% {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let started = std::time::Instant::now();
        loop {
            let (start, done, total) = (
                p.start_block.load(Ordering::Relaxed),
                p.blocks_done.load(Ordering::Relaxed),
                p.blocks_total.load(Ordering::Relaxed),
            );
            bar.set_length(u64::try_from(total - start).unwrap_or(0).max(1));
            bar.set_position(u64::try_from(done - start).unwrap_or(0));
            let events = p.events_read.load(Ordering::Relaxed);
            bar.set_message(format!(
                "{events} events read, {:.0} events/s",
                events as f64 / started.elapsed().as_secs_f64().max(0.001)
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

async fn status(args: &StoreArgs) -> anyhow::Result<()> {
    let settings = load_settings(args)?;
    let store = open_store(args).await?;
    let records = store.metric_records().await?;
    println!("{:<24} {:<9} fingerprint", "metric", "state");
    for m in &settings.metrics {
        let fp = defs::fingerprint(m);
        let state = match records.iter().find(|r| r.name == m.name) {
            None => "new",
            Some(r) if r.fingerprint != fp => "changed",
            Some(r) => r.state.as_str(),
        };
        println!("{:<24} {:<9} {fp}", m.name, state);
    }
    for r in records.iter().filter(|r| !settings.metrics.iter().any(|m| m.name == r.name)) {
        println!("{:<24} {:<9} {} (not declared: jetstream rollups drop)", r.name, "removed", r.fingerprint);
    }
    for j in store.rebuild_jobs(5).await? {
        println!(
            "rebuild {} {} of {}: {} events read, started {}",
            j.id,
            j.state,
            j.spec.metrics.join(", "),
            j.events_read,
            crate::clock::rfc3339(j.started_ms)
        );
    }
    Ok(())
}

async fn drop_metrics(args: &StoreArgs, metrics: Vec<String>) -> anyhow::Result<()> {
    let settings = load_settings(args)?;
    let store = open_store(args).await?;
    let names = if metrics.is_empty() {
        let records = store.metric_records().await?;
        records.into_iter().map(|r| r.name).filter(|n| !settings.metrics.iter().any(|m| m.name == *n)).collect()
    } else {
        if let Some(m) = metrics.iter().find(|n| settings.metrics.iter().any(|m| m.name == **n)) {
            return Err(UsageError(format!(
                "metric {m:?} is declared in the configuration: remove it there first (or rebuild it instead)"
            ))
            .into());
        }
        metrics
    };
    if names.is_empty() {
        println!("no rollups of undeclared metrics to drop");
        return Ok(());
    }
    let rows = store.drop_metrics(names.clone()).await?;
    println!("dropped {rows} rollup rows of {}", names.join(", "));
    Ok(())
}

pub(super) async fn dead_letters(command: DeadLettersCommand) -> anyhow::Result<()> {
    let DeadLettersCommand::Replay { store: args, reason_contains, since, dry_run } = command;
    let settings = load_settings(&args)?;
    let since_ms = since
        .as_deref()
        .map(|s| crate::rebuild::since_ms(s, crate::clock::now_ms()))
        .transpose()
        .map_err(UsageError)?;
    let store = open_store(&args).await?;
    let filter = Filter { reason_contains, since_ms, dry_run };
    let r = crate::rebuild::replay::replay(&*store, Sink::Store(&*store), &settings, &filter).await?;
    println!(
        "{} dead letters examined: {} {}, {} still refused",
        r.examined,
        r.replayed,
        if dry_run { "would be replayed" } else { "replayed" },
        r.still_rejected
    );
    for (reason, n) in &r.reasons {
        println!("  {n} × {reason}");
    }
    store.close().await?;
    Ok(())
}
