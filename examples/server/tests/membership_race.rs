//! Membership changes racing with sends: every message goes to exactly the
//! members of the chat at the message's `seq`, also when a member is added
//! or removed while another member has sends in flight.
//!
//! Each round, a sender's connections pipeline sends (no waiting for acks)
//! and an admin adds or removes someone once a given number of them has
//! arrived (a different number each round). Then what the subject received
//! is compared with the `seq`s the server gave: the sends' acks and the
//! system message recording the change (read from history). What is
//! asserted follows from those `seq`s only, never from timing: on a correct
//! server nothing here can fail, however the race goes. (The time windows
//! only bound how long a missing message is waited for, and how long a
//! stray one is watched for.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Rounds per test, at most...
const ROUNDS: usize = 30;
/// ...and no new round after this long (slow machines run fewer).
const BUDGET: Duration = Duration::from_secs(12);
/// Sends pipelined per round...
const SENDS: usize = 12;
/// ...over this many connections of the sender. A connection's commands
/// run one at a time, each waiting for its commit; several keep sends
/// arriving (and being checked) while the membership change waits for its
/// own commit, which is where a stale member list would show.
const SENDER_DEVICES: usize = 3;
/// How long the subject is watched for stray messages once every expected
/// one arrived (they would come right behind, on the same connection).
const SETTLE: Duration = Duration::from_millis(150);

/// One `send_message` of the sender, as acked.
#[derive(Debug)]
struct Sent {
    id: String,
    seq: i64,
}

/// The sender's connections, one per device.
async fn sender_devices(server: &Server) -> Vec<Ws> {
    let mut out = Vec::with_capacity(SENDER_DEVICES);
    for d in 0..SENDER_DEVICES {
        let token = device_token("race-sender", &format!("device-{d}"));
        out.push(server.ws_token("race-sender", &token).await);
    }
    out
}

/// Sends `SENDS` messages to `chat_id` round-robin over the sender's
/// connections without waiting for their acks, then, once `admin` has seen
/// `split` of them arrive, sends `change` (a command of `admin`): it then
/// reaches the server while the rest are being stored, so sends are read
/// and checked while the change waits for its commit. Returns the sends as
/// acked and the change's reply.
async fn race(
    senders: &mut [Ws],
    admin: &mut Ws,
    chat_id: &str,
    split: usize,
    change: (&str, Value),
) -> (Vec<Sent>, Reply) {
    let mut send_ids = Vec::with_capacity(SENDS);
    for i in 0..SENDS {
        let data = json!({
            "chat_id": chat_id,
            "client_msg_id": unique("race"),
            "content": format!("message {i}"),
        });
        let conn = i % senders.len();
        send_ids.push((conn, senders[conn].send_cmd("send_message", data).await));
    }
    for _ in 0..split {
        admin
            .event_where("message_received", |m| {
                m["chat_id"] == chat_id && m["sender_id"] == "race-sender"
            })
            .await;
    }
    let change_id = admin.send_cmd(change.0, change.1.clone()).await;
    let mut sent = Vec::with_capacity(SENDS);
    for (conn, id) in send_ids {
        let sender = &mut senders[conn];
        let message = match sender.reply(&id).await {
            Ok(ack) => ack["message"].clone(),
            Err((code, msg)) => panic!("[{}] send failed: {code}: {msg}", sender.user),
        };
        sent.push(Sent {
            id: s(&message, "id").to_owned(),
            seq: n(&message, "seq"),
        });
    }
    let reply = admin.reply(&change_id).await;
    (sent, reply)
}

/// The `seq` of the system message recording `event` (`participant_added`
/// or `participant_removed`) of `user` in the chat, read by a member.
async fn system_seq(member: &mut Ws, chat_id: &str, event: &str, user: &str) -> i64 {
    let (messages, _) = member.history(chat_id, json!({"limit": 200})).await;
    let found: Vec<&Value> = messages
        .iter()
        .filter(|m| {
            m["type"] == "system" && m["system"]["event"] == event && m["system"]["user_id"] == user
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one `{event}` system message for {user} in {chat_id}: {messages:?}"
    );
    n(found[0], "seq")
}

/// Every `message_received` of `chat_id` that `ws` got (buffered or new)
/// from now until `until`.
async fn messages_until(ws: &mut Ws, chat_id: &str, until: Instant) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match ws
            .event_within("message_received", left, |m| m["chat_id"] == chat_id)
            .await
        {
            Some(m) => out.push(m),
            None => return out,
        }
    }
}

/// Waits (up to [`WAIT`]) until `ws` got every message in `expected`, then
/// [`SETTLE`] more; returns every `message_received` of the chat it got.
async fn collect(ws: &mut Ws, chat_id: &str, expected: &[&Sent]) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let mut got: Vec<Value> = Vec::new();
    let all_in = |got: &[Value]| {
        expected
            .iter()
            .all(|e| got.iter().any(|m| m["id"] == e.id.as_str()))
    };
    while !all_in(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws
            .event_within("message_received", left, |m| m["chat_id"] == chat_id)
            .await
        {
            Some(m) => got.push(m),
            None => break,
        }
    }
    got.extend(messages_until(ws, chat_id, Instant::now() + SETTLE).await);
    got
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages.iter().map(|m| n(m, "seq")).collect()
}

