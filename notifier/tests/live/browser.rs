//! The gallery in a real headless Chromium (Debian's `chromium` and `chromium-driver`):
//! the card appears, changes status, shows progress and the image, without a reload.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::process::Command;

use crate::helpers::TestEnv;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// A 1×1 PNG, so the browser has a real image to decode.
const PIXEL_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gallery_updates_live_in_a_real_browser() {
    assert!(
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
        "this test needs Debian's chromium and chromium-driver (deploy/test installs them)"
    );
    let env = TestEnv::new().await;
    env.insert_user("u1", 120).await;
    let running = env.start().await;
    let image_dir = env.media_dir.join("generations/gen-r1");
    std::fs::create_dir_all(&image_dir).unwrap();
    std::fs::write(
        image_dir.join("0.png"),
        base64::engine::general_purpose::STANDARD
            .decode(PIXEL_PNG)
            .unwrap(),
    )
    .unwrap();

    let driver_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let profile = std::env::temp_dir().join(format!("gallery-profile-{}", std::process::id()));
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
    let mut browser = None;
    for _ in 0..50 {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
        {
            Ok(client) => {
                browser = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let browser = browser.expect("chromedriver session");
    let wait = Duration::from_secs(15);

    // A job that ended before the page was opened: the gallery shows it from the replay.
    env.emit("u1", "r0", "FAILED").await;
    browser
        .goto(&format!(
            "http://{}/?token={}",
            running.address,
            env.token("u1")
        ))
        .await
        .unwrap();
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("#connection.online"))
        .await
        .expect("the page connects");
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css(
            r#".card[data-job-id="r0"][data-status="FAILED"]"#,
        ))
        .await
        .expect("the earlier job, replayed");

    env.emit("u1", "r1", "PROCESSING").await;
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css(
            r#".card[data-job-id="r1"][data-status="PROCESSING"]"#,
        ))
        .await
        .expect("a processing card");
    env.publish(&TestEnv::progress("u1", "r1", 0.42)).await;
    let mut width = String::new();
    for _ in 0..50 {
        width = browser
            .execute(r#"return document.querySelector('.card[data-job-id="r1"] .progress > div').style.width"#, vec![])
            .await
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if width == "42%" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(width, "42%");

    env.emit("u1", "r1", "COMPLETED").await;
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css(
            r#".card[data-job-id="r1"][data-status="COMPLETED"] img"#,
        ))
        .await
        .expect("the card completes with its image");
    let mut loaded = false;
    for _ in 0..50 {
        let natural_width = browser
            .execute(r#"const img = document.querySelector('.card[data-job-id="r1"] img'); return img.complete ? img.naturalWidth : 0"#, vec![])
            .await
            .unwrap();
        if natural_width.as_u64() == Some(1) {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded, "the image was served from /media and decoded");
    let credits = browser
        .find(Locator::Id("credits"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(credits, "120");
    assert_eq!(
        browser.find_all(Locator::Css(".card")).await.unwrap().len(),
        2,
        "one card per job, updated in place"
    );

    // Screenshots as test artifacts: a laptop, then a phone (one card per row, no overflow).
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        artifacts.join("gallery.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser.set_window_size(390, 844).await.unwrap();
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        serde_json::json!(false),
        "no horizontal scrolling on a phone"
    );
    std::fs::write(
        artifacts.join("gallery-phone.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    println!(
        "screenshots: {}/gallery.png, gallery-phone.png",
        artifacts.display()
    );

    browser.close().await.unwrap();
    driver.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
    running.stop().await;
    env.cleanup().await;
}
