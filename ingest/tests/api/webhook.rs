//! One test per row of the contract's "Ingest HTTP" table, asserting both the response
//! and what landed in the queue.

use lapin::types::AMQPValue;
use serde_json::Value;

use crate::helpers::{now_secs, spawn_connected};

const SUCCEEDED: &[u8] = br#"{"id":"vgcm4plb7tgzlyznry5d5jkgvu","status":"succeeded","output":["https://replicate.delivery/pbxt/a/out-0.png"],"logs":"Using seed: 42069\n","error":null}"#;

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

fn header_str(delivery: &lapin::message::Delivery, name: &str) -> String {
    match header(delivery, name) {
        Some(AMQPValue::LongString(value)) => value.to_string(),
        other => panic!("header {name} is {other:?}"),
    }
}

#[tokio::test]
async fn verified_webhook_is_enqueued_byte_for_byte_and_persistent() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    // Odd spacing, key order and non-ASCII text: re-serialising would change these bytes.
    let body = "{ \"status\" :\"succeeded\",\"id\":\"p-1\",  \"input\":{\"prompt\":\"un café ☕\"},\"z\":1.50 }\n";
    let headers = app.signed_headers("msg_accepted_1", now_secs(), body.as_bytes());

    let response = app.post(&headers, body).await;

    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await?;
    assert_eq!(
        answer,
        serde_json::json!({"status": "accepted", "webhook_id": "msg_accepted_1"})
    );
    let queued = app.drain_queue().await;
    assert_eq!(queued.len(), 1);
    let message = &queued[0];
    assert_eq!(message.data, body.as_bytes());
    assert_eq!(
        message
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some("msg_accepted_1")
    );
    assert_eq!(*message.properties.delivery_mode(), Some(2));
    assert_eq!(header_str(message, "webhook-id"), "msg_accepted_1");
    assert_eq!(header_str(message, "webhook-timestamp"), headers[1].1);
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn unknown_status_and_large_training_logs_are_accepted() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    let unknown = br#"{"id":"p-2","status":"queued_for_gpu","new_field":[1,2,3]}"#;
    assert_eq!(app.post_signed("msg_unknown", unknown).await.status(), 200);
    // Close to the (test) limit of 64 KiB: big logs must not be refused.
    let logs = "step 1/100 loss=0.1\n".repeat(3000);
    let training =
        serde_json::json!({"id": "t-1", "status": "processing", "logs": logs}).to_string();
    assert!(training.len() > 60 * 1024 && training.len() < 64 * 1024);
    assert_eq!(
        app.post_signed("msg_logs", training.as_bytes())
            .await
            .status(),
        200
    );

    let queued = app.drain_queue().await;
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[0].data, unknown);
    assert_eq!(queued[1].data, training.as_bytes());
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn missing_headers_are_400_and_name_the_header() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    let complete = app.signed_headers("msg_missing", now_secs(), SUCCEEDED);
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let headers: Vec<_> = complete
            .iter()
            .filter(|(name, _)| *name != missing)
            .cloned()
            .collect();
        let response = app.post(&headers, SUCCEEDED).await;
        assert_eq!(response.status(), 400, "without {missing}");
        let error: Value = response.json().await?;
        let text = error["error"].as_str().unwrap();
        assert!(text.contains(missing), "{text:?} should name {missing}");
    }
    assert!(app.drain_queue().await.is_empty());
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn non_integer_timestamp_is_400() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    let mut headers = app.signed_headers("msg_ts", now_secs(), SUCCEEDED);
    for bad in ["soon", "1700000000.5", ""] {
        headers[1].1 = bad.to_owned();
        let response = app.post(&headers, SUCCEEDED).await;
        assert_eq!(response.status(), 400, "timestamp {bad:?}");
        let error: Value = response.json().await?;
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("webhook-timestamp")
        );
    }
    assert!(app.drain_queue().await.is_empty());
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn an_over_long_webhook_id_is_400_and_ingest_keeps_serving() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    // Correctly signed, but too long for the AMQP message id it becomes.
    let long_id = "m".repeat(300);
    let response = app.post_signed(&long_id, SUCCEEDED).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await?;
    assert!(
        error["error"].as_str().unwrap().contains("webhook-id"),
        "{error}"
    );
    let fits = "m".repeat(255);
    assert_eq!(app.post_signed(&fits, SUCCEEDED).await.status(), 200);
    let queued = app.drain_queue().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].properties.message_id().as_ref().unwrap().as_str(),
        fits
    );
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn wrong_signature_is_401() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    let mut headers = app.signed_headers("msg_sig", now_secs(), SUCCEEDED);

    // Signed for another body.
    let tampered = SUCCEEDED
        .to_vec()
        .into_iter()
        .map(|b| if b == b'5' { b'6' } else { b })
        .collect::<Vec<_>>();
    let response = app.post(&headers, tampered).await;
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await?;
    assert!(error["error"].as_str().unwrap().contains("signature"));

    // Signed with another secret.
    let other =
        shared::webhook::WebhookSecret::from_bytes(b"some-other-secret-of-32-bytes!!!".to_vec());
    headers[2].1 = other.sign("msg_sig", headers[1].1.parse().unwrap(), SUCCEEDED);
    assert_eq!(app.post(&headers, SUCCEEDED).await.status(), 401);

    // Only non-v1 entries.
    headers[2].1 = app
        .secret
        .sign("msg_sig", headers[1].1.parse().unwrap(), SUCCEEDED)
        .replace("v1,", "v2,");
    assert_eq!(app.post(&headers, SUCCEEDED).await.status(), 401);

    assert!(app.drain_queue().await.is_empty());
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn timestamp_outside_tolerance_is_401_both_ways() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    for (label, timestamp) in [
        ("old", now_secs() - 301 - 5),
        ("future", now_secs() + 301 + 5),
    ] {
        let headers = app.signed_headers("msg_tolerance", timestamp, SUCCEEDED);
        let response = app.post(&headers, SUCCEEDED).await;
        assert_eq!(response.status(), 401, "{label}");
        let error: Value = response.json().await?;
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("webhook-timestamp"),
            "{label}"
        );
    }
    // Just inside the tolerance passes.
    let headers = app.signed_headers("msg_tolerance_ok", now_secs() - 290, SUCCEEDED);
    assert_eq!(app.post(&headers, SUCCEEDED).await.status(), 200);
    assert_eq!(app.drain_queue().await.len(), 1);
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn body_over_the_limit_is_413() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    // The test instance allows 64 KiB.
    let body =
        serde_json::json!({"id": "t-2", "status": "processing", "logs": "x".repeat(64 * 1024)})
            .to_string();
    let response = app.post_signed("msg_big", body.as_bytes()).await;
    assert_eq!(response.status(), 413);
    assert!(app.drain_queue().await.is_empty());
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn verified_but_not_an_object_with_string_id_and_status_is_400() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    let bodies: [&[u8]; 6] = [
        b"not json at all",
        br#"["vgcm4plb7tgzlyznry5d5jkgvu","succeeded"]"#,
        br#"{"id":"p-3"}"#,
        br#"{"status":"succeeded"}"#,
        br#"{"id":42,"status":"succeeded"}"#,
        br#"{"id":"p-3","status":null}"#,
    ];
    for body in bodies {
        let response = app.post_signed("msg_shape", body).await;
        assert_eq!(response.status(), 400, "{}", String::from_utf8_lossy(body));
        let error: Value = response.json().await?;
        assert!(error["error"].is_string());
    }
    assert!(app.drain_queue().await.is_empty());
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_webhooks_are_all_confirmed_and_enqueued() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    let requests = (0..200).map(|i| {
        let body = format!(r#"{{"id":"p-{i}","status":"processing"}}"#);
        let id = format!("msg_concurrent_{i}");
        let app = &app;
        async move { app.post_signed(&id, body.as_bytes()).await.status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let mut ids: Vec<String> = app
        .drain_queue()
        .await
        .iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..200).map(|i| format!("msg_concurrent_{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected);
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn health_and_metrics() -> anyhow::Result<()> {
    let app = spawn_connected().await;
    let health = app.get("/api/health").await;
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await?;
    assert_eq!(
        health,
        serde_json::json!({"status": "healthy", "webhook": "configured", "broker": "connected"})
    );

    assert_eq!(
        app.post_signed("msg_metrics", SUCCEEDED).await.status(),
        200
    );
    let metrics = app.get("/metrics").await.text().await?;
    assert!(
        metrics.contains(r#"ingest_webhooks_total{outcome="accepted"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("ingest_publish_duration_seconds_bucket"),
        "{metrics}"
    );
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn the_job_tag_of_the_url_rides_along_as_a_header() -> anyhow::Result<()> {
    let mut app = spawn_connected().await;
    for (query, tag) in [
        ("?job=gen_abc123", Some("gen_abc123")),
        ("?env=prod&job=mdl_x-1", Some("mdl_x-1")),
        ("?job=not%20a%20row", None),
        ("", None),
    ] {
        let id = format!("msg_tag_{}", query.len());
        let headers = app.signed_headers(&id, now_secs(), SUCCEEDED);
        let response = app
            .post_to(
                &format!("/api/webhooks/replicate{query}"),
                &headers,
                SUCCEEDED,
            )
            .await;
        assert_eq!(response.status(), 200, "{query}");
        let queued = app.drain_queue().await;
        assert_eq!(queued.len(), 1, "{query}");
        let carried = header(&queued[0], shared::amqp::HEADER_JOB_TAG).map(|value| match value {
            AMQPValue::LongString(text) => text.to_string(),
            other => panic!("{other:?}"),
        });
        assert_eq!(carried.as_deref(), tag, "{query}");
        assert_eq!(queued[0].data, SUCCEEDED, "the body is untouched");
    }
    app.cleanup().await;
    Ok(())
}
