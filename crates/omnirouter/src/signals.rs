//! Agents' typing indicators and read marks to Messenger and Instagram: the agent API's
//! [`AgentSignals`] over the Meta senders. Best effort: one Send API call each, in the
//! background, never stored in Kafka and never retried (a late "typing" is worse than none);
//! every outcome is counted in `omni_agent_signals_total{channel,signal,result}` and a failure
//! is logged at `warn` (never with a token).

use omni_core::{ChannelKind, ChannelRef, TenantId};
use omni_router::api::{AgentSignal, AgentSignals};
use omni_social::messenger::{MessengerSender, SenderAction};
use prometheus::{IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::Arc;

/// The Meta senders by channel kind, and the outcome counter.
pub struct MetaSignals {
    senders: HashMap<ChannelKind, Arc<MessengerSender>>,
    outcomes: IntCounterVec,
}

impl MetaSignals {
    /// Signals through `senders`, counted in `registry`.
    pub fn new(
        senders: impl IntoIterator<Item = (ChannelKind, Arc<MessengerSender>)>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "omni_agent_signals_total",
                "Agents' typing indicators and read marks sent to a provider, by result \
                 (sent, or the failure reason).",
            ),
            &["channel", "signal", "result"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self {
            senders: senders.into_iter().collect(),
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

impl AgentSignals for MetaSignals {
    fn handles(&self, kind: ChannelKind) -> bool {
        self.senders.contains_key(&kind)
    }

    fn send(&self, tenant: &TenantId, channel: &ChannelRef, recipient: &str, signal: AgentSignal) {
        let Some(sender) = self.senders.get(&channel.kind).cloned() else {
            return;
        };
        let outcomes = self.outcomes.clone();
        let (tenant, channel, recipient) = (tenant.clone(), channel.clone(), recipient.to_owned());
        tokio::spawn(async move {
            let result = sender
                .sender_action(&tenant, &channel.account, &recipient, action(signal))
                .await;
            let label = match &result {
                Ok(()) => "sent",
                Err(e) => e.reason.as_str(),
            };
            outcomes
                .with_label_values(&[channel.kind.as_str(), signal.as_str(), label])
                .inc();
            if let Err(e) = result {
                tracing::warn!(tenant = %tenant, channel = %channel.kind,
                    account = %channel.account, signal = signal.as_str(), error = %e,
                    "agent signal not delivered");
            }
        });
    }
}
