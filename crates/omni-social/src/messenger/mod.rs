//! Facebook Messenger and Instagram Direct: Meta's messaging webhook in (objects `page` and
//! `instagram`, one app, one callback URL), the Graph Send API out. The two products share all
//! code; what differs between them is one [`product::MetaProduct`] each.
//!
//! - [`MessengerChannel`] is the webhook adapter: the `GET` subscription handshake, the
//!   `X-Hub-Signature-256` check on the exact bytes received (Meta escapes non-ASCII as
//!   `\uXXXX`, so re-serialized JSON would never match), and every entry and messaging item.
//! - [`MessengerSender`] sends replies through the Send API, and agents' typing indicators and
//!   "seen" as sender actions ([`MessengerSender::sender_action`]).
//! - [`config`]: `[messenger]` and `[tenants.<id>.messenger]` as written, and their validation.
//!
//! What each item becomes on `omni.inbound.v1`:
//! | item | event |
//! |---|---|
//! | `message` (text, attachments, quick reply, reply-to) | `omni.message.received` |
//! | `postback` (a button) | `omni.message.received`, text = the button title, `payload` |
//! | `message` with `is_echo` | `omni.message.echoed` (sent from the page by a person or app) |
//! | echo of a reply omnirouter sent | not published (its `omni.message.send` is the record) |
//! | `delivery` | `omni.channel.signal` `delivered` with the watermark and mids |
//! | `read` | `omni.channel.signal` `read` with the watermark |
//! | anything else (reactions, referrals, handover…) | accepted and counted as ignored |
//!
//! Instagram items (object `instagram`) become the same events on channel kind `instagram`;
//! what only Instagram sends: attachments `story_mention`, `share`, `ig_reel` (an attachment
//! named by its kind, with the URL), `reply_to.story` (an attachment named `story_reply`),
//! `read {mid}` (a `read` signal naming that message), `is_deleted` (ignored). Any other
//! `object` is answered 200 and counted as ignored (`unhandled_object`).
//!
//! Tenant isolation: an item for a page the tenant does not have (its page, or its entry's
//! `id`) is refused, counted in `omni_ingress_refused_items_total` and logged, never published;
//! the request is still answered 200, even when every item is refused, because a non-2xx makes
//! Meta retry the batch and at length disable the app's subscription for every page on it.

pub mod component;
pub mod config;
mod inbound;
mod product;
mod send;

#[cfg(test)]
mod tests;

pub use inbound::MessengerChannel;
pub use send::{MessengerSendSettings, MessengerSender, SenderAction};

use omni_core::Secret;
use std::collections::HashMap;

/// The `metadata` prefix omnirouter puts on every message it sends, so the echo Meta sends
/// back for it is recognized and not published a second time.
pub const ECHO_MARKER: &str = "omnirouter:";

/// One tenant's Messenger app and pages.
#[derive(Debug, Clone)]
pub struct MessengerTenant {
    /// The Meta app secret: the key of the webhook signatures.
    pub app_secret: Secret,
    /// The token typed into Meta's webhook settings, echoed in the `GET` handshake.
    pub verify_token: Secret,
    /// Also accept the legacy `X-Hub-Signature: sha1=…` when the SHA-256 header is absent.
    pub accept_sha1: bool,
    /// The pages this tenant answers for, by page id.
    pub pages: HashMap<String, PageSettings>,
    /// The Instagram professional accounts this tenant answers for (Instagram Direct through
    /// the same app and webhook), by Instagram account id.
    pub instagram: HashMap<String, PageSettings>,
}

/// One Facebook page's (or Instagram account's) sending settings.
#[derive(Debug, Clone)]
pub struct PageSettings {
    /// The access token for the Send API (a page token; for Instagram, the token of the page
    /// the account is linked to, or an Instagram user token).
    pub access_token: Secret,
    /// Send human replies between 24 hours and 7 days after the customer's last message with
    /// the `HUMAN_AGENT` tag (the app must have that permission).
    pub human_agent_tag: bool,
}
