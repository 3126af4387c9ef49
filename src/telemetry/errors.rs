//! Error tracking: errors and panics reported to a Sentry-protocol collector (Sentry, GlitchTip,
//! self-hosted Sentry) when a DSN is configured. `tracing` ERROR events become reports and
//! lower levels their breadcrumbs; the HTTP layers (see `api`) give each request its own scope,
//! tagged with its route and request id. A report never carries a token or a password: no
//! personal data is sent by default, and request headers that could hold a secret are dropped
//! before sending.

use std::borrow::Cow;

/// Request headers never sent with a report.
const SECRET_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization", "x-api-key"];

/// Starts the client for `dsn` (nothing without one); keep the guard until exit, which
/// flushes reports still queued.
pub fn init(dsn: Option<&str>, environment: &str) -> Result<Option<sentry::ClientInitGuard>, String> {
    let Some(dsn) = dsn.map(str::trim).filter(|d| !d.is_empty()) else { return Ok(None) };
    let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| format!("the Sentry DSN is not valid: {e}"))?;
    let options = sentry::ClientOptions {
        dsn: Some(dsn),
        release: Some(Cow::Borrowed(concat!("jetstream@", env!("CARGO_PKG_VERSION")))),
        environment: Some(Cow::Owned(environment.to_string())),
        send_default_pii: false,
        before_send: Some(std::sync::Arc::new(|mut event| {
            scrub(&mut event);
            Some(event)
        })),
        ..Default::default()
    };
    Ok(Some(sentry::init(options)))
}

/// The `tracing` layer that turns ERROR events into reports (and the rest into breadcrumbs).
pub fn tracing_layer<S>() -> sentry::integrations::tracing::SentryLayer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    sentry::integrations::tracing::layer()
}

fn scrub(event: &mut sentry::protocol::Event<'static>) {
    if let Some(request) = &mut event.request {
        request.headers.retain(|name, _| !SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()));
        request.cookies = None;
        request.env.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_loses_the_authorization_header() {
        let mut event = sentry::protocol::Event::default();
        let mut request = sentry::protocol::Request::default();
        request.headers.insert("Authorization".into(), "Bearer js_secret".into());
        request.headers.insert("x-request-id".into(), "abc".into());
        event.request = Some(request);
        scrub(&mut event);
        let headers = &event.request.as_ref().expect("kept").headers;
        assert!(!headers.contains_key("Authorization"));
        assert_eq!(headers.get("x-request-id").map(String::as_str), Some("abc"));
    }
}
