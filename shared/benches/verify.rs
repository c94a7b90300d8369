//! Verification cost of one webhook with a 2 KB body (HMAC-SHA256 plus constant-time
//! comparison), with one secret and during a rotation with two.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared::webhook::{SignedHeaders, Verifier, WebhookSecret, WebhookSecrets};

fn body_of_2kb() -> Vec<u8> {
    let mut body = br#"{"id":"vgcm4plb7tgzlyznry5d5jkgvu","status":"succeeded","logs":""#.to_vec();
    body.resize(2048 - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn bench_verify(c: &mut Criterion) {
    let body = body_of_2kb();
    let now = SystemTime::now();
    let timestamp = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let secret = WebhookSecret::from_bytes(vec![42u8; 32]);
    let old_secret = WebhookSecret::from_bytes(vec![7u8; 32]);
    let signature = secret.sign("msg_bench", timestamp, &body);
    let ts = timestamp.to_string();
    let headers = SignedHeaders {
        id: "msg_bench",
        timestamp: &ts,
        signature: &signature,
    };

    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let one = Verifier::new(
        WebhookSecrets::new(vec![secret.clone()]).unwrap(),
        Duration::from_secs(300),
    );
    group.bench_function("2KB body, one secret", |b| {
        b.iter(|| {
            one.verify_at(black_box(&headers), black_box(&body), now)
                .unwrap()
        })
    });
    // During a rotation the new secret is listed second: the worst case computes both.
    let rotating = Verifier::new(
        WebhookSecrets::new(vec![old_secret, secret]).unwrap(),
        Duration::from_secs(300),
    );
    group.bench_function("2KB body, two secrets (rotation)", |b| {
        b.iter(|| {
            rotating
                .verify_at(black_box(&headers), black_box(&body), now)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
