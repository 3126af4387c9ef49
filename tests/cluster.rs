//! Deployment features of the fleet, through the real binary: HTTPS with `serve --tls-cert …
//! --tls-key …` (a self-signed certificate made with the `openssl` CLI, requests made with
//! `curl`, which checks the certificate against it).
//!
//! The fleet's failure test (broker, PostgreSQL, two consumers, two API instances, nginx, SIGKILLs)
//! is `scripts/cluster-test.sh`: it needs nginx and takes about a minute.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_jetstream");

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate, key) paths.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI is needed for the TLS test");
    assert!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// The server process, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_tls(store: &str, cert: &Path, key: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--store", store, "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env_remove("JETSTREAM_KAFKA_BROKERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the jetstream binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("reading the server's first line");
    let addr = line.trim().strip_prefix("listening on https://").map(str::to_string);
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("expected \"listening on https://…\", got {line:?}");
    };
    Server { child, addr }
}

/// `curl` against the server, trusting only `ca`: (HTTP status, body); status 0 when no HTTP
/// answer came (refused, or a TLS failure).
fn curl(url: &str, ca: &Path, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"]).arg(ca).arg(url);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().expect("curl is needed for the TLS test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn serve_with_a_certificate_answers_https_and_not_plain_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(dir.path());
    let store = format!("sqlite://{}/jetstream.db", dir.path().display());
    let token = Command::new(BIN)
        .args(["token", "create", "--store", &store, "--name", "tls", "--scope", "read"])
        .output()
        .expect("token create runs");
    assert!(token.status.success(), "token create: {}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8(token.stdout).expect("a UTF-8 token").trim().to_string();

    let server = serve_tls(&store, &cert, &key);
    let base = format!("https://{}", server.addr);

    let (status, body) = curl(&format!("{base}/healthz"), &cert, None);
    assert_eq!(status, 200, "GET /healthz over HTTPS: {body}");

    // Through auth and the store: a product with no events is a 404 with the API's JSON message.
    let (status, body) = curl(&format!("{base}/api/product/sale/7"), &cert, Some(&token));
    assert_eq!(status, 404, "GET /api/product/sale/7 over HTTPS: {body}");
    assert!(body.contains("No product with id 7"), "unexpected body: {body}");
    let (status, _) = curl(&format!("{base}/api/product/sale/7"), &cert, None);
    assert_eq!(status, 401, "no token over HTTPS");

    // The port speaks only TLS: a plain HTTP request gets no HTTP answer.
    let (status, body) = curl(&format!("http://{}/healthz", server.addr), &cert, None);
    assert_eq!(status, 0, "plain HTTP on the TLS port answered: {body}");
}

#[test]
fn a_key_that_is_not_pem_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, _) = self_signed(dir.path());
    let bad_key = dir.path().join("bad.pem");
    std::fs::write(&bad_key, "not a key").expect("write the bad key");
    let out = Command::new(BIN)
        .args(["serve", "--store", &format!("sqlite://{}/j.db", dir.path().display()), "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&bad_key)
        .env_remove("JETSTREAM_KAFKA_BROKERS")
        .output()
        .expect("the jetstream binary runs");
    assert_eq!(out.status.code(), Some(2), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("private key"), "the error names the key: {stderr}");
}
