//! Bearer tokens in the spirit of Laravel Sanctum's personal access tokens.
//!
//! A token is `js_` + 24 random bytes in hex; only its SHA-256 is stored, with a name,
//! scopes and an optional expiry. Servers keep the token table in memory and reload it when the
//! store's token version changes, so the CLI's create/revoke take effect within a poll interval.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::storage::{Store, StoreError, TokenRecord};

/// How often servers look for token changes.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Read,
    Ingest,
    Admin,
    /// `GET /metrics` only: what a Prometheus scraper is given.
    Metrics,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Ingest, Scope::Admin, Scope::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s.trim())
            .ok_or_else(|| format!("unknown scope {s:?}: use read, ingest, admin or metrics"))
    }
}

/// Parses `read,ingest` into scopes (at least one, no unknown ones).
pub fn parse_scopes(s: &str) -> Result<Vec<Scope>, String> {
    let mut v: Vec<Scope> =
        s.split(',').filter(|p| !p.trim().is_empty()).map(Scope::from_str).collect::<Result<_, _>>()?;
    v.dedup();
    if v.is_empty() {
        return Err("at least one scope is needed: read, ingest, admin or metrics".into());
    }
    Ok(v)
}

/// Why a request was not authorised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("token has been revoked")]
    Revoked,
    #[error("token lacks the {0} scope")]
    Forbidden(Scope),
}

/// What the store keeps of a token: its SHA-256, in hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(digest_token(token))
}

/// A token's SHA-256: the key of the in-memory table (no hex string built per request).
fn digest_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Creates a token named `name`; returns the secret (shown once, never stored).
pub async fn create_token(
    store: &dyn Store,
    name: &str,
    scopes: &[Scope],
    expires_in: Option<Duration>,
    now_ms: i64,
) -> Result<String, StoreError> {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("js_{}", hex::encode(bytes));
    store
        .create_token(TokenRecord {
            name: name.to_string(),
            hash: hash_token(&secret),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            created_ms: now_ms,
            expires_ms: expires_in.map(|d| now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
            revoked_ms: None,
        })
        .await?;
    Ok(secret)
}

#[derive(Debug)]
struct Known {
    name: Arc<str>,
    scopes: Vec<Scope>,
    expires_ms: Option<i64>,
    revoked: bool,
}

/// The in-memory token table of a server.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: RwLock<Arc<HashMap<[u8; 32], Known>>>,
    /// Serialises reloads: without it a reload that listed the tokens earlier could replace the
    /// table after one that listed later, hiding a just-created token until the next refresh.
    reloading: tokio::sync::Mutex<()>,
}

impl Tokens {
    /// Checks the `Authorization` header value; returns the token's name.
    pub fn authorize(&self, header: Option<&str>, scope: Scope, now_ms: i64) -> Result<Arc<str>, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let table = self.by_hash.read().unwrap_or_else(|e| e.into_inner()).clone();
        let k = table.get(&digest_token(token)).ok_or(AuthError::Invalid)?;
        if k.revoked {
            return Err(AuthError::Revoked);
        }
        if k.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(AuthError::Expired);
        }
        if !k.scopes.contains(&scope) {
            return Err(AuthError::Forbidden(scope));
        }
        Ok(k.name.clone())
    }

    /// Replaces the table with the store's.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        let records = store.list_tokens().await?;
        let map = records
            .into_iter()
            .filter_map(|r| {
                let Some(key) = hex::decode(&r.hash).ok().and_then(|h| <[u8; 32]>::try_from(h).ok()) else {
                    tracing::warn!(token = %r.name, "a stored token hash is not a SHA-256 in hex; the token cannot be used");
                    return None;
                };
                let known = Known {
                    scopes: r.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
                    name: r.name.into(),
                    expires_ms: r.expires_ms,
                    revoked: r.revoked_ms.is_some(),
                };
                Some((key, known))
            })
            .collect();
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(())
    }

    /// Reloads whenever the store's token version changes, until the task is aborted.
    pub async fn keep_fresh(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut seen = None;
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        loop {
            tick.tick().await;
            match store.tokens_version().await {
                Ok(v) if Some(v) != seen => match self.reload(&*store).await {
                    Ok(()) => seen = Some(v),
                    Err(e) => tracing::warn!(error = %e, "reloading tokens failed"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checking the token version failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_unknown_ones_are_refused() {
        assert_eq!(parse_scopes("read, ingest").unwrap(), vec![Scope::Read, Scope::Ingest]);
        assert!(parse_scopes("read,write").unwrap_err().contains("write"));
        assert!(parse_scopes("").is_err());
    }

    #[test]
    fn the_header_must_be_a_bearer_token() {
        let t = Tokens::default();
        assert_eq!(t.authorize(None, Scope::Read, 0), Err(AuthError::Missing));
        assert_eq!(t.authorize(Some("Basic abc"), Scope::Read, 0), Err(AuthError::Missing));
        assert_eq!(t.authorize(Some("Bearer nope"), Scope::Read, 0), Err(AuthError::Invalid));
    }
}
