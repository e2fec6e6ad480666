//! Agents' typing indicators and read marks to Meta's channels: the agent API's
//! [`AgentSignals`] over the Messenger, Instagram and WhatsApp senders. Best effort: one API
//! call each, in the background, never stored in Kafka and never retried (a late "typing" is
//! worse than none); every outcome is counted in
//! `omni_agent_signals_total{channel,signal,result}` and a failure is logged at `warn`
//! (never with a token).
//!
//! WhatsApp has no sender actions: "seen" marks the customer's message read, "typing on"
//! marks it read with the typing indicator (shown until the reply or for 25 s), and "typing
//! off" has no call at all (counted as `skipped`).

use omni_channel::SendError;
use omni_core::{ChannelKind, TenantId};
use omni_router::api::{AgentSignal, AgentSignals, SignalTarget};
use omni_social::messenger::{MessengerSender, SenderAction};
use omni_social::whatsapp::WhatsappSender;
use prometheus::{IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::Arc;

/// The Meta senders by channel kind, and the outcome counter.
pub struct MetaSignals {
    senders: HashMap<ChannelKind, Arc<MessengerSender>>,
    whatsapp: Arc<WhatsappSender>,
    outcomes: IntCounterVec,
}

impl MetaSignals {
    /// Signals through `senders` (Messenger, Instagram) and `whatsapp`, counted in `registry`.
    pub fn new(
        senders: impl IntoIterator<Item = (ChannelKind, Arc<MessengerSender>)>,
        whatsapp: Arc<WhatsappSender>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "omni_agent_signals_total",
                "Agents' typing indicators and read marks sent to a provider, by result \
                 (sent, skipped, or the failure reason).",
            ),
            &["channel", "signal", "result"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self {
            senders: senders.into_iter().collect(),
            whatsapp,
            outcomes,
        })
    }
}

fn action(signal: AgentSignal) -> SenderAction {
    match signal {
        AgentSignal::TypingOn => SenderAction::TypingOn,
        AgentSignal::TypingOff => SenderAction::TypingOff,
        AgentSignal::Seen => SenderAction::MarkSeen,
    }
}

/// What a signal did: sent, skipped (nothing to send), or failed.
enum Outcome {
    Sent,
    Skipped,
    Failed(SendError),
}

impl AgentSignals for MetaSignals {
    fn handles(&self, kind: ChannelKind) -> bool {
        kind == ChannelKind::Whatsapp || self.senders.contains_key(&kind)
    }

    fn needs_message_id(&self, kind: ChannelKind) -> bool {
        kind == ChannelKind::Whatsapp
    }

    fn send(&self, to: SignalTarget<'_>, signal: AgentSignal) {
        let outcomes = self.outcomes.clone();
        let tenant: TenantId = to.tenant.clone();
        let channel = to.channel.clone();
        let recipient = to.recipient.to_owned();
        let message_id = to.message_id.map(str::to_owned);
        let messenger = self.senders.get(&channel.kind).cloned();
        let whatsapp = self.whatsapp.clone();
        tokio::spawn(async move {
            let outcome = match (channel.kind, messenger) {
                (ChannelKind::Whatsapp, _) => match (signal, message_id) {
                    // No "typing off" on WhatsApp; a missing id is refused by the API.
                    (AgentSignal::TypingOff, _) | (_, None) => Outcome::Skipped,
                    (_, Some(message_id)) => {
                        let typing = signal == AgentSignal::TypingOn;
                        let sent = whatsapp
                            .mark_read(&tenant, &channel.account, &message_id, typing)
                            .await;
                        sent.map_or_else(Outcome::Failed, |()| Outcome::Sent)
                    }
                },
                (_, Some(sender)) => {
                    let sent = sender
                        .sender_action(&tenant, &channel.account, &recipient, action(signal))
                        .await;
                    sent.map_or_else(Outcome::Failed, |()| Outcome::Sent)
                }
                (_, None) => Outcome::Skipped,
            };
            let label = match &outcome {
                Outcome::Sent => "sent",
                Outcome::Skipped => "skipped",
                Outcome::Failed(e) => e.reason.as_str(),
            };
            outcomes
                .with_label_values(&[channel.kind.as_str(), signal.as_str(), label])
                .inc();
            if let Outcome::Failed(e) = outcome {
                tracing::warn!(tenant = %tenant, channel = %channel.kind,
                    account = %channel.account, signal = signal.as_str(), error = %e,
                    "agent signal not delivered");
            }
        });
    }
}
