//! Operator commands beside the daemon: `omnirouter tail` (follow a tenant's or a
//! conversation's events as they happen), `omnirouter replay` (publish dead letters or a time
//! range again) and `omnirouter user-hash` (a live chat identity hash, to check a site's
//! integration). Each reads the same config as the daemon, so topic names and credentials match.

use chrono::{DateTime, Utc};
use clap::Args;
use omni_bus::tail::{StartAt, TailMessage, TopicTail};
use omni_bus::{dead_letter, OutRecord, Producer};
use serde_json::Value;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use crate::settings::Settings;

/// `omnirouter tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this tenant's events (the record key).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this conversation's events (its id: the CloudEvent subject).
    #[arg(long)]
    pub conversation: Option<String>,
    /// Topics to follow, comma-separated; default every event topic (inbound, outbound,
    /// delivery, commands, routing).
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Start at events written since this time (RFC 3339), not now.
    #[arg(long, conflicts_with = "from_beginning")]
    pub since: Option<DateTime<Utc>>,
    /// Start at each topic's oldest record.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Print each event as its JSON line instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// `omnirouter replay`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["dead_letters", "topic"])))]
pub struct ReplayArgs {
    /// Publish the dead letters again, each to the topic it came from, with its original key,
    /// value and headers (once its producer or omnirouter is fixed).
    #[arg(long)]
    pub dead_letters: bool,
    /// With --dead-letters: only those that came from this topic.
    #[arg(long, requires = "dead_letters")]
    pub from_topic: Option<String>,
    /// Publish this topic's records of a time range again (to --to, default the same topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// With --topic: where to publish them.
    #[arg(long, requires = "topic")]
    pub to: Option<String>,
    /// Only records written at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only records written before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Count what would be published, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `omnirouter user-hash`.
#[derive(Debug, Args)]
pub struct UserHashArgs {
    /// The tenant whose widget it is.
    #[arg(long)]
    pub tenant: String,
    /// The widget id (`data-widget` in the embed snippet).
    #[arg(long)]
    pub widget: String,
    /// The site's id for the logged-in customer.
    pub user_id: String,
}

/// Prints `hex(HMAC-SHA256(identity_secret, user_id))` of the configured widget: what the
/// site's server must pass as `user_hash` for that customer. Exit 2 when the widget is not
/// configured or has no identity secret.
pub fn user_hash(settings: &Settings, args: &UserHashArgs) -> ExitCode {
    let widget = settings
        .livechat
        .as_ref()
        .and_then(|chat| {
            chat.widgets
                .get(&(args.tenant.clone(), args.widget.clone()))
        })
        .map(|(_, widget)| widget);
    let Some(widget) = widget else {
        eprintln!(
            "error: no live chat widget {:?} for tenant {:?} in the config",
            args.widget, args.tenant
        );
        return ExitCode::from(2);
    };
    let Some(secret) = &widget.identity_secret else {
        eprintln!(
            "error: widget {:?} of tenant {:?} has no identity_secret: it takes no logged-in customers",
            args.widget, args.tenant
        );
        return ExitCode::from(2);
    };
    let hash = omni_livechat::token::identity_hash(secret.expose().as_bytes(), &args.user_id);
    print_lines([hash])
}

/// Writes `lines` to standard output; exit 1 if it is gone (a closed pipe).
fn print_lines(lines: impl IntoIterator<Item = String>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Whether an event belongs to the tenant and conversation asked for.
fn wanted(args: &TailArgs, key: Option<&[u8]>, event: &Value) -> bool {
    let tenant_ok = args
        .tenant
        .as_deref()
        .is_none_or(|t| key == Some(t.as_bytes()) || event["tenant"].as_str() == Some(t));
    let conversation_ok = args.conversation.as_deref().is_none_or(|c| {
        [
            &event["subject"],
            &event["data"]["conversation_id"],
            &event["data"]["conversation"],
        ]
        .iter()
        .any(|v| v.as_str() == Some(c))
    });
    tenant_ok && conversation_ok
}

/// One line for a person: time, topic, type, tenant, conversation and what happened.
fn summary(topic: &str, event: &Value) -> String {
    let data = &event["data"];
    let text = |v: &Value| {
        let t = v.as_str().unwrap_or_default();
        let short: String = t.chars().take(80).collect();
        if short.len() < t.len() {
            format!("{short:?}…")
        } else {
            format!("{short:?}")
        }
    };
    let kind = event["type"].as_str().unwrap_or("?");
    let what = match kind {
        "omni.message.received" | "omni.message.echoed" => format!(
            "{} from {}: {}",
            data["channel"]["kind"].as_str().unwrap_or("?"),
            data["contact"]["id"].as_str().unwrap_or("?"),
            text(&data["message"]["text"])
        ),
        "omni.message.send" => format!(
            "to {} on {}: {}",
            data["recipient"].as_str().unwrap_or("?"),
            data["channel"]["kind"].as_str().unwrap_or("?"),
            text(&data["text"])
        ),
        "omni.delivery.updated" => format!(
            "{} {}",
            data["status"].as_str().unwrap_or("?"),
            data["reason"].as_str().unwrap_or_default()
        ),
        "omni.command" => format!(
            "{} {}",
            data["command"].as_str().unwrap_or("?"),
            data["agent"].as_str().unwrap_or_default()
        ),
        _ => ["queue", "agent", "reason"]
            .iter()
            .filter_map(|k| data[*k].as_str().map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" "),
    };
    format!(
        "{}  {topic}  {kind}  {}  {}  {}",
        event["time"].as_str().unwrap_or("?"),
        event["tenant"].as_str().unwrap_or("?"),
        event["subject"].as_str().unwrap_or("-"),
        what.trim_end()
    )
}

/// Follows the event topics and prints the events asked for until `--count` or an interrupt.
/// Exit 69 when Kafka cannot be reached.
pub fn tail(settings: &Settings, args: &TailArgs) -> ExitCode {
    let t = &settings.kafka.topics;
    let topics: Vec<String> = if args.topics.is_empty() {
        [
            &t.inbound,
            &t.outbound,
            &t.delivery,
            &t.commands,
            &t.routing,
        ]
        .into_iter()
        .cloned()
        .collect()
    } else {
        args.topics.clone()
    };
    let start = if args.from_beginning {
        StartAt::Beginning
    } else {
        StartAt::Since(args.since.unwrap_or_else(Utc::now).timestamp_millis())
    };
    let wanted_topics: Vec<(&str, StartAt)> = topics.iter().map(|t| (t.as_str(), start)).collect();
    let group = format!("omnirouter-tail-{}", std::process::id());
    let tail = match TopicTail::open(&settings.kafka, &group, &wanted_topics) {
        Ok(tail) => tail,
        Err(e) => {
            eprintln!("error: cannot follow {topics:?}: {e}");
            return ExitCode::from(crate::cli::EXIT_KAFKA_UNAVAILABLE);
        }
    };
    let since_ms = args.since.map(|s| s.timestamp_millis());
    let mut out = std::io::stdout().lock();
    let mut shown = 0;
    while args.count.is_none_or(|n| shown < n) {
        let Some(polled) = tail.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match polled {
            Ok(m) => m,
            Err(e) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        // A broker that cannot look offsets up by time starts at the beginning.
        if since_ms.is_some_and(|s| m.timestamp().is_some_and(|t| t < s)) {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<Value>(m.payload().unwrap_or_default()) else {
            continue;
        };
        if !wanted(args, m.key(), &event) {
            continue;
        }
        let line = if args.json {
            event.to_string()
        } else {
            summary(m.topic(), &event)
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
        shown += 1;
    }
    ExitCode::SUCCESS
}

/// A record to publish again.
struct Again {
    topic: String,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

/// What a dead letter becomes again, if it passes `--from-topic` (and carries its origin).
fn from_dead_letter(m: &TailMessage<'_>, from_topic: Option<&str>) -> Option<Again> {
    let headers = m.headers();
    let origin = headers
        .iter()
        .find(|(k, _)| k == dead_letter::TOPIC)
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok())?;
    if from_topic.is_some_and(|t| t != origin) {
        return None;
    }
    Some(Again {
        topic: origin,
        key: m.key().unwrap_or_default().to_vec(),
        value: m.payload().map(<[u8]>::to_vec),
        headers: headers
            .into_iter()
            .filter(|(k, _)| !k.starts_with("omni-dead-letter-"))
            .collect(),
    })
}

/// Publishes dead letters (or a time range of a topic) again. Prints how many records it
/// read, selected and published. Exit 69 when Kafka cannot be reached or refuses a record.
pub fn replay(
    settings: &Settings,
    args: &ReplayArgs,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    let (source, to) = if args.dead_letters {
        (settings.kafka.topics.dead_letter.clone(), None)
    } else {
        let topic = args.topic.clone().unwrap_or_default();
        (topic.clone(), Some(args.to.clone().unwrap_or(topic)))
    };
    let start = args
        .since
        .map_or(StartAt::Beginning, |s| StartAt::Since(s.timestamp_millis()));
    let (since, until) = (
        args.since.map(|s| s.timestamp_millis()),
        args.until.map(|u| u.timestamp_millis()),
    );
    let group = format!("omnirouter-replay-{}", std::process::id());
    let mut selected = Vec::new();
    let read = omni_bus::tail::read_to_end(
        &settings.kafka,
        &group,
        &[(source.as_str(), start)],
        Duration::from_secs(1),
        |m| {
            let at = m.timestamp();
            if since.is_some_and(|s| at.is_some_and(|t| t < s))
                || until.is_some_and(|u| at.is_none_or(|t| t >= u))
            {
                return;
            }
            let again = match &to {
                None => from_dead_letter(m, args.from_topic.as_deref()),
                Some(to) => Some(Again {
                    topic: to.clone(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m.headers(),
                }),
            };
            selected.extend(again);
        },
    );
    let read = match read {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: cannot read {source}: {e}");
            return ExitCode::from(crate::cli::EXIT_KAFKA_UNAVAILABLE);
        }
    };
    let mut published = 0;
    if !args.dry_run {
        let result = runtime.block_on(async {
            let registry = prometheus::Registry::new();
            let metrics = std::sync::Arc::new(omni_bus::BusMetrics::register(&registry)?);
            let producer = Producer::new(&settings.kafka, metrics)?;
            for chunk in selected.chunks(500) {
                let headers: Vec<Vec<(&str, &[u8])>> = chunk
                    .iter()
                    .map(|a| {
                        a.headers
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_slice()))
                            .collect()
                    })
                    .collect();
                let records: Vec<OutRecord<'_>> = chunk
                    .iter()
                    .zip(&headers)
                    .map(|(a, headers)| OutRecord {
                        topic: &a.topic,
                        partition: None,
                        key: &a.key,
                        payload: a.value.as_deref(),
                        headers,
                    })
                    .collect();
                producer.send_batch(&records).await?;
                published += records.len();
            }
            anyhow::Ok(())
        });
        if let Err(e) = result {
            eprintln!("error: publishing again stopped after {published} record(s): {e:#}");
            return ExitCode::from(crate::cli::EXIT_KAFKA_UNAVAILABLE);
        }
    }
    print_lines([format!(
        "read {read} record(s) from {source}, selected {}, published {published}{}",
        selected.len(),
        if args.dry_run { " (dry run)" } else { "" }
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(tenant: Option<&str>, conversation: Option<&str>) -> TailArgs {
        TailArgs {
            tenant: tenant.map(str::to_owned),
            conversation: conversation.map(str::to_owned),
            topics: Vec::new(),
            since: None,
            from_beginning: false,
            count: None,
            json: false,
        }
    }

    #[test]
    fn tail_filters_by_tenant_key_and_by_conversation_anywhere_it_is_named() {
        let event = json!({"tenant": "demo", "subject": "c-1", "data": {}});
        let command = json!({"tenant": "demo", "data": {"conversation": "c-2"}});
        assert!(wanted(&args(Some("demo"), None), Some(b"demo"), &event));
        assert!(!wanted(&args(Some("acme"), None), Some(b"demo"), &event));
        assert!(wanted(&args(None, Some("c-1")), None, &event));
        assert!(!wanted(&args(None, Some("c-1")), None, &command));
        assert!(wanted(
            &args(Some("demo"), Some("c-2")),
            Some(b"demo"),
            &command
        ));
    }

    #[test]
    fn a_summary_says_what_happened_in_one_line() {
        let received = json!({"type": "omni.message.received", "time": "2026-12-03T10:00:00Z",
            "tenant": "demo", "subject": "c-1", "data": {"channel": {"kind": "zalo"},
            "contact": {"id": "u-1"}, "message": {"text": "Xin chào\nshop"}}});
        let line = summary("omni.inbound.v1", &received);
        assert_eq!(
            line,
            r#"2026-12-03T10:00:00Z  omni.inbound.v1  omni.message.received  demo  c-1  zalo from u-1: "Xin chào\nshop""#
        );
        assert!(!line.contains('\n'));
        let assigned = json!({"type": "omni.routing.assigned", "time": "t", "tenant": "demo",
            "subject": "c-1", "data": {"queue": "general", "agent": "lan"}});
        assert!(summary("omni.routing.v1", &assigned).ends_with("queue=general agent=lan"));
    }
}
