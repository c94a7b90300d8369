//! A headless Chromium (Debian's `chromium` and `chromium-driver`) driven over WebDriver,
//! for the tests that use the pages as a person does (the gallery, the operator console).

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium driven over WebDriver; closed and removed on drop.
pub struct Browser {
    pub client: Client,
    _driver: Child,
    /// chromedriver's address, for what WebDriver itself does not offer (network offline).
    driver_url: String,
    profile: std::path::PathBuf,
}

impl Browser {
    pub async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
            "this test needs Debian's chromium and chromium-driver (deploy/test installs them)"
        );
        let port = super::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = std::env::temp_dir().join(format!(
            "gallery-profile-{}",
            shared::testing::unique_name("browser")
        ));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }),
        );
        let mut client = None;
        for _ in 0..100 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(connected) => {
                    client = Some(connected);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Self {
            client: client.expect("a chromedriver session"),
            _driver: driver,
            driver_url: format!("http://127.0.0.1:{port}"),
            profile,
        }
    }

    /// Takes the browser's network away (or gives it back), as its offline mode does.
    pub async fn set_offline(&self, offline: bool) {
        let session = self.client.session_id().await.unwrap().expect("a session");
        let answer = shared::http::client_builder()
            .build()
            .unwrap()
            .post(format!("{}/session/{session}/chromium/network_conditions", self.driver_url))
            .json(&serde_json::json!({"network_conditions": {
                "offline": offline, "latency": 0, "download_throughput": -1, "upload_throughput": -1}}))
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "{}",
            answer.text().await.unwrap()
        );
    }

    pub async fn wait_for(&self, css: &str, what: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{what}: no {css} ({err})"))
    }

    pub async fn click(&self, locator: Locator<'_>) {
        self.client
            .find(locator)
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    pub async fn script(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns true. A script that throws has not held yet: right after
    /// a navigation or a refresh the element it reads may not exist.
    pub async fn until(&self, script: &str, what: &str) {
        let held = shared::testing::eventually(WAIT, || async {
            matches!(
                self.client.execute(script, vec![]).await,
                Ok(Value::Bool(true))
            )
        })
        .await;
        assert!(held.is_ok(), "{what}: `{script}` never held");
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        path
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
