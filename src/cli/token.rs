//! `jetstream token …`: create, list and revoke API tokens.

use super::args::TokenCommand;
use super::error::UsageError;
use super::usage::open_store;
use crate::auth::{create_token, parse_scopes};
use crate::clock::now_ms;
use std::time::Duration;

use crate::config::{MAX_DURATION, parse_duration};

pub(super) async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { store, name, scope, expires_in } => {
            let scopes = parse_scopes(&scope).map_err(UsageError)?;
            let expires = expires_in.as_deref().map(parse_duration).transpose().map_err(UsageError)?;
            if expires.is_some_and(|d| d < Duration::from_secs(1) || d > MAX_DURATION) {
                return Err(UsageError("--expires-in must lie between 1s and 100 years".into()).into());
            }
            if name.trim().is_empty() || name.len() > 128 {
                return Err(UsageError("a token name must be 1 to 128 characters".into()).into());
            }
            let store = open_store(&store).await?;
            let secret = create_token(&*store, &name, &scopes, expires, now_ms()).await?;
            println!("{secret}");
        }
        TokenCommand::List { store: args, json } => {
            let store = open_store(&args).await?;
            // On stderr: stdout stays the table (or JSON) for scripts.
            eprintln!("tokens in {}", crate::storage::redact(&args.store));
            let now = now_ms();
            let tokens = store.list_tokens().await?;
            let status = |t: &crate::storage::TokenRecord| match (t.revoked_ms, t.expires_ms) {
                (Some(_), _) => "revoked",
                (None, Some(e)) if e <= now => "expired",
                _ => "active",
            };
            if json {
                let out: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({"name": t.name, "scopes": t.scopes, "created_ms": t.created_ms,
                                           "expires_ms": t.expires_ms, "status": status(t)})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(out));
                return Ok(());
            }
            println!("{:<24} {:<20} {:<20} {:<20} STATUS", "NAME", "SCOPES", "CREATED", "EXPIRES");
            for t in tokens {
                let time = |ms: i64| {
                    chrono::DateTime::from_timestamp_millis(ms)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default()
                };
                let status = status(&t);
                let expires = t.expires_ms.map(time).unwrap_or_else(|| "never".into());
                println!(
                    "{:<24} {:<20} {:<20} {:<20} {status}",
                    t.name,
                    t.scopes.join(","),
                    time(t.created_ms),
                    expires
                );
            }
        }
        TokenCommand::Revoke { store, name } => {
            let store = open_store(&store).await?;
            if !store.revoke_token(&name, now_ms()).await? {
                return Err(UsageError(format!("no active token named {name:?}")).into());
            }
            eprintln!("revoked {name}");
        }
        TokenCommand::Delete { store, name } => {
            let store = open_store(&store).await?;
            if !store.delete_token(&name).await? {
                return Err(UsageError(format!("no token named {name:?}")).into());
            }
            eprintln!("deleted {name}");
        }
    }
    Ok(())
}
