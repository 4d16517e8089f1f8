//! The web client (`web/`, served at `/`) in a real browser: the
//! Playwright test in `tests/web/` drives Debian's chromium through
//! `playwright-core` (pinned by its `package-lock.json`) against a fresh
//! `chat-server --dev`. It needs Node.js 20, `/usr/bin/chromium` (or
//! `CHROMIUM`) and the packages (`npm ci` there; `.ci/run` installs both).
//! Screenshots land in the test's target directory.

mod common;

use std::path::PathBuf;

use common::*;

/// Crisis phrases and the resources the sender is shown.
const CRISIS: &str = "[crisis]
phrases = [\"want to die\"]
responders = [\"web-counselor\"]
resources = [{ title = \"Crisis line\", url = \"https://example.org/help\", phone = \"988\" }]
";

#[tokio::test]
async fn the_web_client_works_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let Some(dir) = node_tests("web", "playwright-core", &[&chromium]) else {
        return;
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let server = Server::start_dev_with_config(CRISIS).await;
    let shots_dir = shots.to_string_lossy();
    let env = [
        ("SCREENSHOT_DIR", &*shots_dir),
        ("CHROMIUM", chromium.as_str()),
    ];
    node_test(&dir, "browser.test.mjs", &server, &env).await;
    eprintln!("screenshots: {}", shots.display());
}

#[tokio::test]
async fn the_client_is_served_with_a_same_origin_policy() {
    let server = Server::start().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let r = server.http("GET", path, None, None).await;
        assert_eq!(r.status, 200, "{path}");
        let header = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        let etag = header("etag");
        let again = reqwest::Client::new()
            .get(server.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("request");
        assert_eq!(again.status(), 304, "{path} with its ETag");
    }
    // The protocol's routes are unchanged around it.
    let missing = server.http("GET", "/nothing-here", None, None).await;
    missing.expect_error(404, "not_found");
}
