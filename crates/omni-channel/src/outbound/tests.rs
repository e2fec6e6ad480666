//! The dispatcher's behaviour, one rule per test, against a scripted sender and an in-memory sink.

use super::*;
use crate::progress::ReplyProgress;
use crate::sink::MemorySink;
use chrono::Utc;
use omni_bus::{partition_for, HandlerOutcome, Record};
use omni_core::{
    ChannelRef, CloudEvent, ConversationId, DeliveryStatus, DeliveryUpdate, EventId, EventType,
    OutboundMessage, TenantId,
};
use prometheus::Registry;
use std::collections::VecDeque;
use std::sync::Mutex;

/// A sender answering from a script, one answer per call, recording the progress it saw.
#[derive(Default)]
struct Scripted {
    answers: Mutex<VecDeque<Result<SendReceipt, SendError>>>,
    seen: Mutex<Vec<usize>>,
}

impl ChannelSender for Scripted {
    fn send<'a>(
        &'a self,
        _request: &'a SendRequest,
        progress: &'a mut SendProgress,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(progress.parts_sent);
            let answer = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("script ran out");
            // A failure after the first part went out: the retry must resume after it.
            if answer.is_err() && progress.parts_sent == 0 {
                progress.parts_sent = 1;
                progress.provider_message_ids.push("part-1".into());
            }
            answer
        })
    }
}

fn rec(key: &[u8], payload: Option<&[u8]>) -> Record {
    Record {
        topic: "omni.outbound.v1".into(),
        partition: 0,
        offset: 0,
        key: Some(key.to_vec()),
        payload: payload.map(<[u8]>::to_vec),
        headers: Vec::new(),
    }
}

fn outbound(kind: ChannelKind) -> Vec<u8> {
    let tenant = TenantId::new("acme").unwrap();
    let channel = ChannelRef::new(kind, "page-1");
    let conversation = ConversationId::derive(&tenant, &channel, "psid-1", None);
    let data = OutboundMessage {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        recipient: "psid-1".into(),
        agent_id: Some("a1".into()),
        text: "Dạ, em kiểm tra đơn hàng ngay ạ".into(),
        subject: None,
        attachments: vec![],
        reply_to: None,
        csat_survey: false,
        template: None,
    };
    serde_json::to_vec(&CloudEvent::new(
        EventId::new_random(),
        EventType::MessageSend,
        tenant,
        &channel,
        conversation,
        Utc::now(),
        data,
    ))
    .unwrap()
}

fn dispatcher(
    sender: Arc<Scripted>,
    sink: Arc<MemorySink>,
    registry: &Registry,
) -> (Dispatcher, tokio::sync::watch::Sender<bool>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let policy = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        deadline: Duration::from_secs(30),
    };
    let d = Dispatcher::new(
        sink,
        "omni.delivery.v1",
        policy,
        DispatchMetrics::register(registry).unwrap(),
        stop_rx,
    )
    .with_sender(ChannelKind::Messenger, sender);
    (d, stop_tx)
}

fn delivery(sink: &MemorySink) -> DeliveryUpdate {
    let records = sink.records();
    assert_eq!(records.len(), 1, "exactly one delivery event");
    assert_eq!(records[0].topic, "omni.delivery.v1");
    assert_eq!(records[0].key, b"acme");
    serde_json::from_slice::<CloudEvent<DeliveryUpdate>>(&records[0].payload)
        .unwrap()
        .data
}

