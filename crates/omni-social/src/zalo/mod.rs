//! Zalo Official Account: the OA webhook in, the OA v3 customer-service message API out.
//!
//! - [`ZaloChannel`] is the webhook adapter: `X-ZEvent-Signature: mac=<hex>` where
//!   `mac = SHA-256(app_id + raw body + timestamp + OA secret key)` (a plain digest, not an
//!   HMAC), checked against every OA of the tenant registered with the body's `app_id`; the
//!   answer goes out within Zalo's 2-second deadline. Ids stay strings (they exceed 2^53).
//! - [`ZaloSender`] sends replies (text with quotes, images and files by upload).
//! - [`config`]: `[zalo]` and `[tenants.<id>.zalo]` as written, and their validation.
//! - [`token`] keeps each OA's access token fresh with its single-use refresh token, stored
//!   durably before use.
//!
//! What each event becomes on `omni.inbound.v1`:
//! | event | becomes |
//! |---|---|
//! | `user_send_text`, `…_image`, `…_link`, `…_file`, `…_sticker`, `…_gif`, `…_audio`, `…_video`, `…_location`, `…_business_card` | `omni.message.received` |
//! | `oa_send_*` (sent from the OA by a person or another tool) | `omni.message.echoed` |
//! | `follow`, `unfollow` | `omni.channel.signal` `follow` / `unfollow` |
//! | `user_click_button` | `omni.channel.signal` `action` with the button's payload |
//! | `user_received_message`, `user_seen_message` | `omni.channel.signal` `delivered` / `read` |
//! | anything else | accepted and counted as ignored |
//!
//! Tenant isolation: tenants sharing one Zalo app share its OA secret key, so an event for an
//! OA the tenant does not have is refused (counted in `omni_ingress_refused_items_total`,
//! logged, not published) and still answered 200, so Zalo neither retries it nor revokes the
//! webhook.

pub mod component;
pub mod config;
mod inbound;
mod send;
pub mod shared;
pub mod token;
pub mod upkeep;

#[cfg(test)]
mod tests;

pub use inbound::ZaloChannel;
pub use send::{ZaloSendSettings, ZaloSender};

use omni_core::Secret;
use std::collections::HashMap;
use std::path::PathBuf;

/// One tenant's Zalo Official Accounts, by OA id.
#[derive(Debug, Clone)]
pub struct ZaloTenant {
    /// The OAs this tenant answers for.
    pub oas: HashMap<String, OaSettings>,
    /// How far an event's signed `timestamp` may be from now; `None` accepts any (the
    /// signature covers the timestamp, so without a window a captured event replays for ever).
    pub replay_window: Option<omni_channel::ReplayWindow>,
}

/// One Official Account.
#[derive(Debug, Clone)]
pub struct OaSettings {
    /// The Zalo app connected to the OA.
    pub app_id: String,
    /// The OA secret key (webhook settings): the key of `X-ZEvent-Signature`.
    pub oa_secret_key: Secret,
    /// The app's secret key, sent as `secret_key` when refreshing tokens.
    pub app_secret: Secret,
    /// Where the current tokens live: read at start, rewritten (atomically, fsynced) after
    /// every refresh and before the new refresh token is used. Seeded from the settings below
    /// when missing.
    pub token_file: PathBuf,
    /// The first refresh token (from the OAuth consent), used only to seed `token_file`.
    pub initial_refresh_token: Option<Secret>,
    /// An initial access token, used only to seed `token_file` (refreshed at once if its
    /// expiry is unknown).
    pub initial_access_token: Option<Secret>,
}