/// Fails with every round's findings, if any round had one.
#[track_caller]
fn report(what: &str, rounds: usize, failures: &[String]) {
    assert!(rounds > 0, "no round ran within {BUDGET:?}");
    assert!(
        failures.is_empty(),
        "{what}: {} of {rounds} rounds went wrong:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[tokio::test]
async fn a_removed_member_gets_every_message_before_the_removal_and_none_after() {
    let server = Server::with_config(UNLIMITED).await;
    let mut admin = server.ws("race-admin").await;
    let mut senders = sender_devices(&server).await;
    let mut member = server.ws("race-member").await;
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut rounds = 0;
    while rounds < ROUNDS && start.elapsed() < BUDGET {
        let chat = admin
            .group(&unique("remove"), &["race-sender", "race-member"])
            .await;
        let chat_id = s(&chat, "id").to_owned();
        for ws in [&mut admin, &mut member].into_iter().chain(&mut senders) {
            ws.event_where("chat_created", |c| c["id"] == chat_id.as_str())
                .await;
            ws.clear();
        }

        let split = rounds % SENDS;
        let remove = json!({"chat_id": chat_id, "user_id": "race-member"});
        let (sent, reply) = race(
            &mut senders,
            &mut admin,
            &chat_id,
            split,
            ("remove_participant", remove),
        )
        .await;
        if let Err((code, msg)) = reply {
            panic!("round {rounds}: remove_participant failed: {code}: {msg}");
        }
        let removed_at =
            system_seq(&mut admin, &chat_id, "participant_removed", "race-member").await;

        let before: Vec<&Sent> = sent.iter().filter(|m| m.seq < removed_at).collect();
        let got = collect(&mut member, &chat_id, &before).await;
        let missing: Vec<i64> = before
            .iter()
            .filter(|e| !got.iter().any(|m| m["id"] == e.id.as_str()))
            .map(|e| e.seq)
            .collect();
        let after: Vec<i64> = seqs(&got).into_iter().filter(|&q| q > removed_at).collect();
        if !missing.is_empty() || !after.is_empty() {
            failures.push(format!(
                "round {rounds} (removal sent after {split} sends arrived): removed at seq \
                 {removed_at}, sends at {:?}; missed {missing:?} from before, got {after:?} \
                 from after",
                sent.iter().map(|m| m.seq).collect::<Vec<_>>()
            ));
        }
        rounds += 1;
    }
    report(
        "a member removed while messages were in flight",
        rounds,
        &failures,
    );
}

#[tokio::test]
async fn an_added_member_gets_every_message_after_the_addition_and_none_before() {
    let server = Server::with_config(UNLIMITED).await;
    let mut admin = server.ws("race-admin").await;
    let mut senders = sender_devices(&server).await;
    let mut newcomer = server.ws("race-newcomer").await;
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut rounds = 0;
    while rounds < ROUNDS && start.elapsed() < BUDGET {
        let chat = admin.group(&unique("add"), &["race-sender"]).await;
        let chat_id = s(&chat, "id").to_owned();
        for ws in std::iter::once(&mut admin).chain(&mut senders) {
            ws.event_where("chat_created", |c| c["id"] == chat_id.as_str())
                .await;
            ws.clear();
        }
        newcomer.clear();

        let split = rounds % SENDS;
        let add = json!({"chat_id": chat_id, "user_id": "race-newcomer"});
        let (sent, reply) = race(
            &mut senders,
            &mut admin,
            &chat_id,
            split,
            ("add_participant", add),
        )
        .await;
        if let Err((code, msg)) = reply {
            panic!("round {rounds}: add_participant failed: {code}: {msg}");
        }
        let added_at = system_seq(&mut admin, &chat_id, "participant_added", "race-newcomer").await;

        let after: Vec<&Sent> = sent.iter().filter(|m| m.seq > added_at).collect();
        let got = collect(&mut newcomer, &chat_id, &after).await;
        let missing: Vec<i64> = after
            .iter()
            .filter(|e| !got.iter().any(|m| m["id"] == e.id.as_str()))
            .map(|e| e.seq)
            .collect();
        let before: Vec<i64> = seqs(&got).into_iter().filter(|&q| q < added_at).collect();
        if !missing.is_empty() || !before.is_empty() {
            failures.push(format!(
                "round {rounds} (addition sent after {split} sends arrived): added at seq \
                 {added_at}, sends at {:?}; missed {missing:?} from after, got {before:?} \
                 from before",
                sent.iter().map(|m| m.seq).collect::<Vec<_>>()
            ));
        }
        rounds += 1;
    }
    report(
        "a member added while messages were in flight",
        rounds,
        &failures,
    );
}