fn count(registry: &Registry, name: &str, label: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == label))
        .map(|m| m.get_counter().get_value())
        .sum()
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_resuming_after_sent_parts() {
    let sender = Arc::new(Scripted::default());
    sender.answers.lock().unwrap().extend([
        Err(SendError::retryable(FailureReason::RateLimited, "613")),
        Err(SendError::retryable(
            FailureReason::ProviderUnavailable,
            "502",
        )),
        Ok(SendReceipt {
            provider_message_id: Some("m_1".into()),
            segments: None,
        }),
    ]);
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let (d, _stop) = dispatcher(sender.clone(), sink.clone(), &registry);
    let payload = outbound(ChannelKind::Messenger);
    let outcome = d.handle(&rec(b"acme", Some(&payload))).await;
    assert_eq!(outcome, HandlerOutcome::Done);
    assert_eq!(*sender.seen.lock().unwrap(), [0, 1, 1]);
    let update = delivery(&sink);
    assert_eq!(update.status, DeliveryStatus::Sent);
    assert_eq!(update.provider_message_id.as_deref(), Some("m_1"));
    assert_eq!(
        count(&registry, "omni_delivery_retries_total", "rate_limited"),
        1.0
    );
    assert_eq!(count(&registry, "omni_deliveries_total", "sent"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_and_exhausted_retries_become_failed_deliveries() {
    for (script, reason, calls) in [
        (
            vec![Err(SendError::permanent(
                FailureReason::OutsideWindow,
                "(#10)",
            ))],
            "outside_window",
            1,
        ),
        (
            (0..4)
                .map(|_| {
                    Err(SendError::retryable(
                        FailureReason::ProviderUnavailable,
                        "503",
                    ))
                })
                .collect(),
            "provider_unavailable",
            4,
        ),
    ] {
        let sender = Arc::new(Scripted::default());
        sender.answers.lock().unwrap().extend(script);
        let sink = Arc::new(MemorySink::default());
        let registry = Registry::new();
        let (d, _stop) = dispatcher(sender.clone(), sink.clone(), &registry);
        let payload = outbound(ChannelKind::Messenger);
        assert_eq!(
            d.handle(&rec(b"acme", Some(&payload))).await,
            HandlerOutcome::Done
        );
        assert_eq!(sender.seen.lock().unwrap().len(), calls);
        let update = delivery(&sink);
        assert_eq!(update.status, DeliveryStatus::Failed);
        assert_eq!(update.reason.as_deref(), Some(reason));
        assert!(update.detail.is_some());
        assert_eq!(
            count(&registry, "omni_delivery_failures_total", reason),
            1.0
        );
    }
}

#[tokio::test]
async fn unconfigured_channels_fail_loudly_and_api_replies_are_left_alone() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let (d, _stop) = dispatcher(Arc::new(Scripted::default()), sink.clone(), &registry);
    let api = outbound(ChannelKind::Api);
    assert_eq!(
        d.handle(&rec(b"acme", Some(&api))).await,
        HandlerOutcome::Done
    );
    assert!(
        sink.records().is_empty(),
        "the API channel's integrator delivers"
    );
    let sms = outbound(ChannelKind::Sms);
    assert_eq!(
        d.handle(&rec(b"acme", Some(&sms))).await,
        HandlerOutcome::Done
    );
    let update = delivery(&sink);
    assert_eq!(update.reason.as_deref(), Some("channel_not_configured"));
}

#[tokio::test]
async fn bad_records_are_skipped_not_retried() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let (d, _stop) = dispatcher(Arc::new(Scripted::default()), sink.clone(), &registry);
    assert!(matches!(
        d.handle(&rec(b"acme", Some(b"{not json"))).await,
        HandlerOutcome::Skip(_)
    ));
    assert!(matches!(
        d.handle(&rec(b"acme", None)).await,
        HandlerOutcome::Skip(_)
    ));
    let payload = outbound(ChannelKind::Messenger);
    assert!(matches!(
        d.handle(&rec(b"other-tenant", Some(&payload))).await,
        HandlerOutcome::Skip(_)
    ));
    assert!(sink.records().is_empty());
}

#[tokio::test]
async fn a_newer_producers_fields_and_extension_attributes_are_read_past() {
    let sender = Arc::new(Scripted::default());
    sender
        .answers
        .lock()
        .unwrap()
        .push_back(Ok(SendReceipt::default()));
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let (d, _stop) = dispatcher(sender.clone(), sink.clone(), &registry);
    let mut event: serde_json::Value =
        serde_json::from_slice(&outbound(ChannelKind::Messenger)).unwrap();
    event["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    event["data"]["x_priority"] = "high".into();
    let payload = serde_json::to_vec(&event).unwrap();
    assert_eq!(
        d.handle(&rec(b"acme", Some(&payload))).await,
        HandlerOutcome::Done
    );
    assert_eq!(delivery(&sink).status, omni_core::DeliveryStatus::Sent);
}

#[tokio::test]
async fn a_reply_that_cannot_be_read_fails_with_a_reason_before_it_is_skipped() {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let (d, _stop) = dispatcher(Arc::new(Scripted::default()), sink.clone(), &registry);
    let mut event: serde_json::Value =
        serde_json::from_slice(&outbound(ChannelKind::Messenger)).unwrap();
    // Conversation and channel are there; the recipient is not.
    event["data"].as_object_mut().unwrap().remove("recipient");
    let payload = serde_json::to_vec(&event).unwrap();
    let outcome = d.handle(&rec(b"acme", Some(&payload))).await;
    assert!(
        matches!(&outcome, HandlerOutcome::Skip(r) if r.contains("recipient")),
        "{outcome:?}"
    );
    let update = delivery(&sink);
    assert_eq!(update.status, omni_core::DeliveryStatus::Failed);
    assert_eq!(update.reason.as_deref(), Some("invalid_message"));
    assert!(update.detail.unwrap().contains("recipient"));
    assert_eq!(
        update.outbound_event_id.to_string(),
        event["id"].as_str().unwrap()
    );
    // Without a conversation nothing can be said about it: skipped (dead-lettered) only.
    let sink = Arc::new(MemorySink::default());
    let (d, _stop) = dispatcher(
        Arc::new(Scripted::default()),
        sink.clone(),
        &Registry::new(),
    );
    event["data"]
        .as_object_mut()
        .unwrap()
        .remove("conversation_id");
    let payload = serde_json::to_vec(&event).unwrap();
    assert!(matches!(
        d.handle(&rec(b"acme", Some(&payload))).await,
        HandlerOutcome::Skip(_)
    ));
    assert!(sink.records().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_delivery_is_published_once_kafka_is_back_and_stop_leaves_it_for_redelivery() {
    let sender = Arc::new(Scripted::default());
    sender.answers.lock().unwrap().extend([
        Ok(SendReceipt::default()),
        Err(SendError::retryable(
            FailureReason::ProviderUnavailable,
            "x",
        )),
    ]);
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let (d, stop) = dispatcher(sender.clone(), sink.clone(), &registry);
    let d = Arc::new(d);
    sink.set_failing(true);
    let payload = outbound(ChannelKind::Messenger);
    let task = {
        let (d, payload) = (d.clone(), payload.clone());
        tokio::spawn(async move { d.handle(&rec(b"acme", Some(&payload))).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !task.is_finished(),
        "waits for Kafka, does not drop the result"
    );
    sink.set_failing(false);
    assert_eq!(task.await.unwrap(), HandlerOutcome::Done);
    assert_eq!(sink.records().len(), 1);
    // Asked to stop while waiting to retry: not failed, left for the next owner.
    let payload = outbound(ChannelKind::Messenger);
    let task = {
        let d = d.clone();
        tokio::spawn(async move { d.handle(&rec(b"acme", Some(&payload))).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    stop.send(true).unwrap();
    assert!(matches!(task.await.unwrap(), HandlerOutcome::Retry(_)));
    assert_eq!(sink.records().len(), 1);
}

#[tokio::test]
async fn stale_replies_are_failed_as_expired_not_sent() {
    let sender = Arc::new(Scripted::default());
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let (d, _stop) = dispatcher(sender.clone(), sink.clone(), &registry);
    let d = d.with_max_age(Duration::from_secs(3600));
    let mut event: serde_json::Value =
        serde_json::from_slice(&outbound(ChannelKind::Messenger)).unwrap();
    event["time"] = serde_json::json!((Utc::now() - chrono::Duration::hours(2)).to_rfc3339());
    let payload = serde_json::to_vec(&event).unwrap();
    assert_eq!(
        d.handle(&rec(b"acme", Some(&payload))).await,
        HandlerOutcome::Done
    );
    assert!(sender.seen.lock().unwrap().is_empty(), "nothing sent");
    assert_eq!(delivery(&sink).reason.as_deref(), Some("expired"));
}

/// A dispatcher that owns partition `home` of 4, with durable progress in `store`.
fn owning(
    sender: Arc<Scripted>,
    sink: Arc<MemorySink>,
    store: Arc<crate::progress::MemoryStore>,
) -> (Dispatcher, i32) {
    let registry = Registry::new();
    let (d, stop) = dispatcher(sender, sink, &registry);
    std::mem::forget(stop);
    let home = partition_for(b"acme", 4);
    let gate = Arc::new(PartitionGate::default());
    gate.assign([("omni.outbound.v1".to_owned(), home)]);
    let d = d.with_ownership(SendOwnership {
        partitions: 4,
        store: store.clone(),
        forward_misrouted: true,
        gate,
        progress: Arc::new(ProgressLog::new(
            store,
            "progress",
            Duration::from_secs(3600),
        )),
    });
    (d, home)
}

#[tokio::test]
async fn a_reply_taken_again_is_not_sent_twice_and_misrouted_ones_are_forwarded() {
    let store = Arc::new(crate::progress::MemoryStore::default());
    let sink = Arc::new(MemorySink::default());
    let sender = Arc::new(Scripted::default());
    sender
        .answers
        .lock()
        .unwrap()
        .push_back(Ok(SendReceipt::default()));
    let (d, home) = owning(sender.clone(), sink.clone(), store.clone());
    let payload = outbound(ChannelKind::Messenger);
    let mut record = rec(b"acme", Some(&payload));
    record.partition = home;
    assert_eq!(d.handle(&record).await, HandlerOutcome::Done);
    assert_eq!(sender.seen.lock().unwrap().len(), 1);
    // Redelivered (an offset not committed), here or to another replica: finished, skipped.
    let (other, _) = owning(sender.clone(), sink.clone(), store.clone());
    assert_eq!(other.handle(&record).await, HandlerOutcome::Done);
    assert_eq!(sender.seen.lock().unwrap().len(), 1, "not sent again");
    assert_eq!(sink.records().len(), 1, "its fate published once");

    // A part left at the provider by a replica that died: unknown, not resent.
    let payload = outbound(ChannelKind::Messenger);
    let event: CloudEvent<serde_json::Value> = serde_json::from_slice(&payload).unwrap();
    let at_provider = ReplyProgress {
        at_provider: true,
        time: Utc::now().timestamp_millis(),
        ..ReplyProgress::default()
    };
    store
        .put(
            "progress",
            home,
            event.id.to_string().as_bytes(),
            Some(&serde_json::to_vec(&at_provider).unwrap()),
        )
        .await
        .unwrap();
    let (fresh, _) = owning(sender.clone(), sink.clone(), store.clone());
    let mut record = rec(b"acme", Some(&payload));
    record.partition = home;
    assert_eq!(fresh.handle(&record).await, HandlerOutcome::Done);
    assert_eq!(sender.seen.lock().unwrap().len(), 1, "not resent");
    let last: CloudEvent<DeliveryUpdate> =
        serde_json::from_slice(&sink.records().last().unwrap().payload).unwrap();
    assert_eq!(last.data.reason.as_deref(), Some("outcome_unknown"));

    // On another partition, or keyed otherwise: forwarded to the tenant's partition, not sent.
    let payload = outbound(ChannelKind::Messenger);
    let mut misrouted = rec(b"someone-else", Some(&payload));
    misrouted.partition = (home + 1) % 4;
    assert_eq!(fresh.handle(&misrouted).await, HandlerOutcome::Done);
    assert_eq!(sender.seen.lock().unwrap().len(), 1);
    let forwarded = store.writes();
    let (topic, partition, key, value) = forwarded.last().unwrap();
    assert_eq!(
        (topic.as_str(), *partition, key.as_slice()),
        ("omni.outbound.v1", home, b"acme".as_slice())
    );
    assert_eq!(value.as_deref(), Some(payload.as_slice()), "same bytes");
}

#[test]
fn backoff_doubles_with_bounded_jitter_and_honours_retry_after() {
    let p = RetryPolicy::default();
    let b1 = p.backoff(1, None, 0);
    let b3 = p.backoff(3, None, 0);
    assert_eq!(b1, Duration::from_millis(500));
    assert_eq!(b3, Duration::from_secs(2));
    assert_eq!(p.backoff(1, None, 25), Duration::from_millis(625));
    assert_eq!(p.backoff(20, None, 0), p.max_backoff);
    assert_eq!(
        p.backoff(1, Some(Duration::from_secs(7)), 0),
        Duration::from_secs(7)
    );
}

#[test]
fn one_conversation_maps_to_one_order_key() {
    let a = outbound(ChannelKind::Messenger);
    let b = outbound(ChannelKind::Messenger);
    assert_eq!(
        Dispatcher::order_key(Some(&a)),
        Dispatcher::order_key(Some(&b))
    );
    let other = outbound(ChannelKind::Zalo);
    assert_ne!(
        Dispatcher::order_key(Some(&a)),
        Dispatcher::order_key(Some(&other))
    );
}
