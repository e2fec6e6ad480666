//! One outbound record from the outbound topic to its fate: the partitioning contract, the
//! stored progress of an earlier owner, the send with its retries under the partition's gate.

use chrono::{DateTime, Utc};
use omni_bus::{partition_for, HandlerOutcome, Record};
use omni_core::{CloudEvent, EventType, OutboundMessage};
use serde::Deserialize as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    ChannelSender, Checkpoint, CheckpointFuture, Dispatcher, FailureReason, SendError,
    SendOwnership, SendProgress, SendReceipt, SendRequest,
};
use crate::progress::{ProgressLog, ReplyProgress};

/// How a reply's attempts ended.
enum Attempts {
    /// Sent, or failed for good.
    Finished(Result<SendReceipt, SendError>),
    /// The daemon is stopping: leave the record for redelivery.
    Stopped,
    /// The partition was revoked: leave the record to its next owner.
    Abandoned,
}

/// The dispatcher's [`Checkpoint`]: one reply's progress on the progress topic, written again
/// until Kafka takes it (the provider is not called meanwhile).
struct ProgressCheckpoint {
    progress: Arc<ProgressLog>,
    partition: i32,
    id: String,
    time: i64,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Checkpoint for ProgressCheckpoint {
    fn save<'a>(
        &'a self,
        parts_sent: usize,
        provider_message_ids: &'a [String],
        at_provider: bool,
    ) -> CheckpointFuture<'a> {
        Box::pin(async move {
            let state = ReplyProgress {
                parts_sent,
                provider_message_ids: provider_message_ids.to_vec(),
                at_provider,
                finished: false,
                time: self.time,
            };
            let mut wait = Duration::from_millis(100);
            loop {
                match self.progress.put(self.partition, &self.id, &state).await {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::warn!(error = %e, event_id = %self.id,
                        "cannot record outbound progress yet, retrying"),
                }
                let mut stop = self.stop.clone();
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => {
                        return Err(SendError::retryable(
                            FailureReason::ProviderUnavailable,
                            "stopping before the progress was recorded",
                        ));
                    }
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        })
    }
}

impl Dispatcher {
    /// Handles one outbound record: send, retry while it may pass, publish the result. A span
    /// in the reply's trace (its `traceparent` header: the CRM's, or the agent API request's)
    /// covers it, and the delivery event carries it on.
    pub async fn handle(&self, record: &Record) -> HandlerOutcome {
        use omni_bus::trace;
        let span = trace::start(
            "deliver a reply",
            trace::Kind::Consumer,
            trace::header_of(&record.headers),
            vec![trace::KeyValue::new(
                "messaging.destination.name",
                record.topic.clone(),
            )],
        );
        trace::in_trace(trace::traceparent_of(&span), self.handle_traced(record)).await
    }

