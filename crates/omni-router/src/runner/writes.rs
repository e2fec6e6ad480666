//! Everything one step writes to Kafka, gathered first and written at once.

use super::*;

/// Everything one step (a batch, a claim, a reconfiguration) writes to Kafka.
#[derive(Default)]
pub(super) struct Writes {
    /// Latest value per state key (several inputs may change one entity), in key order.
    pub(super) state: BTreeMap<(i32, String), Option<omni_routing::StateEntry>>,
    /// The owner epoch to stamp on each partition's state records.
    pub(super) epochs: BTreeMap<i32, u64>,
    pub(super) progress: BTreeMap<(String, i32), Progress>,
    /// The routing events, each with the conversation it is about (for the API history).
    pub(super) events: Vec<(TenantId, Option<ConversationId>, EventJson)>,
    /// The `traceparent` each of `events` carries: the trace of the input that caused it.
    pub(super) event_traces: Vec<Option<String>>,
    /// The trace of the input being applied, for the events it causes.
    pub(super) trace: Option<String>,
    pub(super) replayed: Vec<(Vec<u8>, EventJson)>,
    pub(super) forwards: Vec<(Rec, i32)>,
    /// Inputs the router cannot use, with why, for the dead-letter topic.
    pub(super) dead_letters: Vec<(Rec, String)>,
    pub(super) observations: Vec<(TenantId, omni_routing::Observation)>,
}

impl Writes {
    pub(super) fn changes(
        &mut self,
        tenant: &TenantId,
        partition: i32,
        epoch: u64,
        changes: Vec<omni_routing::StateChange>,
    ) {
        self.epochs.entry(partition).or_insert(epoch);
        for c in changes {
            self.state
                .insert((partition, format!("{}/{}", tenant, c.key)), c.entry);
        }
    }

    /// Adds the events and observations of `outputs`; event `i`'s id is derived from
    /// `id_parts(i)`, so the same step always yields the same ids. Returns the events, encoded
    /// (for the progress record).
    pub(super) fn outputs<const N: usize>(
        &mut self,
        tenant: &TenantId,
        now: Timestamp,
        outputs: &[Output],
        id_parts: impl Fn(usize) -> [String; N],
    ) -> Result<Vec<EventJson>, omni_core::EncodeError> {
        let mut step_events = Vec::new();
        for (i, out) in outputs.iter().enumerate() {
            match out {
                Output::Event(ev) => {
                    let parts = id_parts(i);
                    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                    let id = EventId::derived(tenant, &refs);
                    let env = crate::wire::routing_envelope(tenant, id, time_of(now.0), ev);
                    let json = serde_json::value::to_raw_value(&env).map_err(|source| {
                        omni_core::EncodeError {
                            what: "routing event",
                            source,
                        }
                    })?;
                    step_events.push(json.clone());
                    self.events
                        .push((tenant.clone(), crate::wire::routing_conversation(ev), json));
                    self.event_traces.push(self.trace.clone());
                }
                Output::Observe(o) => self.observations.push((tenant.clone(), o.clone())),
            }
        }
        Ok(step_events)
    }
}

/// The values of one step's records, encoded.
struct Encoded<'w> {
    /// Per state key, in key order (`None`: a tombstone).
    state: Vec<Option<Vec<u8>>>,
    /// (partition, key, value) of the progress records.
    progress: Vec<(i32, String, Vec<u8>)>,
    /// (key, value) of the routing events, replayed ones last (encoded already).
    events: Vec<(&'w [u8], &'w [u8])>,
    /// (key, value) of the customer messages those events send (CSAT survey questions), for
    /// the outbound topic: written with their event, so a replay writes them again with the
    /// same ids.
    outbound: Vec<(&'w [u8], Vec<u8>)>,
}

