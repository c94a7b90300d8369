//! The operator console as an operator uses it, in a real headless Chromium, against the
//! whole pipeline (simulator as Replicate): signing in with the operator token; a webhook
//! for a job the app had not inserted yet is dead-lettered, shows with its reason, is
//! replayed once the row exists and applies, and the job's timeline shows both attempts; a
//! stuck job is failed and refunded from the console (the balance up once, an operator
//! action in the ledger's story); the webhook list filters and searches.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::browser::Browser;
use common::{Pipeline, webhook_secret};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use fantoccini::Locator;
use replicate_sim::accounts;
use shared::db::schema::{credit_transactions, generations, operator_actions, users};

const OPERATOR_TOKEN: &str = "console-test-operator-token-of-32-bytes-or-more";
const USER: &str = "ops-user";

async fn credits(pipeline: &Pipeline) -> i32 {
    let mut conn = shared::db::connection(&pipeline.pool).await.unwrap();
    users::table
        .find(USER)
        .select(users::credits)
        .first(&mut conn)
        .await
        .unwrap()
}

/// A generation as the web app inserts it (credits already taken by the app).
async fn insert_generation(
    pipeline: &Pipeline,
    id: &str,
    job_id: &str,
    status: &str,
    age: chrono::Duration,
) {
    let mut conn = shared::db::connection(&pipeline.pool).await.unwrap();
    diesel::insert_into(generations::table)
        .values((
            generations::id.eq(id),
            generations::user_id.eq(USER),
            generations::job_id.eq(job_id),
            generations::prompt.eq(format!("a lighthouse for {id}")),
            generations::status.eq(status),
            generations::credits_used.eq(4),
            generations::updated_at.eq(Utc::now() - age),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Presses the dialog's confirm button, after typing `reason` when it asks for one.
async fn confirm(browser: &Browser, reason: Option<&str>) {
    browser
        .wait_for("dialog[open]", "the confirmation dialog")
        .await;
    if let Some(reason) = reason {
        browser
            .client
            .find(Locator::Id("confirm-reason"))
            .await
            .unwrap()
            .send_keys(reason)
            .await
            .unwrap();
    }
    browser.click(Locator::Id("confirm-ok")).await;
}

async fn open(browser: &Browser, pipeline: &Pipeline, hash: &str) {
    browser
        .client
        .goto(&format!("http://{}/ops/{hash}", pipeline.notifier))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_dead_letter_fails_a_stuck_job_and_searches_webhooks() {
    let pipeline = Pipeline::start_with(
        &["--step-ms", "40"],
        1,
        &[
            ("OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("UNKNOWN_JOB_RETRY_SECS", "2"),
        ],
    )
    .await;
    accounts::ensure_user(&pipeline.pool, USER, 100)
        .await
        .unwrap();
    let browser = Browser::start().await;

    // Signing in: the page asks for the token; a wrong one is refused in words.
    open(&browser, &pipeline, "").await;
    let field = browser.wait_for("#token", "the sign-in form").await;
    field.send_keys("not-the-operator-token").await.unwrap();
    browser.click(Locator::Css("#sign-in button")).await;
    browser
        .until(
            "return document.getElementById('error').textContent.includes('not the operator token')",
            "a wrong token is refused",
        )
        .await;
    field.clear().await.unwrap();
    field.send_keys(OPERATOR_TOKEN).await.unwrap();
    browser.click(Locator::Css("#sign-in button")).await;
    browser.wait_for("#tiles .tile", "the Now figures").await;
    browser
        .until(
            "return [...document.querySelectorAll('#tiles .tile')].some(t => t.textContent.includes('Workers consuming') && t.textContent.includes('1'))",
            "one worker consuming",
        )
        .await;
    let now = browser.screenshot("console-now.png").await;
    println!("screenshot: {}", now.display());

    // A webhook for a job the app has not inserted: retried, then dead-lettered.
    let ingest = format!("http://{}/api/webhooks/replicate", pipeline.ingest);
    let body = replicate_sim::send::body("r-late-1", "failed", serde_json::Value::Null);
    let (status, _) = replicate_sim::send::send(&webhook_secret(), &ingest, "wh-too-early", &body)
        .await
        .unwrap();
    assert_eq!(status, 200);
    open(&browser, &pipeline, "#dead-letters").await;
    let shown = shared::testing::eventually(Duration::from_secs(30), || async {
        browser.click(Locator::Css("#letter-filters button")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser.text("#letter-rows").await.contains("wh-too-early")
    })
    .await;
    assert!(shown.is_ok(), "the dead letter is listed");
    let row = browser.text("#letter-rows").await;
    assert!(
        row.contains("job not found") && row.contains("r-late-1"),
        "{row}"
    );
    let letters = browser.screenshot("console-dead-letters.png").await;
    println!("screenshot: {}", letters.display());

    // The app inserts the row; the operator replays the webhook, which now applies.
    insert_generation(
        &pipeline,
        "g-late",
        "r-late-1",
        "PROCESSING",
        chrono::Duration::zero(),
    )
    .await;
    browser
        .click(Locator::XPath(
            "//tbody[@id='letter-rows']//tr[contains(., 'wh-too-early')]//button",
        ))
        .await;
    confirm(&browser, None).await;
    browser
        .until(
            "return document.getElementById('toast').textContent === '1 replayed'",
            "the replay is confirmed",
        )
        .await;
    open(&browser, &pipeline, "#job/g-late").await;
    let story = shared::testing::eventually(Duration::from_secs(30), || async {
        browser.client.refresh().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let timeline = browser.text("#timeline").await;
        timeline.contains("dead-lettered") && timeline.contains("applied")
    })
    .await;
    let timeline = browser.text("#timeline").await;
    assert!(story.is_ok(), "both attempts on the job's page: {timeline}");
    assert!(timeline.contains("REFUND +4 credits"), "{timeline}");
    assert!(timeline.contains("replay dead letter"), "{timeline}");
    assert_eq!(browser.text("#job-summary .status").await, "FAILED");
    assert_eq!(credits(&pipeline).await, 104);
    let job = browser.screenshot("console-job.png").await;
    println!("screenshot: {}", job.display());

    // A job without news for two hours that Replicate never heard of: failed and refunded.
    insert_generation(
        &pipeline,
        "g-stuck",
        "r-never",
        "PROCESSING",
        chrono::Duration::hours(2),
    )
    .await;
    open(&browser, &pipeline, "#stuck").await;
    browser.client.refresh().await.unwrap();
    browser
        .until(
            "return document.getElementById('stuck-rows').textContent.includes('g-stuck')",
            "the stuck job listed",
        )
        .await;
    let stuck = browser.screenshot("console-stuck.png").await;
    println!("screenshot: {}", stuck.display());
    browser
        .click(Locator::XPath("//tbody[@id='stuck-rows']//tr[contains(., 'g-stuck')]//button[contains(., 'Fail and refund')]"))
        .await;
    confirm(&browser, Some("lost at Replicate")).await;
    browser
        .until(
            "return document.getElementById('toast').textContent === 'Failed; 4 credits refunded'",
            "the refund is confirmed",
        )
        .await;
    browser
        .until(
            "return !document.getElementById('stuck-rows').textContent.includes('g-stuck')",
            "no longer stuck",
        )
        .await;
    assert_eq!(credits(&pipeline).await, 108, "the balance up once");
    let mut conn = shared::db::connection(&pipeline.pool).await.unwrap();
    let refunds: Vec<i32> = credit_transactions::table
        .filter(credit_transactions::job_id.eq("r-never"))
        .filter(credit_transactions::kind.eq("REFUND"))
        .select(credit_transactions::amount)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(refunds, [4]);
    let action: String = operator_actions::table
        .filter(operator_actions::job_row_id.eq("g-stuck"))
        .select(operator_actions::detail)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(
        action.contains("4 credits refunded: lost at Replicate"),
        "{action}"
    );

    // The webhook list: filtered by outcome, searched by id.
    open(&browser, &pipeline, "#webhooks").await;
    browser
        .wait_for("#webhook-rows tr", "the webhook list")
        .await;
    let select = browser
        .client
        .find(Locator::Css("select[name=outcome]"))
        .await
        .unwrap();
    select.select_by_value("dead_lettered").await.unwrap();
    browser.click(Locator::Css("#webhook-filters button")).await;
    browser
        .until(
            "const rows = [...document.querySelectorAll('#webhook-rows tr')]; return rows.length > 0 && rows.every(r => r.classList.contains('outcome-dead_lettered'))",
            "only dead-lettered webhooks",
        )
        .await;
    select.select_by_value("").await.unwrap();
    browser
        .client
        .find(Locator::Css("input[name=q]"))
        .await
        .unwrap()
        .send_keys("r-late-1")
        .await
        .unwrap();
    browser.click(Locator::Css("#webhook-filters button")).await;
    browser
        .until(
            "const rows = [...document.querySelectorAll('#webhook-rows tr')]; return rows.length >= 3 && rows.every(r => r.textContent.includes('r-late-1'))",
            "only the searched job's webhooks: retried, dead-lettered, applied",
        )
        .await;
    let list = browser.screenshot("console-webhooks.png").await;
    println!("screenshot: {}", list.display());

    browser.close().await;
    pipeline.stop().await;
}
