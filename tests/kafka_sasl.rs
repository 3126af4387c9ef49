//! Kafka with SASL/SCRAM-SHA-256, against tansu started with `--authentication`: the real binary,
//! configured the way the README's "Deploying" section says (JETSTREAM_KAFKA_* variables).
//! The right credentials consume (events readable through the API, `jetstream send` produces);
//! a wrong password is reported on `/readyz` and in the log, and the password itself is never
//! shown: not in `/readyz`, the log, the errors or `--help`.
//!
//! TLS: tansu 0.6 serves plain TCP only (it builds a TLS acceptor from `--cert`/`--key` and never
//! uses it), so the TLS test puts a TLS-terminating proxy in front of it and has the broker
//! advertise the proxy's address: every client connection is then SASL over TLS.
//!
//! tansu keeps users only in a persistent storage engine, and creating one needs a broker that
//! does not ask for authentication yet: so the broker starts without it, gets its user and topic,
//! and is restarted on the same file with `--authentication`.

mod common;
#[path = "common/kafka.rs"]
mod kafka_harness;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{jetstream_bin, run_cli};
use kafka_harness::{Broker, produce, topic_name};
use serde_json::{Value, json};

const USER: &str = "jetstream-app";
const PASSWORD: &str = "pw-Sx7qLrT2";
const WAIT: Duration = Duration::from_secs(45);

/// The variables that configure SCRAM for every Kafka client Jetstream makes.
fn sasl_env(password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("JETSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT".into()),
        ("JETSTREAM_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-256".into()),
        ("JETSTREAM_KAFKA_SASL_USERNAME", USER.into()),
        ("JETSTREAM_KAFKA_SASL_PASSWORD", password.into()),
    ]
}