impl<'w> Encoded<'w> {
    fn of(writes: &'w Writes) -> Result<Self, omni_core::EncodeError> {
        let state: Vec<Option<Vec<u8>>> = writes
            .state
            .values()
            .map(|entry| {
                entry
                    .as_ref()
                    .map(|e| omni_core::to_json("router state entry", e))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let progress: Vec<(i32, String, Vec<u8>)> = writes
            .progress
            .iter()
            .map(|((topic, p), prog)| {
                Ok((
                    *p,
                    format!("~progress/{topic}"),
                    omni_core::to_json("router progress", prog)?,
                ))
            })
            .collect::<Result<_, omni_core::EncodeError>>()?;
        let events: Vec<(&[u8], &[u8])> = writes
            .events
            .iter()
            .map(|(t, _, e)| (t.as_str().as_bytes(), e.get().as_bytes()))
            .chain(
                writes
                    .replayed
                    .iter()
                    .map(|(k, e)| (k.as_slice(), e.get().as_bytes())),
            )
            .collect();
        // A CSAT survey event also sends its question; only those few are parsed again.
        let survey = omni_core::EventType::RoutingCsatSurvey.as_str().as_bytes();
        let outbound: Vec<(&[u8], Vec<u8>)> = events
            .iter()
            .filter(|(_, e)| memchr::memmem::find(e, survey).is_some())
            .filter_map(|(k, e)| {
                let event = serde_json::from_slice::<serde_json::Value>(e).ok()?;
                Some((*k, crate::wire::survey_message(&event)?))
            })
            .map(|(k, m)| Ok((k, omni_core::to_json("survey message", &m)?)))
            .collect::<Result<_, omni_core::EncodeError>>()?;
        Ok(Self {
            state,
            progress,
            events,
            outbound,
        })
    }
}

impl Router {
    /// Writes state (with the owner epoch and member), progress, routing events and forwarded records in
    /// one batch and waits for the broker. Their order does not matter: with events but no
    /// state, a replay recomputes the same events (same ids) from the old state (the engine is
    /// deterministic, timers included); with state but no events, the progress record
    /// re-publishes them. Only the commit, by the caller, must come last. Returns the encoded
    /// routing events of `writes.events` (not the replayed ones), for the API history.
    pub(super) async fn write(&self, writes: &Writes) -> Result<Vec<Box<str>>, RouterError> {
        let state_topic = self.bus.topics.router_state.as_str();
        let routing_topic = self.bus.topics.routing.as_str();
        let epochs: BTreeMap<i32, String> = writes
            .state
            .keys()
            .map(|(p, _)| *p)
            .chain(writes.progress.keys().map(|(_, p)| *p))
            .map(|p| {
                let e = writes
                    .epochs
                    .get(&p)
                    .copied()
                    .or_else(|| self.lock().owned.get(&p).map(|o| o.epoch))
                    .unwrap_or(0);
                (p, e.to_string())
            })
            .collect();
        let member = self.lock().member.clone();
        let epoch_headers: BTreeMap<i32, [(&str, &[u8]); 2]> = epochs
            .iter()
            .map(|(p, e)| {
                (
                    *p,
                    [
                        (EPOCH_HEADER, e.as_bytes()),
                        (MEMBER_HEADER, member.as_bytes()),
                    ],
                )
            })
            .collect();
        let headers_of =
            |p: &i32| -> &[(&str, &[u8])] { epoch_headers.get(p).map_or(&[], |h| h.as_slice()) };
        let Encoded {
            state: state_values,
            progress: progress_values,
            events: event_values,
            outbound: outbound_values,
        } = Encoded::of(writes)?;
        let outbound_topic = self.bus.topics.outbound.as_str();
        let forward_headers: Vec<Vec<(&str, &[u8])>> = writes
            .forwards
            .iter()
            .map(|(rec, _)| {
                rec.headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect()
            })
            .collect();
        let dead_letter_headers: Vec<Vec<(String, Vec<u8>)>> = writes
            .dead_letters
            .iter()
            .map(|(rec, reason)| {
                omni_bus::dead_letter::headers(
                    &rec.headers,
                    &rec.topic,
                    rec.partition,
                    rec.offset,
                    "router",
                    reason,
                )
            })
            .collect();
        let dead_letter_refs: Vec<Vec<(&str, &[u8])>> = dead_letter_headers
            .iter()
            .map(|hs| hs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect())
            .collect();
        let dead_letter_topic = self.bus.topics.dead_letter.as_str();
        // The routing events carry their input's trace (replayed ones, written again, none).
        let event_headers: Vec<Vec<(&str, &[u8])>> = (0..event_values.len())
            .map(|i| match writes.event_traces.get(i) {
                Some(Some(tp)) => vec![(omni_bus::trace::TRACEPARENT, tp.as_bytes())],
                _ => Vec::new(),
            })
            .collect();
        let records: Vec<OutRecord<'_>> =
            writes
                .state
                .keys()
                .zip(&state_values)
                .map(|((p, key), value)| OutRecord {
                    topic: state_topic,
                    partition: Some(*p),
                    key: key.as_bytes(),
                    payload: value.as_deref(),
                    headers: headers_of(p),
                })
                .chain(progress_values.iter().map(|(p, key, value)| OutRecord {
                    topic: state_topic,
                    partition: Some(*p),
                    key: key.as_bytes(),
                    payload: Some(value),
                    headers: headers_of(p),
                }))
                .chain(
                    event_values
                        .iter()
                        .zip(&event_headers)
                        .map(|((key, value), headers)| OutRecord {
                            topic: routing_topic,
                            partition: None,
                            key,
                            payload: Some(*value),
                            headers,
                        }),
                )
                .chain(outbound_values.iter().map(|(key, value)| OutRecord {
                    topic: outbound_topic,
                    partition: None,
                    key,
                    payload: Some(value),
                    headers: &[],
                }))
                .chain(writes.forwards.iter().zip(&forward_headers).map(
                    |((rec, home), headers)| OutRecord {
                        topic: rec.topic.as_str(),
                        partition: Some(*home),
                        key: &rec.key,
                        payload: rec.payload.as_deref(),
                        headers,
                    },
                ))
                .chain(writes.dead_letters.iter().zip(&dead_letter_refs).map(
                    |((rec, _), headers)| OutRecord {
                        topic: dead_letter_topic,
                        partition: None,
                        key: &rec.key,
                        payload: rec.payload.as_deref(),
                        headers,
                    },
                ))
                .collect();
        if !records.is_empty() {
            self.producer.send_batch(&records).await?;
        }
        for (rec, _) in &writes.dead_letters {
            self.bus_metrics
                .dead_letters
                .with_label_values(&["router", rec.topic.as_str()])
                .inc();
        }
        drop(records);
        Ok(writes
            .events
            .iter()
            .map(|(_, _, json)| Box::from(json.get()))
            .collect())
    }

    /// After a write: routing events into the API history (as the JSON written, which takes a
    /// fraction of the memory of a parsed value: the history holds up to [`HISTORY_LEN`]
    /// events for every conversation a tenant remembers), observations into the metrics.
    pub(super) fn observe(&self, writes: &Writes, encoded: Vec<Box<str>>) {
        {
            let mut s = self.lock();
            for ((tenant, conv, _), json) in writes.events.iter().zip(encoded) {
                let Some(slot) = s.tenants.get_mut(tenant) else {
                    continue;
                };
                if let Some(c) = *conv {
                    let h = slot.history.entry(c).or_default();
                    h.push_back(json);
                    if h.len() > HISTORY_LEN {
                        h.pop_front();
                    }
                }
            }
        }
        for (tenant, o) in &writes.observations {
            self.metrics.observe(tenant.as_str(), o);
        }
    }
}
