//! PostgreSQL for tests: a fresh database per test on one server, dropped with its guard.
//!
//! The server is the one at `DATABASE_URL` (any database on it; `scripts/ensure-postgres.sh` prints
//! one), else `postgres://postgres@127.0.0.1:5432/postgres`. Each test gets
//! `CREATE DATABASE jetstream_test_<pid>_<n>_<nanos>`; databases left by a test process that died
//! without unwinding (SIGKILL, abort) are swept by the next run on the same machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PREFIX: &str = "jetstream_test_";

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| DEFAULT_SERVER.to_string())
}

/// `url` with its database (the path) replaced by `db`, keeping the user, host and query.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL is a postgres://… URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |q| &tail[q..]);
    format!("{scheme}://{authority}/{db}{query}")
}

/// A connection to the test server's administrative database.
pub async fn admin_client() -> tokio_postgres::Client {
    admin().await
}

async fn admin() -> tokio_postgres::Client {
    let url = server_url();
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {url} (DATABASE_URL) is needed: {e}; run scripts/ensure-postgres.sh")
    });
    tokio::spawn(async move {
        let _ = conn.await; // ends when the client is dropped
    });
    client
}

/// A database that exists as long as this guard does.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    /// Creates an empty database; returns the guard and the database's URL.
    pub async fn create() -> (Self, String) {
        static N: AtomicU64 = AtomicU64::new(0);
        let client = admin().await;
        sweep_once(&client).await;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("{PREFIX}{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        // Names are generated above (digits and underscores): safe to splice into DDL.
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE for a test");
        let url = with_database(&server_url(), &name);
        (Self { name }, url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code's control (maybe inside a runtime): use a thread of our own.
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async {
                let client = admin().await;
                // FORCE: the store's pool (or a killed server's) may still hold connections.
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("warning: test database {} was not dropped (the next run sweeps it)", self.name);
        }
    }
}

/// Drops databases of test processes on this machine that no longer run.
async fn sweep_once(client: &tokio_postgres::Client) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let url = server_url();
    let local = ["@127.0.0.1", "@localhost", "@[::1]", "://127.0.0.1", "://localhost"].iter().any(|h| url.contains(h));
    if !local {
        return; // a remote server's databases may belong to processes on other machines
    }
    let Ok(rows) = client.query("SELECT datname FROM pg_database WHERE datname LIKE 'jetstream\\_test\\_%'", &[]).await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        // Only names this module makes (so safe to splice into DDL), of processes that are gone.
        let ours = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let pid = name.strip_prefix(PREFIX).and_then(|r| r.split('_').next()).and_then(|p| p.parse::<u32>().ok());
        let gone = pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if ours && gone {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}
