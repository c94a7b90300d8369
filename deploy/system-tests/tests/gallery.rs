//! The gallery as a person uses it, in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), through the real pipeline with the simulator as Replicate: type a
//! prompt, Generate, watch the card progress and complete with its image, Upscale it, see a
//! failed job's refund; cancel a running job; download; the same over Server-Sent Events;
//! the page without a token. And a person who trains a model on photos picked from their
//! device, generates with it, and loses the network and the server for a moment.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{JWT_SECRET, Pipeline};
use fantoccini::Locator;
use replicate_sim::accounts;
use serde_json::Value;
use shared::auth::Auth;

/// What the page told the console (`window.galleryLog`).
async fn console_log(browser: &Browser) -> Vec<String> {
    serde_json::from_value(browser.script("return window.galleryLog || []").await).unwrap()
}

/// Types `prompt` and presses Generate.
async fn generate(browser: &Browser, prompt: &str) {
    let field = browser.wait_for("#prompt", "the prompt box").await;
    field.send_keys(prompt).await.unwrap();
    browser
        .client
        .find(Locator::Id("generate-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Records every status and progress width each card shows, from the moment it is called.
const WATCH_CARDS: &str = r#"
  window.cardHistory = {};
  const note = (card) => {
    const seen = (window.cardHistory[card.dataset.id] ||= []);
    const entry = card.dataset.status + " " + (card.querySelector('.progress > div')?.style.width || "");
    if (seen[seen.length - 1] !== entry) seen.push(entry);
  };
  new MutationObserver((changes) => {
    for (const change of changes) {
      const card = change.target.closest ? change.target.closest('.card') : null;
      if (card) note(card);
      for (const added of change.addedNodes) if (added.classList?.contains('card')) note(added);
    }
  }).observe(document.getElementById('jobs'), {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status', 'style']});
"#;

/// The `src` of every image of the card, once they have decoded.
async fn decoded_images(browser: &Browser, card: &str) -> usize {
    let script = format!(
        "const imgs = [...document.querySelectorAll('{card} img')]; return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
    );
    browser.until(&script, "the images decode").await;
    browser
        .script(&format!(
            "return document.querySelectorAll('{card} img').length"
        ))
        .await
        .as_u64()
        .unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_generates_watches_upscales_and_sees_a_refund() {
    let pipeline = Pipeline::start(&["--step-ms", "120"], 1).await;
    accounts::ensure_user(&pipeline.pool, "ada", 100)
        .await
        .unwrap();
    let token = Auth::new(JWT_SECRET).mint("ada", Duration::from_secs(600));
    let gallery = format!("http://{}/?token={token}", pipeline.notifier);
    let browser = Browser::start().await;

    // The page without a token says how to get one instead of reconnecting forever.
    browser
        .client
        .goto(&format!("http://{}/", pipeline.notifier))
        .await
        .unwrap();
    let notice = browser
        .wait_for("#notice:not([hidden])", "the no-token notice")
        .await;
    assert!(
        notice.text().await.unwrap().contains("sign-in link"),
        "the notice explains, in words for people, how to get in"
    );

    browser.client.goto(&gallery).await.unwrap();
    browser
        .wait_for("#connection.online", "the page connects")
        .await;
    assert_eq!(browser.text("#credits").await, "100");
    // The token leaves the address bar once read (bookmarks, screenshots, history).
    let address = browser.client.current_url().await.unwrap();
    assert!(!address.as_str().contains("token"), "{address}");
    assert!(
        browser.text("#generate-button").await.contains("4 credits"),
        "the button says what it costs"
    );
    browser.script(WATCH_CARDS).await;

    // Generate: the card appears, progresses and completes with its image from /media.
    generate(&browser, "a corgi on a skateboard").await;
    let done = r#".card[data-kind="generation"][data-status="COMPLETED"]"#;
    browser.wait_for(done, "the generation completes").await;
    assert_eq!(decoded_images(&browser, done).await, 1);
    let src = browser
        .script(&format!("return document.querySelector('{done} img').src"))
        .await;
    assert!(
        src.as_str()
            .unwrap()
            .starts_with(&format!("http://{}/media/", pipeline.notifier)),
        "{src}"
    );
    // The card shows the small rendition; the viewer the original.
    assert!(src.as_str().unwrap().ends_with("/0.thumb.jpg"), "{src}");
    let original = Value::from(src.as_str().unwrap().replace("/0.thumb.jpg", "/0.png"));
    assert_eq!(
        browser.text(&format!("{done} .title")).await,
        "a corgi on a skateboard"
    );
    let history = browser.script("return window.cardHistory").await;
    let steps: Vec<String> = history
        .as_object()
        .unwrap()
        .values()
        .next()
        .map(|steps| serde_json::from_value(steps.clone()).unwrap())
        .unwrap_or_default();
    assert!(
        steps.iter().any(|s| s.starts_with("PROCESSING ")
            && s.len() > "PROCESSING ".len()
            && !s.ends_with(" 0%")),
        "the card showed progress before completing: {steps:?}"
    );
    assert_eq!(steps.last().map(|s| s.starts_with("COMPLETED")), Some(true));
    assert_eq!(browser.text("#credits").await, "96");
    browser
        .wait_for(".toast.completed", "a toast for the completed job")
        .await;

    // The image opens full size, and Escape closes it.
    browser
        .click(Locator::Css(&format!("{done} button.thumb")))
        .await;
    browser
        .until(
            &format!("return document.getElementById('viewer').open && document.querySelector('#viewer img').src === {original}"),
            "the viewer shows the image",
        )
        .await;
    browser
        .client
        .find(Locator::Id("viewer-close"))
        .await
        .unwrap()
        .send_keys("\u{e00c}")
        .await
        .unwrap();
    browser
        .until(
            "return !document.getElementById('viewer').open",
            "Escape closes the viewer",
        )
        .await;

    // Upscale it: the upscale completes with its own image.
    browser
        .click(Locator::Css(&format!("{done} button.upscale")))
        .await;
    let upscaled = r#".card[data-kind="upscale"][data-status="COMPLETED"]"#;
    browser.wait_for(upscaled, "the upscale completes").await;
    assert_eq!(decoded_images(&browser, upscaled).await, 1);
    assert_eq!(browser.text("#credits").await, "94");
    assert_eq!(
        browser
            .script(&format!(
                "return document.querySelectorAll('{upscaled} button.upscale').length"
            ))
            .await,
        0,
        "an upscale is not offered again for upscaling"
    );
    assert_eq!(
        browser
            .script("return document.getElementById('more').offsetParent === null")
            .await,
        Value::Bool(true),
        "no 'load more' when everything is shown"
    );

    // A job that fails: a toast with the reason and the refund, the balance back up.
    generate(&browser, "sim:fail a corgi in the rain").await;
    browser
        .wait_for(
            r#".card[data-kind="generation"][data-status="FAILED"]"#,
            "the failing job fails",
        )
        .await;
    let toast = browser
        .wait_for(".toast.failed", "a toast for the failed job")
        .await;
    let toast = toast.text().await.unwrap();
    assert!(toast.contains("4 credits refunded"), "{toast}");
    assert!(toast.contains("CUDA out of memory"), "{toast}");
    browser
        .until(
            "return document.getElementById('credits').textContent === '94'",
            "the refund shows in the balance",
        )
        .await;

    // Cancel a running generation from its card: refunded, and the card says so.
    generate(&browser, "sim:slow a corgi reading a long book").await;
    let cancel = r#".card[data-kind="generation"][data-status="PROCESSING"] button.cancel"#;
    browser
        .wait_for(cancel, "a running job offers Cancel")
        .await;
    browser
        .until(
            "return document.getElementById('credits').textContent === '90'",
            "debited",
        )
        .await;
    browser.click(Locator::Css(cancel)).await;
    let cancelled = r#".card[data-kind="generation"][data-status="CANCELLED"]"#;
    browser.wait_for(cancelled, "the job ends cancelled").await;
    assert_eq!(
        browser.text(&format!("{cancelled} .detail")).await,
        "Cancelled — 4 credits refunded"
    );
    browser
        .until(
            "return document.getElementById('credits').textContent === '94'",
            "the cancel's refund shows in the balance",
        )
        .await;

    // Download: the completed image as a file named after its prompt.
    let download = browser
        .script(&format!(
            "return document.querySelector('{done} a.button[download]').href"
        ))
        .await;
    let response = shared::http::client_builder()
        .build()
        .unwrap()
        .get(download.as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"a-corgi-on-a-skateboard.png\""
    );

    // The guide's console lines, in order.
    let console = console_log(&browser).await;
    let position = |expected: &str| {
        console
            .iter()
            .position(|line| line.starts_with(expected))
            .unwrap_or_else(|| panic!("console lacks {expected:?}: {console:?}"))
    };
    let connected = position("✅ WebSocket connected - event-driven system active");
    let status = position("Connection status: webhook-driven system active");
    let info = position(r#"📡 Server info: {"pollingDisabled":true,"webhookEnabled":true}"#);
    let event = position("📥 event received: generation_status_changed");
    assert!(
        connected < status && status < event && info < event,
        "{console:?}"
    );
    let laptop = browser.screenshot("gallery.png").await;

    // A phone: one column, nothing wider than the screen.
    browser.client.set_window_size(390, 844).await.unwrap();
    assert_eq!(
        browser
            .script("return document.documentElement.scrollWidth > window.innerWidth")
            .await,
        Value::Bool(false),
        "no horizontal scrolling on a phone"
    );
    let phone = browser.screenshot("gallery-phone.png").await;
    browser.client.set_window_size(1280, 900).await.unwrap();

    // The same over Server-Sent Events; the first paint shows the jobs made so far.
    browser
        .client
        .goto(&format!("{gallery}&transport=sse"))
        .await
        .unwrap();
    browser
        .wait_for("#connection.online", "the page connects over SSE")
        .await;
    assert_eq!(
        browser
            .client
            .find_all(Locator::Css(".card"))
            .await
            .unwrap()
            .len(),
        4,
        "the first paint lists every job"
    );
    generate(&browser, "a lighthouse at dusk").await;
    browser
        .until(
            r#"return document.querySelectorAll('.card[data-kind="generation"][data-status="COMPLETED"]').length === 2"#,
            "the generation completes over SSE",
        )
        .await;
    let console = console_log(&browser).await;
    assert!(
        console
            .iter()
            .any(|line| line == "✅ SSE connection opened - event-driven system active"),
        "{console:?}"
    );
    assert!(
        console
            .iter()
            .any(|line| line.starts_with("📥 SSE event received: generation_status_changed")),
        "{console:?}"
    );
    assert_eq!(browser.text("#credits").await, "90");

    // What operators grep for.
    assert!(
        pipeline
            .log("ingest")
            .contains("🔔 Unified Replicate webhook received")
    );
    let worker = pipeline.log("worker-0");
    assert!(
        worker.contains("🎯 Detected job type: generation for job"),
        "worker log"
    );
    assert!(
        worker.contains("Detected job type: upscale for job"),
        "worker log"
    );
    assert!(worker.contains("✅ Webhook processed in "), "worker log");
    let notifier = pipeline.log("notifier");
    assert!(notifier.contains("SSE connection opened"), "notifier log");

    println!("screenshots: {} and {}", laptop.display(), phone.display());
    browser.close().await;
    pipeline.stop().await;
}

/// A PNG as far as the notifier checks (its first bytes), in a file a person would pick.
fn photo_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(name.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The `seq` of every event the page logged, in the order it handled them.
fn logged_seqs(console: &[String]) -> Vec<i64> {
    console
        .iter()
        .filter(|line| line.starts_with("📥 "))
        .filter_map(|line| {
            line.split_once(' ')
                .and_then(|(_, rest)| rest.find('{').map(|at| &rest[at..]))
        })
        .filter_map(|json| serde_json::from_str::<Value>(json).ok())
        .filter_map(|detail| detail["seq"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_trains_on_their_photos_generates_with_the_model_and_rides_out_lost_connections() {
    let mut pipeline = Pipeline::start(&["--step-ms", "60"], 1).await;
    accounts::ensure_user(&pipeline.pool, "grace", 200)
        .await
        .unwrap();
    let token = Auth::new(JWT_SECRET).mint("grace", Duration::from_secs(600));
    let gallery = format!("http://{}/?token={token}", pipeline.notifier);
    let browser = Browser::start().await;
    browser.client.goto(&gallery).await.unwrap();
    browser
        .wait_for("#connection.online", "the page connects")
        .await;

    // Train: a name and three photos picked from the device.
    browser.click(Locator::Css("#train-panel summary")).await;
    browser
        .wait_for("#model-name", "the training form")
        .await
        .send_keys("Me")
        .await
        .unwrap();
    let photos = std::env::temp_dir().join(shared::testing::unique_name("photos"));
    std::fs::create_dir_all(&photos).unwrap();
    let picked: Vec<String> = ["one.png", "two.png", "three.png"]
        .iter()
        .map(|name| photo_file(&photos, name).display().to_string())
        .collect();
    browser
        .client
        .find(Locator::Id("photos"))
        .await
        .unwrap()
        .send_keys(&picked.join("\n"))
        .await
        .unwrap();
    browser.click(Locator::Id("train-button")).await;
    let trained = r#".card[data-kind="training"][data-status="COMPLETED"]"#;
    browser.wait_for(trained, "the training completes").await;
    assert_eq!(browser.text("#credits").await, "160");
    std::fs::remove_dir_all(&photos).unwrap();

    // Pick the model above the prompt, and generate with it.
    let model_id = browser
        .script(&format!(
            "return document.querySelector('{trained}').dataset.id"
        ))
        .await;
    browser
        .until(
            &format!("return !!document.querySelector('#model option[value={model_id}]')"),
            "the picker offers the trained model",
        )
        .await;
    browser
        .script(&format!(
            "document.getElementById('model').value = {model_id}"
        ))
        .await;
    generate(&browser, "me as an astronaut").await;
    let mine = r#".card[data-kind="generation"][data-status="COMPLETED"]"#;
    browser
        .wait_for(mine, "the generation on the model completes")
        .await;
    assert_eq!(decoded_images(&browser, mine).await, 1);
    assert_eq!(
        browser.text(&format!("{mine} .detail")).await,
        "With your model “Me”"
    );

    // The network goes away and comes back: the page says so, and is live again.
    browser.set_offline(true).await;
    browser
        .wait_for("#connection.offline", "the page says it is offline")
        .await;
    browser.set_offline(false).await;
    browser
        .wait_for("#connection.online", "live again once the network is back")
        .await;

    // The server goes away: "reconnecting in N s", then live, and nothing missed or twice.
    pipeline.kill("notifier").await;
    browser
        .until(
            "return document.getElementById('connection').textContent.startsWith('reconnecting')",
            "the page says it is reconnecting",
        )
        .await;
    pipeline.restart("notifier");
    pipeline.wait_notifier_healthy().await;
    browser
        .wait_for("#connection.online", "live again after the restart")
        .await;
    // In a background tab, a finished job shows in the title until the tab is looked at.
    browser
        .script("Object.defineProperty(document, 'hidden', {configurable: true, get: () => true})")
        .await;
    generate(&browser, "me on the moon").await;
    browser
        .until(
            &format!("return document.querySelectorAll('{mine}').length === 2"),
            "a generation after the reconnect completes",
        )
        .await;
    browser
        .until(
            "return document.title === '(1) Gallery'",
            "the title counts it",
        )
        .await;
    browser
        .script("delete document.hidden; document.dispatchEvent(new Event('visibilitychange'))")
        .await;
    browser
        .until(
            "return document.title === 'Gallery'",
            "looked at: the count goes",
        )
        .await;
    let console = console_log(&browser).await;
    let seqs = logged_seqs(&console);
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]) && !seqs.is_empty(),
        "every event once, in order: {seqs:?}"
    );
    assert!(
        console
            .iter()
            .any(|line| line.starts_with("🌐 network back")),
        "{console:?}"
    );
    let phone = {
        browser.client.set_window_size(390, 844).await.unwrap();
        browser.screenshot("gallery-trained-phone.png").await
    };
    println!("screenshot: {}", phone.display());
    browser.close().await;
    pipeline.stop().await;
}
