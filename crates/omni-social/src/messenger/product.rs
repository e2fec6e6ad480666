//! What differs between the two Meta messaging products one app serves, Messenger (webhook
//! object `page`) and Instagram Direct (`instagram`): everything else — the webhook's item
//! format, the Send API, its errors and the 24-hour window — is the same code.

use omni_core::ChannelKind;
use std::collections::HashMap;

use super::{MessengerTenant, PageSettings};

/// One Meta messaging product.
#[derive(Debug)]
pub(crate) struct MetaProduct {
    /// The webhook's `object` for it.
    pub object: &'static str,
    /// The channel kind its conversations are on.
    pub kind: ChannelKind,
    /// The tenant's accounts on it (pages, or Instagram professional accounts), by id.
    pub accounts: fn(&MessengerTenant) -> &HashMap<String, PageSettings>,
    /// The longest text message, in characters.
    pub max_text_chars: usize,
    /// Whether the Send API takes `message.metadata` (echoed back, so our own echoes are
    /// recognized) and `message.reply_to`: Messenger only; Instagram documents neither.
    pub messenger_extras: bool,
    /// The Send API path's account segment for an account id: the page id on Messenger, `me`
    /// on Instagram (the account the access token belongs to, whichever login issued it).
    pub send_path: fn(&str) -> &str,
}

fn pages(tenant: &MessengerTenant) -> &HashMap<String, PageSettings> {
    &tenant.pages
}

fn instagram_accounts(tenant: &MessengerTenant) -> &HashMap<String, PageSettings> {
    &tenant.instagram
}

/// Messenger: Facebook pages.
pub(crate) static MESSENGER: MetaProduct = MetaProduct {
    object: "page",
    kind: ChannelKind::Messenger,
    accounts: pages,
    max_text_chars: 2000,
    messenger_extras: true,
    send_path: |page| page,
};

/// Instagram Direct: Instagram professional accounts linked to the app's pages.
pub(crate) static INSTAGRAM: MetaProduct = MetaProduct {
    object: "instagram",
    kind: ChannelKind::Instagram,
    accounts: instagram_accounts,
    max_text_chars: 1000,
    messenger_extras: false,
    send_path: |_| "me",
};

/// The product a webhook `object` names, if we handle it.
pub(crate) fn by_object(object: &str) -> Option<&'static MetaProduct> {
    [&MESSENGER, &INSTAGRAM]
        .into_iter()
        .find(|p| p.object == object)
}
