//! `GET /healthz` (the process answers) and `GET /readyz` (the store answers, and the Kafka
//! consumer, when there is one, is healthy). Neither needs a token, so neither shows error text:
//! causes are logged.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::AppState;

/// A commit running longer than this makes `/readyz` say not ready.
const WRITER_STUCK_MS: i64 = 3_000;

/// How long `/readyz` waits for the store before saying it is not ready.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Up", body = serde_json::Value)))]
pub async fn get_health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The store answers (within 2 s) and, when there is one, the Kafka consumer is healthy.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready", body = serde_json::Value),
    (status = 503, description = "Not ready: what is not", body = serde_json::Value),
))]
pub async fn get_readiness(State(state): State<AppState>) -> Response {
    let store = match tokio::time::timeout(STORE_PROBE_TIMEOUT, state.store.tokens_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            Err("the store does not answer")
        }
        Err(_) => {
            tracing::warn!("readiness: the store did not answer within 2 s");
            Err("the store did not answer within 2 s")
        }
    };
    // A commit running for long: the writer is stuck (a lock held elsewhere, a full disk).
    let started = state.writer.stats().commit_started_ms.load(Ordering::Relaxed);
    let stuck_ms = if started > 0 { crate::clock::now_ms() - started } else { 0 };
    let writer = if stuck_ms > WRITER_STUCK_MS {
        tracing::warn!(stuck_ms, "readiness: a commit has been running for long");
        Err(format!("a commit has been running for {} s", stuck_ms / 1000))
    } else {
        Ok(())
    };
    let h = &state.health;
    let (database_bytes, wal_bytes, free_bytes) = h.disk.get();
    let disk = json!({ "database_bytes": database_bytes, "wal_bytes": wal_bytes, "free_bytes": free_bytes,
                       "min_free_bytes": state.settings.storage.min_free_bytes });
    let kafka = h.kafka_configured.load(Ordering::Relaxed).then(|| {
        json!({
            "ok": h.kafka_ok.load(Ordering::Relaxed),
            "detail": h.kafka_detail.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    });
    let kafka_ok = kafka.as_ref().is_none_or(|k| k["ok"] == true);
    let ready = store.is_ok() && writer.is_ok() && kafka_ok;
    let body = json!({
        "ready": ready,
        "store": { "ok": store.is_ok(), "detail": store.err() },
        "writer": { "ok": writer.is_ok(), "detail": writer.err() },
        "disk": disk,
        "kafka": kafka,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}
