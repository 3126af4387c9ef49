//! PostgreSQL over TLS, against a cluster these tests start (`common::pg_tls`): it refuses plain
//! connections and presents a certificate for `localhost` signed by a CA of the test's own.
//! Skipped, with the reason printed, only where no PostgreSQL server binaries are installed.

mod common;

use common::certs::{CLIENT_CN, Certs};
use common::pg_tls::TlsCluster;
use common::{TestApp, TestStore};
use jetstream::app::Application;
use jetstream::config::Settings;
use serde_json::json;

fn cluster() -> Option<TlsCluster> {
    match TlsCluster::start() {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// What `jetstream serve --store URL` says when it cannot start.
async fn start_error(url: &str) -> String {
    match Application::build(Settings::default(), url, "127.0.0.1:0").await {
        Ok(_) => panic!("{url} should not connect"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_serves_ingest_and_reads() {
    let Some(pg) = cluster() else { return };
    let ca = pg.certs.ca.display().to_string();
    // `hostaddr` skips the name lookup; the certificate is checked against `localhost`.
    let url = pg.url("postgres", "localhost", &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"));
    let app = TestApp::spawn_on(TestStore::at(url), Settings::default()).await;
    let sold = json!({"event_name": "productSold", "product_id": 3, "no_of_units": 2, "amount": "19.99"});
    let (s, out) = app.ingest(&sold).await;
    assert_eq!((s.as_u16(), &out["accepted"]), (200, &json!(1)), "{out}");
    let (s, sale) = app.get("/api/product/sale/3").await;
    assert_eq!((s.as_u16(), &sale["total"]), (200, &json!(19.99)), "{sale}");
    app.stop().await;

    // A client certificate logs in the user it names (pg_hba `cert`); without it, refused.
    let client = format!(
        "sslmode=verify-full&hostaddr=127.0.0.1&sslrootcert={ca}&sslcert={}&sslkey={}",
        pg.certs.client_cert.display(),
        pg.certs.client_key.display()
    );
    let app = TestApp::spawn_on(TestStore::at(pg.url(CLIENT_CN, "localhost", &client)), Settings::default()).await;
    let (s, sale) = app.get("/api/product/sale/3").await;
    assert_eq!((s.as_u16(), &sale["total"]), (200, &json!(19.99)), "{sale}");
    app.stop().await;
    let msg = start_error(&pg.url(
        CLIENT_CN,
        "localhost",
        &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(msg.contains("certificate"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_a_wrong_host_name_or_no_tls_is_refused_with_a_message_that_says_so() {
    let Some(pg) = cluster() else { return };
    let ca = pg.certs.ca.display().to_string();
    let other = tempfile::tempdir().expect("temp dir");
    let other_ca = Certs::generate(other.path(), &["localhost"]).ca.display().to_string();

    let msg = start_error(&pg.url(
        "postgres",
        "localhost",
        &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .await;
    assert!(msg.contains("certificate verification failed"), "{msg}");
    assert!(msg.contains("not signed by a trusted CA"), "{msg}");

    // Reached by its address, which the certificate (for `localhost`) does not list.
    let msg = start_error(&pg.url("postgres", "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"))).await;
    assert!(msg.contains("certificate verification failed"), "{msg}");
    assert!(msg.contains("not valid for the host name 127.0.0.1"), "{msg}");
    // verify-ca checks the chain only, so the same address is fine.
    let url = pg.url("postgres", "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    Application::build(Settings::default(), &url, "127.0.0.1:0").await.expect("verify-ca connects by address");

    let msg = start_error(&pg.url("postgres", "127.0.0.1", "sslmode=disable")).await;
    assert!(msg.contains("accepts only TLS connections"), "{msg}");

    // `require` encrypts without checking the certificate (libpq's meaning).
    let url = pg.url("postgres", "127.0.0.1", "sslmode=require");
    Application::build(Settings::default(), &url, "127.0.0.1:0").await.expect("require connects");
}
