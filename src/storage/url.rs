//! Store URLs, parsed once: the scheme picks the backend (`sqlite://PATH`, `postgres://…` or
//! `postgresql://…`), the rest is checked with a precise message, and the URL is only ever shown
//! with its password masked (it ends up in errors and logs).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::StoreError;

/// A checked store URL.
#[derive(Clone)]
pub enum StoreUrl {
    /// The SQLite database file.
    Sqlite { path: String },
    /// A PostgreSQL connection (libpq-style URL, parsed by tokio-postgres).
    Postgres { config: Box<tokio_postgres::Config>, redacted: String },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::BadUrl(format!("{}: {why}", redact(url)));
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("the SQLite file's path is missing (sqlite://PATH)"));
            }
            return Ok(StoreUrl::Sqlite { path: path.to_string() });
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(
                "use sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (postgresql:// too)",
            ));
        }
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            bad(&format!(
                "not a PostgreSQL URL ({}); special characters in a password must be percent-encoded",
                redact(&e.to_string())
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(bad("no host"));
        }
        // Without TLS support compiled in, `sslmode=require` could never connect: say so up front.
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(bad("sslmode=require is not supported by this build"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("jetstream");
        }
        // A statement or a lock wait never stalls a request for long: past these it fails (and
        // is answered 503), unless the URL's `options` say otherwise.
        let mut options = config.get_options().unwrap_or_default().to_string();
        for (setting, value) in [("statement_timeout", "30s"), ("lock_timeout", "5s")] {
            if !options.contains(setting) {
                options.push_str(&format!(" -c {setting}={value}"));
            }
        }
        config.options(options.trim());
        Ok(StoreUrl::Postgres { config: Box::new(config), redacted: redact(url) })
    }

    /// The URL with its password masked.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Sqlite { path } => format!("sqlite://{path}"),
            StoreUrl::Postgres { redacted, .. } => redacted.clone(),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

/// `url` with its password masked, wherever it is: in the user info (everything between the
/// user's `:` and the last `@`, so a password holding `/`, `?` or `@` is masked whole) and in
/// `password=`/`sslpassword=` query parameters.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let mut out = String::with_capacity(url.len());
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    let rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    // Query parameters named like a password, anywhere after a `?` or `&`.
    let mut tail = rest;
    while let Some(i) = tail.find(['?', '&']) {
        out.push_str(&tail[..=i]);
        tail = &tail[i + 1..];
        let key_end = tail.find('=').unwrap_or(tail.len());
        let key = &tail[..key_end];
        if key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword") {
            out.push_str(key);
            out.push_str("=***");
            tail = &tail[tail.find('&').unwrap_or(tail.len())..];
        }
    }
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        StoreUrl::parse(url)
    }

    #[test]
    fn urls_are_checked_before_connecting() {
        assert!(matches!(parse("sqlite://./data/js.db"), Ok(StoreUrl::Sqlite { .. })));
        assert!(parse("postgres://postgres@127.0.0.1:5432/jetstream").is_ok());
        assert!(parse("postgresql://u:p@db.internal/js?connect_timeout=3").is_ok());
        assert!(parse("postgres://127.0.0.1/db?options=-csearch_path%3Dtenant").is_ok());
        for (bad, why) in [
            ("sqlite://", "path is missing"),
            ("postgres://", "no host"),
            ("postgres://h/db?no_such_option=1", "not a PostgreSQL URL"),
            ("mysql://h/db", "use sqlite://PATH or postgres://"),
            ("postgres://h:notaport/db", "not a PostgreSQL URL"),
        ] {
            match parse(bad) {
                Err(StoreError::BadUrl(m)) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad} should be refused: {other:?}"),
            }
        }
    }

    #[test]
    fn passwords_never_reach_error_messages() {
        let msg = parse("postgres://app:s3cr%40t@db:5432/js?bogus=1").expect_err("bad option").to_string();
        assert!(!msg.contains("s3cr"), "{msg}");
        assert!(msg.contains("postgres://app:***@db:5432/js?bogus=1"), "{msg}");
        assert_eq!(redact("postgres://app@db/js"), "postgres://app@db/js");
        assert_eq!(redact("postgresql://u:p@h1,h2/js"), "postgresql://u:***@h1,h2/js");
        // A password holding / ? or @, unencoded; and one given as a query parameter.
        assert_eq!(redact("postgres://u:pa/ss?x@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://h/db?user=u&password=hunter2&sslmode=disable"),
            "postgres://h/db?user=u&password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://h/db?PASSWORD=x"), "postgres://h/db?PASSWORD=***");
        for url in ["postgres://u:pa/ss?x@h/db", "postgres://h/db?password=hunter2&bogus=1"] {
            let msg = parse(url).map(|u| u.to_string()).unwrap_or_else(|e| e.to_string());
            assert!(!msg.contains("pa/ss") && !msg.contains("hunter2"), "{msg}");
        }
    }
}
