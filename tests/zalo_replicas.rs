//! Zalo OA tokens with three replicas on one broker, each with its own token file as pods have:
//! one refresh per due token across the deployment (Zalo's refresh tokens work once), every
//! replica sending with a valid access token, the pairs sealed on Kafka, and all of it holding
//! while replicas are killed and replaced, and after every replica restarted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::oauth::ZaloOauth;
use omni_e2e::standin::StandIn;
use omni_e2e::{read_topic, Broker, Daemon};
use serde_json::json;
use std::time::{Duration, Instant};

const OA: &str = "4318458798374519001";
const ZUSER: &str = "2512523625412515123";
const CS_PATH: &str = "/v3.0/oa/message/cs";
/// 32 zero-free bytes, base64: the key sealing the pairs on Kafka.
const TOKEN_KEY: &str = "b21uaXJvdXRlci10ZXN0LXRva2VuLWtleS0zMmJ5dGU=";

fn env(oauth: &ZaloOauth, api: &StandIn, token_file: &str) -> Vec<(String, String)> {
    let oa = |k: &str| format!("OMNI__TENANTS__DEMO__ZALO__OAS__{OA}__{k}");
    vec![
        ("OMNI__ZALO__OAUTH_BASE_URL".into(), oauth.url.clone()),
        ("OMNI__ZALO__OPENAPI_BASE_URL".into(), api.url.clone()),
        ("OMNI__ZALO__TOKEN_KEY".into(), TOKEN_KEY.into()),
        // Tokens live 20 s and are refreshed 14 s ahead: one is due every 6 s.
        ("OMNI__ZALO__REFRESH_BEFORE_SECS".into(), "14".into()),
        ("OMNI__ZALO__TIMEOUT_SECS".into(), "2".into()),
        ("OMNI__OUTBOUND__INITIAL_BACKOFF_MS".into(), "200".into()),
        ("OMNI__OUTBOUND__MAX_BACKOFF_MS".into(), "1000".into()),
        ("OMNI__OUTBOUND__MAX_ATTEMPTS".into(), "40".into()),
        (oa("APP_ID"), "1183926498471234567".into()),
        (oa("OA_SECRET_KEY"), "OA-KEY".into()),
        (oa("APP_SECRET"), "Z-APP-SECRET".into()),
        (oa("TOKEN_FILE"), token_file.into()),
        (oa("REFRESH_TOKEN"), "R0".into()),
    ]
}

async fn start(
    broker: &Broker,
    oauth: &ZaloOauth,
    api: &StandIn,
    dir: &tempfile::TempDir,
    n: usize,
) -> Daemon {
    let file = dir.path().join(format!("replica-{n}-zalo.json"));
    let env = env(oauth, api, file.to_str().unwrap());
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::start(broker, &refs).await
}

