//! Kafka test harness: a real `tansu` broker on a free loopback port, topics created with
//! rdkafka's admin client, and a producer. No mock broker, no client stub.
//!
//! The broker binary comes from `scripts/ensure-tansu.sh` (installed once when missing, reused
//! when present). `Broker::start()` keeps data in memory; `Broker::start_persistent()` keeps it
//! in a SQLite file so it survives `restart()`. The broker is SIGKILLed when dropped.
//!
//! Known about tansu 0.6: a SIGKILLed group member's partitions are not handed to the surviving
//! members until another member joins (real Kafka does so after `session.timeout.ms`), so kill
//! tests kill *and restart* the consumer, as a supervisor would.
#![allow(dead_code)] // each test uses part of the harness

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tempfile::TempDir;

/// The tansu binary, installed on first use.
pub fn tansu() -> &'static PathBuf {
    static TANSU: OnceLock<PathBuf> = OnceLock::new();
    TANSU.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-tansu.sh");
        let out =
            Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("scripts/ensure-tansu.sh runs");
        assert!(out.status.success(), "scripts/ensure-tansu.sh failed: cannot get a tansu broker");
        PathBuf::from(String::from_utf8(out.stdout).expect("a UTF-8 path").trim())
    })
}

/// A tansu broker on 127.0.0.1, killed on drop.
pub struct Broker {
    pub addr: String,
    port: u16,
    persistent: bool,
    dir: TempDir,
    child: Option<Child>,
    /// Further `tansu broker` arguments (e.g. `--authentication`).
    extra: Vec<String>,
    /// The address the broker tells clients to use, when not its own (a proxy in front of it).
    advertised: Option<String>,
}

impl Broker {
    /// A broker keeping its data in memory (lost when it stops).
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// A broker keeping its data in a SQLite file, so it survives `restart()`.
    pub fn start_persistent() -> Self {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut b = Self {
            addr: format!("127.0.0.1:{port}"),
            port,
            persistent,
            dir,
            child: None,
            extra: Vec::new(),
            advertised: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self.advertised.as_ref().map_or(url.clone(), |a| format!("tcp://{a}"));
        // tansu resolves sqlite://NAME against its working directory.
        let storage = if self.persistent { "sqlite://tansu.db" } else { "memory://tansu/" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("broker log file");
        let child = Command::new(tansu())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", storage])
            .args(&self.extra)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let addr: SocketAddr = self.addr.parse().expect("socket address");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr} within 20 s; see its log");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the broker is gone until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Restarts the broker with `args` added (its storage kept when persistent).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.extra = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// Restarts the broker telling clients to connect to `addr` (a proxy in front of it).
    pub fn restart_advertising(&mut self, addr: &str) {
        self.advertised = Some(addr.to_string());
        self.restart();
    }

    /// Creates a SCRAM-SHA-256 user (`tansu user create`; kept only by a persistent broker).
    pub fn create_scram_user(&self, name: &str, password: &str) {
        let broker = format!("tcp://{}", self.addr);
        let out = Command::new(tansu())
            .args(["user", "create", "--broker", &broker, "--mechanism", "scram256", name, password])
            .output()
            .expect("tansu user create runs");
        assert!(out.status.success(), "tansu user create: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.addr).create().expect("admin client");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &opts)
            .await
            .expect("create_topics request");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// A producer with one request in flight per connection: tansu 0.6's memory engine has
    /// been seen to lose acknowledged records when one partition receives concurrent produce
    /// requests (the high watermark ends below the acknowledged offsets).
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("producer")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Produces `payload` (keyed) and waits for the broker's acknowledgement; panics on failure.
pub async fn produce(producer: &FutureProducer, topic: &str, key: Option<&str>, payload: &[u8]) -> (i32, i64) {
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    let delivery = producer.send(record, Duration::from_secs(30)).await;
    let d = delivery.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    (d.partition, d.offset)
}

/// A topic name unique to this test.
pub fn topic_name(test: &str) -> String {
    format!("{test}-{}", crate::common::rand_suffix())
}
