//! Standard Webhooks header parsing and verification with any header values and body:
//! never a panic, and nothing forged verifies.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use shared::webhook::{SignedHeaders, Verifier, WebhookSecret, WebhookSecrets};

fuzz_target!(|data: &[u8]| {
    // Split the input into id, timestamp, signature and body at the first three NULs.
    let mut parts = data.splitn(4, |b| *b == 0);
    let (Some(id), Some(timestamp), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let body = parts.next().unwrap_or_default();
    let (Ok(id), Ok(timestamp), Ok(signature)) = (
        std::str::from_utf8(id),
        std::str::from_utf8(timestamp),
        std::str::from_utf8(signature),
    ) else {
        return;
    };
    let lookup = |name: &'static str| match name {
        shared::webhook::HEADER_ID => Some(id),
        shared::webhook::HEADER_TIMESTAMP => Some(timestamp),
        _ => Some(signature),
    };
    let Ok(headers) = SignedHeaders::from_lookup(lookup) else {
        return;
    };
    let secret = WebhookSecret::from_bytes(b"fuzzing-secret-of-32-bytes-long!".to_vec());
    let verifier = Verifier::new(
        WebhookSecrets::new(vec![secret.clone()]).expect("one secret"),
        Duration::from_secs(300),
    );
    let _ = verifier.precheck(&headers);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if verifier.verify_at(&headers, body, now).is_ok() {
        // Whatever got through, the same signature over another body must not.
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(
            verifier.verify_at(&headers, &tampered, now).is_err(),
            "a signature verified two different bodies"
        );
    }
    // A real signature of this content always verifies.
    if let Ok(seconds) = timestamp.trim().parse::<i64>() {
        if (seconds - 1_700_000_000).abs() <= 300 {
            let signed = secret.sign(id, seconds, body);
            let real = SignedHeaders {
                id,
                timestamp,
                signature: &signed,
            };
            assert!(
                verifier.verify_at(&real, body, now).is_ok(),
                "a real signature failed"
            );
        }
    }
});