async fn reply(daemon: &Daemon, text: &str) {
    let tenant = omni_core::TenantId::new("demo").unwrap();
    let channel = omni_core::ChannelRef::new(omni_core::ChannelKind::Zalo, OA);
    let conversation = omni_core::ConversationId::derive(&tenant, &channel, ZUSER, None);
    let body = json!({
        "conversation_id": conversation.to_string(),
        "channel": {"kind": "zalo", "account": OA},
        "recipient": ZUSER,
        "agent_id": "agent-7",
        "text": text,
    });
    let (status, answer) = omni_e2e::post_json(
        &daemon.url("/v1/tenants/demo/replies"),
        "demo-agent-token",
        &body,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
}

/// The Zalo sends so far, once `distinct` different texts went out (at most `timeout`): a reply
/// redelivered after a kill may go out twice, so the number of calls says nothing.
async fn sent_texts(
    api: &StandIn,
    distinct: usize,
    timeout: Duration,
) -> Vec<omni_e2e::standin::Recorded> {
    let deadline = Instant::now() + timeout;
    loop {
        let calls = api.requests_to(CS_PATH);
        let mut texts: Vec<String> = calls
            .iter()
            .map(|c| c.json()["message"]["text"].to_string())
            .collect();
        texts.sort();
        texts.dedup();
        if texts.len() >= distinct || Instant::now() > deadline {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three replicas sharing one OA, its Zalo stand-ins and one broker.
struct Oa {
    broker: Broker,
    oauth: ZaloOauth,
    api: StandIn,
    replicas: Vec<Daemon>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_per_due_token_across_replicas_killed_and_restarted() {
    let broker = Broker::memory();
    let oauth = ZaloOauth::start(Duration::from_secs(20)).await;
    let api = StandIn::start().await;
    api.always(
        CS_PATH,
        200,
        "application/json",
        br#"{"error":0,"message":"Success","data":{"message_id":"z"}}"#,
    );
    let files = tempfile::tempdir().unwrap();
    let mut oa = Oa {
        broker,
        oauth,
        api,
        replicas: Vec::new(),
    };
    for n in 0..3 {
        let replica = start(&oa.broker, &oa.oauth, &oa.api, &files, n).await;
        oa.replicas.push(replica);
    }
    // The first refresh consumes the configured R0, on one replica.
    assert_eq!(oa.oauth.wait_accepted(1, Duration::from_secs(60)).await, 1);

    let sent = replies_through_every_replica_while_two_are_killed(&mut oa, &files).await;
    every_reply_went_out_once_with_a_token_still_valid(&oa, sent).await;
    let _token_files = a_restart_of_every_replica_continues_the_chain_from_kafka(&mut oa).await;
    every_refresh_presented_the_valid_token_one_per_due_token(&oa);
    the_pairs_on_kafka_are_sealed(&oa);
}

/// For 30 s, a reply through every replica every 0.7 s; at 8 s and 18 s one replica is killed
/// and replaced. Returns how many replies were written.
async fn replies_through_every_replica_while_two_are_killed(
    oa: &mut Oa,
    files: &tempfile::TempDir,
) -> usize {
    let mut sent = 0usize;
    let mut next = 3;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        for d in &oa.replicas {
            sent += 1;
            reply(d, &format!("reply {sent}")).await;
        }
        let second = started.elapsed().as_secs();
        if (second == 8 || second == 18) && oa.replicas.len() == 3 {
            let mut victim = oa.replicas.remove(usize::try_from(second).unwrap() % 3);
            victim.terminate_hard();
            let replica = start(&oa.broker, &oa.oauth, &oa.api, files, next).await;
            oa.replicas.push(replica);
            next += 1;
        }
        // The pace of the traffic, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    sent
}

/// Every reply went out once, each with an access token the stand-in issued and that was
/// still valid when used.
async fn every_reply_went_out_once_with_a_token_still_valid(oa: &Oa, sent: usize) {
    let calls = sent_texts(&oa.api, sent, Duration::from_secs(90)).await;
    let mut texts: Vec<String> = calls
        .iter()
        .map(|c| c.json()["message"]["text"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    texts.dedup();
    if texts.len() != sent {
        for d in &oa.replicas {
            let log = d.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("zalo") || l.contains("Zalo") || l.contains("outbound"))
                .collect();
            println!(
                "---- replica log ({} lines)\n{}",
                lines.len(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
    }
    assert_eq!(texts.len(), sent, "every reply reached Zalo");
    for c in &calls {
        let token = c.headers.get("access_token").expect("access_token header");
        let issued = oa
            .oauth
            .issued_at(token)
            .unwrap_or_else(|| panic!("{token} was never issued"));
        assert!(
            c.at.duration_since(issued) < oa.oauth.expires_in,
            "{token} used after it expired"
        );
    }
}

/// Every replica killed at once: the pair survives in Kafka, not in any one pod. The new
/// replicas (fresh token files, the configured R0 long spent) continue the chain from Kafka:
/// the next refresh presents the newest refresh token and is accepted. (A reply through them is
/// not part of this check: after every member of the outbound group died at once, tansu may
/// leave an outbound partition unassigned for a while; see tests/tansu/.)
/// Returns the new replicas' token file directory, which must outlive them.
async fn a_restart_of_every_replica_continues_the_chain_from_kafka(
    oa: &mut Oa,
) -> tempfile::TempDir {
    for d in &mut oa.replicas {
        d.terminate_hard();
    }
    oa.replicas.clear();
    let fresh = tempfile::tempdir().unwrap();
    for n in 0..3 {
        let replica = start(&oa.broker, &oa.oauth, &oa.api, &fresh, n).await;
        oa.replicas.push(replica);
    }
    let before = oa.oauth.refreshes().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while oa.oauth.refreshes().len() <= before {
        assert!(
            Instant::now() < deadline,
            "no refresh after a full restart: {:?}",
            oa.oauth.refreshes()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = &oa.oauth.refreshes()[before];
    assert!(
        after.accepted,
        "the chain broke at the full restart: {after:?}"
    );
    fresh
}

/// The refresh chain: every refresh presented the one valid token (Zalo refused none), and
/// refreshes came one per due token, never two for one.
fn every_refresh_presented_the_valid_token_one_per_due_token(oa: &Oa) {
    let refreshes = oa.oauth.refreshes();
    let refused: Vec<_> = refreshes.iter().filter(|r| !r.accepted).collect();
    assert!(refused.is_empty(), "refused refreshes: {refused:?}");
    for pair in refreshes.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_secs(5),
            "two refreshes {gap:?} apart: {:?} then {:?}",
            pair[0].presented,
            pair[1].presented
        );
    }
    assert!(refreshes.len() >= 4, "tokens kept fresh: {refreshes:?}");
}

/// On Kafka the pairs are sealed: no token in clear.
fn the_pairs_on_kafka_are_sealed(oa: &Oa) {
    let stored = read_topic(
        &oa.broker.bootstrap(),
        "omni.zalo-tokens.v1",
        oa.oauth.refreshes().len(),
        Duration::from_secs(10),
        Duration::from_millis(300),
    );
    assert!(!stored.is_empty());
    for r in &stored {
        let raw = r.value.to_string();
        assert!(raw.contains("A256GCM"), "{raw}");
        assert!(!raw.contains("\"R1\"") && !raw.contains("\"A1\""), "{raw}");
    }
}