    async fn handle_traced(&self, record: &Record) -> HandlerOutcome {
        let (request, time) = match self.take(record).await {
            Ok(Some(taken)) => taken,
            Ok(None) => return HandlerOutcome::Done,
            Err(outcome) => return outcome,
        };
        let kind = request.message.channel.kind;
        let started = Instant::now();
        let event_ms = time.timestamp_millis();
        // What an earlier owner (or an earlier copy of this record) did with this reply.
        let (mut progress, generation) = match self.resume(record, &request, event_ms).await {
            Ok(Some(resumed)) => resumed,
            Ok(None) => return HandlerOutcome::Done,
            Err(outcome) => return outcome,
        };
        let age = (Utc::now() - time).to_std().unwrap_or(Duration::ZERO);
        let result = match self
            .attempt(record, &request, &mut progress, generation, age)
            .await
        {
            Ok(result) => result,
            Err(outcome) => return outcome,
        };
        let update = self.record(&request, &result);
        self.metrics
            .duration
            .with_label_values(&[kind.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let outcome = self.publish(update).await;
        if outcome == HandlerOutcome::Done {
            self.mark_finished(record, &request, &progress, event_ms)
                .await;
        }
        outcome
    }

    /// Reads a record into the reply to send and its event time, applying the partitioning
    /// contract (a record away from its tenant's partition is forwarded or left, not sent).
    /// `None`: nothing to send here (not a reply, or a kind delivered elsewhere).
    async fn take(
        &self,
        record: &Record,
    ) -> Result<Option<(SendRequest, DateTime<Utc>)>, HandlerOutcome> {
        let key = record.key.as_deref();
        let Some(payload) = record.payload.as_deref() else {
            return Err(HandlerOutcome::Skip(
                "outbound record without a value".into(),
            ));
        };
        let event: CloudEvent<serde_json::Value> = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => return Err(HandlerOutcome::Skip(format!("not a CloudEvent: {e}"))),
        };
        if event.event_type != EventType::MessageSend {
            return Ok(None);
        }
        tracing::debug!(event_id = %event.id, partition = record.partition,
            offset = record.offset, "outbound reply taken");
        let tenant_key = event.tenant.as_str().as_bytes();
        if let Some(own) = &self.ownership {
            // The partitioning contract: a tenant's replies are sent from its partition only.
            let home = partition_for(tenant_key, own.partitions);
            if key != Some(tenant_key) {
                return Err(self.forward(own, record, tenant_key, home, "key").await);
            }
            if record.partition != home {
                if own.forward_misrouted {
                    return Err(self
                        .forward(own, record, tenant_key, home, "partition")
                        .await);
                }
                self.metrics
                    .misrouted
                    .with_label_values(&["left_to_router"])
                    .inc();
                return Ok(None);
            }
        } else if key != Some(tenant_key) {
            return Err(HandlerOutcome::Skip(format!(
                "record key does not match the event's tenant {}",
                event.tenant
            )));
        }
        let message = match OutboundMessage::deserialize(&event.data) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("bad omni.message.send data: {e}");
                return Err(self.refuse(&event, reason).await);
            }
        };
        if self.elsewhere.contains(&message.channel.kind) {
            return Ok(None);
        }
        let request = SendRequest {
            event_id: event.id,
            message,
        };
        Ok(Some((request, event.time)))
    }

    /// The reply's progress so far and the partition's generation it is sent under. With
    /// ownership: the stored progress of an earlier owner, written on from here on (`None`:
    /// the reply is finished already). Without: fresh progress kept in memory.
    async fn resume(
        &self,
        record: &Record,
        request: &SendRequest,
        event_ms: i64,
    ) -> Result<Option<(SendProgress, Option<u64>)>, HandlerOutcome> {
        let Some(own) = &self.ownership else {
            return Ok(Some((SendProgress::default(), None)));
        };
        let Some(g) = own.gate.generation(&record.topic, record.partition) else {
            return Err(HandlerOutcome::Abandon("partition no longer held".into()));
        };
        let id = request.event_id.to_string();
        let gate = own.gate.clone();
        let topic = record.topic.clone();
        let stored = own
            .progress
            .get(
                record.partition,
                g,
                &id,
                Utc::now().timestamp_millis(),
                |p| gate.holds(&topic, p),
            )
            .await;
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                return Err(HandlerOutcome::Retry(format!(
                    "cannot read outbound progress: {e}"
                )))
            }
        };
        let checkpoint: Arc<dyn Checkpoint> = Arc::new(ProgressCheckpoint {
            progress: own.progress.clone(),
            partition: record.partition,
            id,
            time: event_ms,
            stop: self.stop.clone(),
        });
        if let Some(p) = &stored {
            let state = match (p.finished, p.at_provider) {
                (true, _) => "finished",
                (false, true) => "at_provider",
                (false, false) => "partial",
            };
            self.metrics.resumed.with_label_values(&[state]).inc();
            tracing::info!(event_id = %request.event_id, state, parts_sent = p.parts_sent,
                "outbound reply taken again: resuming from its stored progress");
            if p.finished {
                return Ok(None);
            }
        }
        let progress = match stored {
            Some(p) => SendProgress::resumed(
                p.parts_sent,
                p.provider_message_ids,
                p.at_provider,
                Some(checkpoint),
            ),
            None => SendProgress::resumed(0, Vec::new(), false, Some(checkpoint)),
        };
        Ok(Some((progress, Some(g))))
    }

    /// The reply's fate: expired, of unknown outcome (a part was at the provider when a
    /// replica stopped), no sender, or what its sender made of it. `Err`: the record is left
    /// for redelivery (stopping) or to the partition's next owner (revoked).
    async fn attempt(
        &self,
        record: &Record,
        request: &SendRequest,
        progress: &mut SendProgress,
        generation: Option<u64>,
        age: Duration,
    ) -> Result<Result<SendReceipt, SendError>, HandlerOutcome> {
        let kind = request.message.channel.kind;
        match self.senders.get(&kind) {
            _ if self.max_age.is_some_and(|max| age > max) => Ok(Err(SendError::permanent(
                FailureReason::Expired,
                format!("written {}s ago, older than the maximum age", age.as_secs()),
            ))),
            Some(sender) if request.message.template.is_some() && !sender.sends_templates() => {
                Ok(Err(SendError::permanent(
                    FailureReason::Unsupported,
                    format!("{kind} has no message templates (Zalo ZNS has)"),
                )))
            }
            Some(sender) if progress.uncertain && !sender.deduplicates(request) => {
                Ok(Err(SendError::permanent(
                    FailureReason::OutcomeUnknown,
                    format!(
                        "a replica stopped while part {} was at the provider: not sent again",
                        progress.parts_sent + 1
                    ),
                )))
            }
            Some(sender) => {
                let place = generation.map(|g| (record, g));
                match self
                    .send_with_retries(sender.as_ref(), request, progress, place)
                    .await
                {
                    Attempts::Finished(result) => Ok(result),
                    Attempts::Stopped => Err(HandlerOutcome::Retry(
                        "stopping while retrying a send".into(),
                    )),
                    Attempts::Abandoned => Err(HandlerOutcome::Abandon(
                        "partition revoked while sending".into(),
                    )),
                }
            }
            None => Ok(Err(SendError::permanent(
                FailureReason::ChannelNotConfigured,
                format!("this daemon has no {kind} sender configured"),
            ))),
        }
    }

    /// Marks a reply whose fate is on the delivery topic finished in its stored progress, so
    /// the next owner skips it.
    async fn mark_finished(
        &self,
        record: &Record,
        request: &SendRequest,
        progress: &SendProgress,
        event_ms: i64,
    ) {
        let Some(own) = &self.ownership else {
            return;
        };
        let finished = ReplyProgress {
            parts_sent: progress.parts_sent,
            provider_message_ids: progress.provider_message_ids.clone(),
            at_provider: false,
            finished: true,
            time: event_ms,
        };
        let id = request.event_id.to_string();
        // If this write is lost, the next owner publishes the same fate again (same event
        // id); nothing is sent again either way.
        if let Err(e) = own.progress.put(record.partition, &id, &finished).await {
            tracing::warn!(error = %e, event_id = %id, "cannot mark the reply finished");
        }
    }

    /// Copies a record to its tenant's partition, keyed by the tenant, same value; it is sent
    /// from there by the partition's owner.
    async fn forward(
        &self,
        own: &SendOwnership,
        record: &Record,
        tenant_key: &[u8],
        home: i32,
        reason: &str,
    ) -> HandlerOutcome {
        let value = record.payload.as_deref();
        match own.store.put(&record.topic, home, tenant_key, value).await {
            Ok(()) => {
                self.metrics.misrouted.with_label_values(&[reason]).inc();
                tracing::info!(
                    partition = record.partition,
                    offset = record.offset,
                    home,
                    reason,
                    "outbound record not on its tenant's partition: forwarded there"
                );
                HandlerOutcome::Done
            }
            Err(e) => HandlerOutcome::Retry(format!("cannot forward a misrouted reply: {e}")),
        }
    }

    /// Sends, retrying retryable failures per the policy. With ownership each attempt runs
    /// under a permit of the record's partition, so a revocation waits for it.
    async fn send_with_retries(
        &self,
        sender: &dyn ChannelSender,
        request: &SendRequest,
        progress: &mut SendProgress,
        place: Option<(&Record, u64)>,
    ) -> Attempts {
        let kind = request.message.channel.kind;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let permit = match (&self.ownership, place) {
                (Some(own), Some((record, generation))) => {
                    match own.gate.permit(&record.topic, record.partition) {
                        Some(p) if p.generation() == generation => Some(p),
                        _ => return Attempts::Abandoned,
                    }
                }
                _ => None,
            };
            let error = match sender.send(request, progress).await {
                Ok(receipt) => return Attempts::Finished(Ok(receipt)),
                Err(e) => e,
            };
            drop(permit);
            if *self.stop.borrow() && error.retryable {
                return Attempts::Stopped;
            }
            let wait = self
                .policy
                .backoff(attempt, error.retry_after, request.event_id.as_u128());
            let out_of_time = started.elapsed() + wait > self.policy.deadline;
            if !error.retryable || attempt >= self.policy.max_attempts || out_of_time {
                if progress.uncertain && error.reason != FailureReason::OutcomeUnknown {
                    // The last call's fate was never learnt: do not report a plain failure.
                    return Attempts::Finished(Err(SendError::permanent(
                        FailureReason::OutcomeUnknown,
                        format!("an earlier call's fate is unknown; last: {}", error.detail),
                    )));
                }
                return Attempts::Finished(Err(error));
            }
            self.metrics
                .retries
                .with_label_values(&[kind.as_str(), error.reason.as_str()])
                .inc();
            tracing::info!(channel = %kind, tenant = %request.message.tenant,
                event_id = %request.event_id, attempt, reason = %error.reason,
                detail = %error.detail, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(0),
                "send failed, will retry");
            let mut stop = self.stop.clone();
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Attempts::Stopped,
                () = tokio::time::sleep(wait) => {}
            }
            attempt += 1;
        }
    }
}
