//! Criterion micro-benchmarks of the daemon's per-request work on `POST /v1/inbound/{tenant}`,
//! on a body of the same size and shape as the load test's (~510 bytes, Vietnamese text):
//! HMAC verify, parse + normalize + serialize, and the dedupe lookup + insert. Together they
//! bound what the daemon adds over the thin forwarder before Kafka is involved.
//!
//! Run with `cargo bench -p omni-benches --bench ingest_path`.
// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs)]

use axum::http::{header, HeaderMap, HeaderValue};
use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use omni_benches::{request_body, DEFAULT_BODY_SIZE};
use omni_channel::api::SIGNATURE_HEADER;
use omni_channel::signature::{hmac_sha256_hex, verify_hmac_sha256_hex};
use omni_channel::{ApiChannel, ApiCredentials, DedupeCache, WebhookAdapter};
use omni_core::{Secret, TenantId};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn ingest_path(c: &mut Criterion) {
    let body = request_body("crit", 42, DEFAULT_BODY_SIZE);
    let sig = hmac_sha256_hex(SECRET.as_bytes(), &body);

    let mut group = c.benchmark_group("ingest_path");
    group.throughput(Throughput::Bytes(body.len() as u64));

    group.bench_function("hmac_verify", |b| {
        b.iter(|| {
            verify_hmac_sha256_hex(
                black_box(SECRET.as_bytes()),
                black_box(&body),
                black_box(&sig),
            )
        });
    });

    let tenant = match TenantId::new("bench") {
        Ok(t) => t,
        Err(e) => panic!("tenant id: {e}"),
    };
    let creds = ApiCredentials::new(None, Some(Secret::new(SECRET)));
    let channel = ApiChannel::new([(tenant.clone(), creds.clone())]);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("sha256={sig}")) {
        headers.insert(SIGNATURE_HEADER, v);
    }
    let headers =
        omni_channel::request_head(axum::http::Method::POST, "/v1/inbound/bench", headers);
    assert!(
        channel.verify(&creds, &headers, &body).is_ok(),
        "the signed body must verify"
    );
    assert!(
        channel
            .parse(&tenant, &creds, &headers, &body, Utc::now())
            .is_ok_and(|parsed| parsed.events.len() == 1),
        "the body must parse into one event"
    );

    // serde_json parse, validation, id derivation (UUIDv5), CloudEvent build and to_vec.
    group.bench_function("parse_normalize_serialize", |b| {
        b.iter(|| {
            channel.parse(
                black_box(&tenant),
                &creds,
                black_box(&headers),
                black_box(&body),
                Utc::now(),
            )
        });
    });

    // verify + parse: the whole CPU-bound part of the handler before the publish.
    group.bench_function("verify_and_parse", |b| {
        b.iter(|| {
            channel.verify(&creds, black_box(&headers), black_box(&body))?;
            channel.parse(&tenant, &creds, &headers, &body, Utc::now())
        });
    });
    group.finish();

    // The steady state under load: the cache full at the daemon's default capacity, every
    // request a new id (lookup misses, insert evicts the oldest).
    let mut group = c.benchmark_group("dedupe");
    let cache = DedupeCache::new(Duration::from_secs(600), 200_000);
    let start = Instant::now();
    let mut next: u128 = 0;
    let mut id = || {
        next += 1;
        // Spread like UUIDv5 ids (well-mixed bits), cheaply.
        next.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    };
    for _ in 0..250_000 {
        cache.insert(id(), start);
    }
    group.bench_function("lookup_insert_full_cache", |b| {
        b.iter_batched(
            &mut id,
            |id| {
                let now = Instant::now();
                if !cache.contains(black_box(id), now) {
                    cache.insert(id, now);
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = ingest_path
}
criterion_main!(benches);
