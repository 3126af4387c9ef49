//! Store URLs, parsed once: the scheme picks the backend (`sqlite://PATH`, `postgres://…` or
//! `postgresql://…`), the rest is checked with a precise message, and the URL is only ever shown
//! with its password masked (it ends up in errors and logs).
//!
//! TLS to PostgreSQL takes libpq's parameters: `sslmode` (`disable`, `prefer` — the default —,
//! `require`, `verify-ca`, `verify-full`), `sslrootcert=FILE` (or `system`), `sslcert=FILE` and
//! `sslkey=FILE`. tokio-postgres knows only the first three modes and none of the files, so they
//! are taken out of the URL here and applied by `postgres::tls`.

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
    Postgres { config: Box<tokio_postgres::Config>, tls: PgTls, redacted: String },
}

/// How a PostgreSQL connection uses TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS, and the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

/// The TLS parameters of a PostgreSQL URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// PEM file of the CA certificates to trust, or `system` for the system's store.
    pub root_cert: Option<String>,
    /// PEM client certificate chain and its key, for certificate authentication.
    pub client_cert: Option<(String, String)>,
}

impl PgTls {
    /// Takes the TLS parameters out of `url`'s query; returns them and the URL without them.
    fn take(url: &str) -> Result<(Self, String), String> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((Self::default(), url.to_string()));
        };
        let (mut tls, mut rest) = (Self::default(), Vec::new());
        let (mut cert, mut key) = (None, None);
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || -> Result<String, String> {
                let decoded: Vec<(String, String)> =
                    serde_urlencoded::from_str(&format!("v={v}")).map_err(|e| format!("{k}: {e}"))?;
                Ok(decoded.into_iter().next().map(|(_, v)| v).unwrap_or_default())
            };
            match k {
                "sslmode" => {
                    tls.mode = match value()?.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                            ));
                        }
                    }
                }
                "sslrootcert" => tls.root_cert = Some(value()?),
                "sslcert" => cert = Some(value()?),
                "sslkey" => key = Some(value()?),
                "sslpassword" => {
                    return Err("an encrypted client key (sslpassword) is not supported: give sslkey a \
                                decrypted key (openssl pkey -in KEY -out KEY.plain)"
                        .into());
                }
                _ => rest.push(pair),
            }
        }
        tls.client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("sslcert and sslkey go together: give both or neither".into()),
        };
        if tls.mode == SslMode::Disable && (tls.root_cert.is_some() || tls.client_cert.is_some()) {
            return Err("sslmode=disable with sslrootcert/sslcert: the files would never be used".into());
        }
        let url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
        Ok((tls, url))
    }
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
        let (tls, stripped) = PgTls::take(url).map_err(|why| bad(&why))?;
        let mut config = tokio_postgres::Config::from_str(&stripped).map_err(|e| {
            bad(&format!(
                "not a PostgreSQL URL ({}); special characters in a password must be percent-encoded",
                redact(&e.to_string())
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(bad("no host"));
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
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
        Ok(StoreUrl::Postgres { config: Box::new(config), tls, redacted: redact(url) })
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
            ("postgres://h/db?sslmode=allow", "not one of disable, prefer, require, verify-ca, verify-full"),
            ("postgres://h/db?sslmode=verify-full&sslcert=c.pem", "sslcert and sslkey go together"),
            ("postgres://h/db?sslmode=disable&sslrootcert=ca.pem", "would never be used"),
            ("postgres://h/db?sslcert=c.pem&sslkey=k.pem&sslpassword=x", "encrypted client key"),
        ] {
            match parse(bad) {
                Err(StoreError::BadUrl(m)) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad} should be refused: {other:?}"),
            }
        }
    }

    #[test]
    fn libpq_tls_parameters_are_taken_out_of_the_url() {
        let Ok(StoreUrl::Postgres { config, tls, redacted }) =
            parse("postgres://u@db/js?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3")
        else {
            panic!("a verify-full URL parses")
        };
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert!(redacted.contains("sslmode=verify-full"), "{redacted}");
        let Ok(StoreUrl::Postgres { tls, config, .. }) =
            parse("postgres://u@db/js?sslmode=require&sslcert=c.pem&sslkey=k.pem")
        else {
            panic!("a client certificate URL parses")
        };
        assert_eq!(tls.client_cert, Some(("c.pem".to_string(), "k.pem".to_string())));
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let Ok(StoreUrl::Postgres { tls, .. }) = parse("postgres://u@db/js") else { panic!("a plain URL parses") };
        assert_eq!(tls, PgTls::default());
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
