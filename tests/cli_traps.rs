//! The command line without traps (issue 13, points 6 and 8): usage errors exit 2 with the form
//! to use, a busy port and an unreachable broker are said plainly and quickly.

mod common;

use std::time::{Duration, Instant};

use common::run_cli;

#[test]
fn a_bare_port_for_listen_is_a_usage_error_with_the_form_to_use() {
    let (code, _, err) = run_cli(&["serve", "--listen", "8080"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("HOST:PORT") && err.contains("127.0.0.1:8080"), "{err}");
}

#[test]
fn help_never_shows_a_password_taken_from_the_environment() {
    let out = std::process::Command::new(common::jetstream_bin())
        .args(["serve", "--help"])
        .env("JETSTREAM_STORE", "postgres://app:pw-Hx81@db/js")
        .output()
        .expect("jetstream runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("JETSTREAM_STORE") && !help.contains("pw-Hx81"), "{help}");
}

#[test]
fn a_sqlite_path_with_several_missing_directories_is_refused_not_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let typo = dir.path().join("dtaa/jetstream");
    let store = format!("sqlite://{}/js.db", typo.display());
    let (code, _, err) = run_cli(&["token", "create", "--store", &store, "--name", "t"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("dtaa does not exist"), "{err}");
    assert!(!dir.path().join("dtaa").exists(), "nothing is created");
    // The file's own directory alone (like the default ./data) is still created.
    let store = format!("sqlite://{}/data/js.db", dir.path().display());
    let (code, _, err) = run_cli(&["token", "create", "--store", &store, "--name", "t"]);
    assert_eq!(code, 0, "{err}");
    // `token list` says which store it read, and speaks JSON for scripts.
    let (code, out, err) = run_cli(&["token", "list", "--store", &store, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("tokens in {store}")), "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (&list[0]["name"], &list[0]["status"]),
        (&serde_json::json!("t"), &serde_json::json!("active")),
        "{list}"
    );
    // `token delete` removes it; a second time there is nothing to delete (a usage error).
    let (code, _, err) = run_cli(&["token", "delete", "--store", &store, "t"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(&["token", "delete", "--store", &store, "t"]);
    assert_eq!(code, 2, "{err}");
    let (_, out, _) = run_cli(&["token", "list", "--store", &store, "--json"]);
    assert_eq!(out.trim(), "[]");
}

#[test]
fn a_busy_port_is_explained() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}/js.db", dir.path().display());
    let (code, _, err) = run_cli(&["serve", "--store", &store, "--listen", &addr]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{addr} is already in use")) && err.contains("--listen"), "{err}");
}

#[test]
fn send_without_a_broker_says_so_within_its_timeout_without_a_flood_of_lines() {
    let started = Instant::now();
    let (code, _, err) = run_cli(&["send", "--brokers", "127.0.0.1:1", "--timeout", "2s", r#"{"event":"x"}"#]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach Kafka at 127.0.0.1:1 within 2s"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.lines().count() < 20, "{} lines:\n{err}", err.lines().count());
}

#[test]
fn a_man_page_is_printed() {
    let (code, out, err) = run_cli(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".TH jetstream"), "{}", &out[..out.len().min(300)]);
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [("bash", "_jetstream()"), ("zsh", "#compdef jetstream"), ("fish", "complete -c jetstream")]
    {
        let (code, out, err) = run_cli(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker) && out.contains("check-config"), "{shell}: {}", &out[..out.len().min(300)]);
    }
}
