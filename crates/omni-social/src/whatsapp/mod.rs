//! WhatsApp Business through Meta's Cloud API: the WhatsApp Business Account webhook in
//! (object `whatsapp_business_account`, its own callback URL), `/<phone number id>/messages`
//! out.
//!
//! - [`WhatsappChannel`] is the webhook adapter: the `GET` subscription handshake and the
//!   `X-Hub-Signature-256` check as Messenger's (one shared [`crate::meta`]), then every
//!   change's `messages` and `statuses`.
//! - [`WhatsappSender`] sends replies and templates, and marks messages read (with or
//!   without the typing indicator) for agents.
//! - [`config`]: `[whatsapp]` and `[tenants.<id>.whatsapp]` as written, and their validation.
//!
//! What each item becomes:
//! | item | event |
//! |---|---|
//! | `messages[]` text, media (image, video, audio, document, sticker), location, contacts | `omni.message.received` on `omni.inbound.v1` |
//! | `messages[]` interactive `button_reply` / `list_reply`, template `button` | `omni.message.received`, text = the title, `payload` = the id |
//! | `statuses[]` `sent`, `delivered`, `read`, `failed` of a reply we sent | `omni.delivery.updated` on `omni.delivery.v1`, Meta's error code as `reason` |
//! | `statuses[]` of a message another app sent, reactions, `system`, `unsupported`, unknown | accepted and counted as ignored |
//!
//! Media arrive as an id, not a URL: an attachment's `url` is the Graph media endpoint
//! (`<graph_base_url>/<version>/<media id>`), which answers the download URL to a caller with
//! the number's access token.
//!
//! Tenant isolation: a change for a phone number id the tenant does not have is refused and
//! counted (`omni_ingress_refused_items_total{reason="unknown_account"}`), never published; the
//! request is still answered 200, as Meta retries anything else for days.

pub mod component;
pub mod config;
mod inbound;
mod send;

#[cfg(test)]
mod tests;

pub use inbound::WhatsappChannel;
pub use send::{WhatsappSendSettings, WhatsappSender};

use omni_core::Secret;
use std::collections::HashMap;

/// One tenant's WhatsApp app and phone numbers.
#[derive(Debug, Clone)]
pub struct WhatsappTenant {
    /// The Meta app secret: the key of the webhook signatures.
    pub app_secret: Secret,
    /// The token typed into the app's WhatsApp webhook settings, echoed in the handshake.
    pub verify_token: Secret,
    /// The tenant's business phone numbers, by phone number id.
    pub numbers: HashMap<String, NumberSettings>,
}

/// One business phone number's sending settings.
#[derive(Debug, Clone)]
pub struct NumberSettings {
    /// A system user's access token with `whatsapp_business_messaging`, sent as a bearer
    /// header.
    pub access_token: Secret,
}
