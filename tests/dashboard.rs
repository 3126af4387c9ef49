//! The built-in dashboard page (issue 15): served from the binary at `/` without a token, every
//! built file of `web/dist/` embedded with its content type, revalidated by ETag. What the page
//! does in a browser is tested by scripts/browser-test.sh.

mod common;

use std::path::Path;

use common::{Backend, TestApp};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_without_a_token() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let r = app.client.get(app.url("/")).send().await.expect("GET /");
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(h[CACHE_CONTROL], "no-cache");
    assert!(h[CONTENT_SECURITY_POLICY].to_str().expect("ascii").contains("script-src 'self'"));
    let body = r.text().await.expect("body");
    assert!(body.contains(r#"name="token""#), "the page has the sign-in input");
    assert!(body.contains("data-exact") || body.contains("data-metric"), "the page carries the figures' attributes");

    // The data still needs a token.
    let (status, _) = app.get_as("/api/v1/metrics/sales_amount?window=1h", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// Every file the build produced is served, with the content type of its extension, and
/// answered 304 when the browser already has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_built_file_is_served_and_revalidated() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    let mut files = Vec::new();
    let mut dirs = vec![dist.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("web/dist is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() { dirs.push(path) } else { files.push(path) }
        }
    }
    assert!(files.len() >= 3, "web/dist holds the page, its script and its styles");
    for file in files {
        let rel = file.strip_prefix(&dist).expect("under dist").to_string_lossy().replace('\\', "/");
        let url_path = if rel == "index.html" { "/".to_string() } else { format!("/{rel}") };
        let r = app.client.get(app.url(&url_path)).send().await.expect("GET asset");
        assert_eq!(r.status(), StatusCode::OK, "{url_path} is served");
        let want = match file.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html",
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            other => panic!("web/dist/{rel}: no content type for {other:?}; add it to src/dashboard.rs"),
        };
        let ct = r.headers()[CONTENT_TYPE].to_str().expect("ascii").to_string();
        assert!(ct.starts_with(want), "{url_path}: {ct}");
        let etag = r.headers()[ETAG].clone();
        let body = r.bytes().await.expect("body");
        assert_eq!(body.as_ref(), std::fs::read(&file).expect("read the built file"), "{url_path} is the built file");

        let again = app.client.get(app.url(&url_path)).header(IF_NONE_MATCH, etag).send().await.expect("GET again");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{url_path} revalidates");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_still_a_json_404() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (status, body) = app.get_as("/assets/nope.js", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());
    app.stop().await;
}