/// `jetstream serve` with `env`, its log (JETSTREAM_LOG=info) kept in a file.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    fn start(store: &str, brokers: &str, topic: &str, env: &[(&str, String)], log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(jetstream_bin())
            .args(["serve", "--store", store, "--listen", "127.0.0.1:0", "--kafka-brokers", brokers])
            .args(["--kafka-topic", topic, "--kafka-group", &format!("g-{topic}")])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("JETSTREAM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("jetstream starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("the server exited:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            };
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, base: format!("http://{addr}"), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `done` accepts the answer; panics after [`WAIT`] with the last one.
    async fn wait_for(&self, path: &str, token: Option<&str>, done: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (s, body) = self.get(path, token).await;
            if done(s, &body) {
                return body;
            }
            assert!(Instant::now() < deadline, "timed out on {path}: {s} {body}\nlog:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A persistent broker with the user and `topic`, restarted with authentication on.
async fn authenticating_broker(topic: &str) -> Broker {
    let mut broker = Broker::start_persistent();
    broker.create_topic(topic, 2).await;
    broker.create_scram_user(USER, PASSWORD);
    // Records produced before authentication is on, consumed after it.
    let producer = broker.producer();
    let sale = json!({"event_name": "productSold", "product_id": 3, "no_of_units": 1, "amount": "2.50"});
    produce(&producer, topic, Some("3"), sale.to_string().as_bytes()).await;
    drop(producer);
    broker.restart_with(&["--authentication"]);
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_credentials_from_the_environment_consume_and_produce() {
    let topic = topic_name("sasl");
    let broker = authenticating_broker(&topic).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}/js.db", dir.path().display());
    let (code, token, err) = run_cli(&["token", "create", "--store", &store, "--name", "reader", "--scope", "read"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();

    let server = Server::start(&store, &broker.addr, &topic, &sasl_env(PASSWORD), dir.path().join("serve.log"));
    server.wait_for("/readyz", None, |s, _| s == 200).await;
    server.wait_for("/api/product/sale/3", Some(&token), |s, b| s == 200 && b["total"] == json!(2.5)).await;

    // `jetstream send` authenticates with the same variables.
    let sale = json!({"event_name": "productSold", "product_id": 3, "no_of_units": 1, "amount": "1.25"}).to_string();
    let out = Command::new(jetstream_bin())
        .args(["send", "--brokers", &broker.addr, "--topic", &topic, &sale])
        .envs(sasl_env(PASSWORD))
        .output()
        .expect("jetstream send runs");
    assert!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
    server.wait_for("/api/product/sale/3", Some(&token), |s, b| s == 200 && b["total"] == json!(3.75)).await;

    let log = server.log();
    assert!(!log.contains(PASSWORD), "the password is in the log:\n{log}");
    drop(server);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_on_readyz_and_in_the_log_without_the_password() {
    let topic = topic_name("sasl-wrong");
    let broker = authenticating_broker(&topic).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}/js.db", dir.path().display());
    let wrong = "wrong-Qz81vKp";
    let server = Server::start(&store, &broker.addr, &topic, &sasl_env(wrong), dir.path().join("serve.log"));
    let ready = server
        .wait_for("/readyz", None, |_, b| {
            b["kafka"]["detail"].as_str().is_some_and(|d| d.contains("authentication failed"))
        })
        .await;
    assert_eq!(ready["ready"], json!(false), "{ready}");
    let text = ready.to_string();
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    let log = server.log();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains(wrong), "the password is in the log:\n{log}");

    // Nor does --help show a secret taken from the environment.
    let out = Command::new(jetstream_bin())
        .args(["serve", "--help"])
        .envs(sasl_env(wrong))
        .output()
        .expect("jetstream --help runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("JETSTREAM_KAFKA_SASL_PASSWORD") && !help.contains(wrong), "{help}");
}

/// A TLS-terminating proxy on a free loopback port in front of `upstream` (tansu 0.6 serves plain
/// TCP only): each connection's TLS is ended here with `certs` and its bytes copied both ways.
async fn tls_proxy(certs: &common::certs::Certs, upstream: String) -> String {
    let config = jetstream::server::tls::load_config(&certs.cert, &certs.key).expect("proxy TLS config");
    let mut config = (*config).clone();
    config.alpn_protocols.clear(); // Kafka speaks no ALPN protocol
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
    let addr = listener.local_addr().expect("proxy address").to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_over_tls_through_a_tls_terminating_proxy_consumes_and_a_wrong_ca_is_reported() {
    let topic = topic_name("sasl-ssl");
    let mut broker = authenticating_broker(&topic).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = common::certs::Certs::generate(dir.path(), &["127.0.0.1"]);
    let proxy = tls_proxy(&certs, broker.addr.clone()).await;
    // Clients are sent to the proxy by the broker's metadata, so every connection is TLS.
    broker.restart_advertising(&proxy);
    let store = format!("sqlite://{}/js.db", dir.path().display());
    let (code, token, err) = run_cli(&["token", "create", "--store", &store, "--name", "reader", "--scope", "read"]);
    assert_eq!(code, 0, "{err}");
    let mut env = sasl_env(PASSWORD);
    env[0].1 = "SASL_SSL".into();
    env.push(("JETSTREAM_KAFKA_SSL_CA_LOCATION", certs.ca.display().to_string()));
    let server = Server::start(&store, &proxy, &topic, &env, dir.path().join("serve.log"));
    server.wait_for("/api/product/sale/3", Some(token.trim()), |s, b| s == 200 && b["total"] == json!(2.5)).await;

    // Without the CA, the broker's certificate is refused, and /readyz says why.
    env.pop();
    let other = tempfile::tempdir().expect("temp dir");
    let other_ca = common::certs::Certs::generate(other.path(), &["127.0.0.1"]).ca;
    env.push(("JETSTREAM_KAFKA_SSL_CA_LOCATION", other_ca.display().to_string()));
    let store2 = format!("sqlite://{}/js2.db", dir.path().display());
    let refused = Server::start(&store2, &proxy, &topic, &env, dir.path().join("serve2.log"));
    let ready = refused
        .wait_for("/readyz", None, |_, b| {
            b["kafka"]["detail"].as_str().is_some_and(|d| d.contains("TLS to the broker failed"))
        })
        .await;
    let detail = ready["kafka"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("certificate verify failed") && detail.contains("ssl.ca.location"), "{ready}");
    assert!(!ready.to_string().contains(PASSWORD), "{ready}");
}
