//! A throwaway PostgreSQL cluster that speaks only TLS: `initdb` in a temp dir, its own loopback
//! port, `ssl=on` with a CA and server certificate the test generates (for `localhost` only), and
//! a `pg_hba.conf` whose TCP lines are all `hostssl` (a plain connection is refused). The user
//! [`CLIENT_CN`] must log in with the client certificate (`cert`); others are trusted. Stopped and
//! deleted on drop.
//!
//! Runs as the `postgres` account when the tests run as root (initdb refuses root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::certs::{CLIENT_CN, Certs};

pub struct TlsCluster {
    pub port: u16,
    pub certs: Certs,
    pub dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    _tmp: TempDir,
}

/// The newest PostgreSQL server binaries: `/usr/lib/postgresql/*/bin`, else `initdb` on the PATH.
fn server_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // Versions compare as numbers (10 after 9).
    dirs.sort_by_key(|d| d.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    dirs.into_iter().rev().find(|d| d.join("initdb").exists()).or_else(|| {
        let out = Command::new("sh").args(["-c", "command -v initdb"]).output().ok()?;
        let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        path.parent().map(Path::to_path_buf).filter(|_| out.status.success())
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl TlsCluster {
    /// Starts the cluster; `Err(reason)` only when no PostgreSQL server binaries are installed.
    pub fn start() -> Result<Self, String> {
        let bin = server_bin().ok_or("initdb not found (install the postgresql server package)")?;
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir(dir.join("certs")).expect("certs dir");
        std::fs::create_dir(dir.join("sock")).expect("socket dir");
        let certs = Certs::generate(&dir.join("certs"), &["localhost"]);
        let as_postgres = is_root();
        let mut me = Self { port: 0, certs, dir: dir.clone(), bin, as_postgres, _tmp: tmp };
        if as_postgres {
            let _ = Command::new("useradd").args(["--system", "--no-create-home", "postgres"]).status();
            me.run_ok("chown", &["-R", "postgres", &me.path("")]);
        }
        me.pg("initdb", &["-D", &me.path("data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]);
        let hba = format!(
            "local all all trust\n\
             hostssl all {CLIENT_CN} 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 trust\n"
        );
        std::fs::write(dir.join("data/pg_hba.conf"), hba).expect("write pg_hba.conf");
        for attempt in 0..3 {
            me.port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let conf = format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n\
                 listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\n",
                me.certs.cert.display(),
                me.certs.key.display(),
                me.certs.ca.display(),
                me.port,
                me.path("sock"),
            );
            std::fs::write(dir.join("data/postgresql.auto.conf"), conf).expect("write postgresql.auto.conf");
            if me.as_postgres {
                me.run_ok("chown", &["-R", "postgres", &me.path("")]);
                me.run_ok("chmod", &["600", &me.certs.key.display().to_string()]);
            }
            let started = me.pg_status(
                "pg_ctl",
                &["start", "-w", "-t", "60", "-D", &me.path("data"), "-l", &me.path("postgres.log")],
            );
            if started {
                me.psql(&format!("CREATE ROLE {CLIENT_CN} LOGIN SUPERUSER"));
                return Ok(me);
            }
            eprintln!("TLS cluster: start attempt {attempt} failed (port {} taken?)", me.port);
        }
        let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
        panic!("the TLS PostgreSQL cluster did not start:\n{log}");
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// `postgres://USER@HOST:PORT/postgres?QUERY`.
    pub fn url(&self, user: &str, host: &str, query: &str) -> String {
        format!("postgres://{user}@{host}:{}/postgres?{query}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn pg_status(&self, program: &str, args: &[&str]) -> bool {
        let out = self.command(program).args(args).output().expect("PostgreSQL binary runs");
        if !out.status.success() {
            eprintln!("{program}: {}", String::from_utf8_lossy(&out.stderr));
        }
        out.status.success()
    }

    fn pg(&self, program: &str, args: &[&str]) {
        assert!(self.pg_status(program, args), "{program} {args:?} failed");
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        assert!(Command::new(program).args(args).status().is_ok_and(|s| s.success()), "{program} {args:?}");
    }

    /// Runs SQL over the Unix socket (the only non-TLS way in).
    pub fn psql(&self, sql: &str) {
        let port = self.port.to_string();
        self.pg("psql", &["-h", &self.path("sock"), "-p", &port, "-U", "postgres", "-qAtc", sql]);
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["stop", "-m", "immediate", "-D", &self.path("data")]).output();
        // The temp dir (owned by `postgres` now) is removed by root; give the server a moment to go.
        std::thread::sleep(Duration::from_millis(100));
    }
}
