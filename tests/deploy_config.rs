//! Configuration that cannot mislead (issue 13, points 3–5), through the front door: the README's
//! sample file keeps the seed endpoints working, `check-config` reports every problem in one run
//! and connects to the store, `config show` masks secrets, and NDJSON sent as JSON gets a hint.

mod common;

use std::process::Command;

use common::{Backend, TestApp, TestStore, jetstream_bin, run_cli};
use jetstream::config::Settings;
use serde_json::json;

/// The sample configuration in README.md's "Configuration" section, as printed there.
fn readme_sample() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("```toml\n[ingest]").expect("the README's sample configuration") + "```toml\n".len();
    let len = readme[start..].find("```").expect("the sample's end");
    readme[start..start + len].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sample_config_keeps_the_seed_endpoints_working() {
    let settings = Settings::parse(&readme_sample()).expect("the README's sample is valid");
    let app = TestApp::spawn_with(Backend::Sqlite, settings).await;
    let (s, out) = app
        .ingest(&json!([
            {"event_name": "productSold", "product_id": 3, "no_of_units": 2, "amount": "10.50"},
            {"event_name": "productRated", "product_id": 3, "rating": 8},
        ]))
        .await;
    assert_eq!((s.as_u16(), &out["accepted"]), (200, &json!(2)), "{out}");
    let (s, sale) = app.get("/api/product/sale/3").await;
    assert_eq!((s.as_u16(), &sale["total"]), (200, &json!(10.5)), "{sale}");
    // The file's own `rating` (max 10) replaced the built-in one (max 5).
    let (s, rating) = app.get("/api/product/rating/3").await;
    assert_eq!((s.as_u16(), &rating["average_rating"]), (200, &json!(8)), "{rating}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_builtins_a_seed_endpoint_names_the_metric_that_is_not_configured() {
    let file = "builtins = false\n[[metrics]]\nname = \"events\"\nevent = \"*\"\naggregation = \"count\"\n";
    let app = TestApp::spawn_with(Backend::Sqlite, Settings::parse(file).expect("valid")).await;
    let (s, out) = app.get("/api/product/sale/3").await;
    assert_eq!(s.as_u16(), 501, "{out}");
    assert!(out["message"].as_str().is_some_and(|m| m.contains("sales_amount")), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_every_problem_in_one_run_and_a_missing_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[ingest]\nmax_body_bytes = \"big\"\n[kafka]\nbrokerz = \"x\"\n[[metrics]]\nname = \"m\"\naggregation = \"sum\"\n\
         [api]\nsales_window = \"soon\"\n",
    )
    .expect("write the file");
    let url = common::pg::with_database(&common::pg::server_url(), "jetstream_no_such_database");
    let (code, out, err) = run_cli(&["check-config", "--config", &file.display().to_string(), "--store", &url]);
    assert_eq!(code, 2, "{out}{err}");
    for part in ["[ingest]", "brokerz", "[[metrics]] \"m\"", "[api]", "jetstream_no_such_database\" does not exist"] {
        assert!(err.contains(part), "{part} missing from:\n{err}");
    }
    assert!(!out.contains("configuration ok"), "{out}");

    // A valid file over an undeclared event: ok, with a warning; and the store answers.
    let store = TestStore::fresh(Backend::Postgres).await;
    std::fs::write(&file, "[[metrics]]\nname = \"n\"\nevent = \"productSould\"\naggregation = \"count\"\n")
        .expect("write");
    let (code, out, err) = run_cli(&["check-config", "--config", &file.display().to_string(), "--store", &store.url]);
    assert_eq!((code, out.trim()), (0, "configuration ok"), "{err}");
    assert!(err.contains("warning: metric \"n\" folds event \"productSould\""), "{err}");
}

#[test]
fn config_show_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("js.toml");
    std::fs::write(&file, "[kafka.properties]\n\"sasl.username\" = \"app\"\n\"sasl.password\" = \"file-secret-1\"\n")
        .expect("write");
    let out = Command::new(jetstream_bin())
        .args(["config", "show", "--config", &file.display().to_string()])
        .args(["--store", "postgres://app:db-secret-2@db.internal/js?sslmode=verify-full"])
        .env("JETSTREAM_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512")
        .env("JETSTREAM_KAFKA_SSL_KEY_PASSWORD", "env-secret-3")
        .output()
        .expect("jetstream config show runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for secret in ["file-secret-1", "db-secret-2", "env-secret-3"] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    for part in
        ["\"sasl.mechanisms\" = \"SCRAM-SHA-512\"", "\"sasl.password\" = \"***\"", "postgres://app:***@db.internal"]
    {
        assert!(shown.contains(part), "{part} missing:\n{shown}");
    }
    // The built-in metrics are part of the effective configuration.
    assert!(shown.contains("name = \"sales_amount\""), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_sent_as_json_gets_a_hint_to_set_the_content_type() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let sold = json!({"event_name": "productSold", "product_id": 1, "no_of_units": 1, "amount": 1});
    let body = format!("{sold}\n{sold}\n");
    let r = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let (s, out) = common::json_of(r).await;
    assert_eq!(s.as_u16(), 400, "{out}");
    let msg = out["message"].as_str().unwrap_or_default();
    assert!(msg.contains("Content-Type: application/x-ndjson"), "{out}");
    app.stop().await;
}
