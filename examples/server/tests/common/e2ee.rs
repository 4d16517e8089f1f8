//! An MLS device of `chat-e2ee` with its connection: what the e2ee tests
//! drive the real server with.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chat_e2ee::{Device, MemoryDeviceStore, Processed};
use serde_json::{Value, json};

use super::{Server, Ws, device_token, unique};

pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub(crate) fn unb64(value: &Value) -> Vec<u8> {
    STANDARD
        .decode(value.as_str().expect("a base64 string"))
        .expect("valid base64")
}

/// A person with one device: a connection and an MLS device.
pub(crate) struct Person {
    pub(crate) ws: Ws,
    pub(crate) device: Device,
}

impl Person {
    pub(crate) async fn connect(server: &Server, user: &str) -> Person {
        let ws = server.ws_token(user, &device_token(user, "phone")).await;
        let device = Device::create(user, "phone", MemoryDeviceStore::new()).expect("a device");
        Person { ws, device }
    }

    pub(crate) async fn publish(&mut self, n: usize) -> Value {
        let packages: Vec<String> = self
            .device
            .generate_key_packages(n)
            .expect("key packages")
            .iter()
            .map(|p| b64(p))
            .collect();
        let last_resort = b64(&self.device.last_resort_key_package().expect("last resort"));
        self.ws
            .ok(
                "publish_key_packages",
                json!({"key_packages": packages, "last_resort": last_resort}),
            )
            .await
    }

    /// Waits for the next `mls_commit` of `chat` and processes it (or
    /// joins from its welcome if this device has no group yet).
    pub(crate) async fn follow_commit(&mut self, chat: &str) {
        let group = chat.as_bytes();
        // The commit for this device's epoch (earlier ones, its own among
        // them, it has processed already); any with a welcome if it has
        // no group yet.
        let epoch = self.device.epoch(group).ok();
        let commit = self
            .ws
            .event_where("message_received", |m| {
                m["type"] == "mls_commit"
                    && m["chat_id"] == chat
                    && match epoch {
                        Some(e) => m["mls"]["epoch"] == e,
                        None => m["mls"]["welcome"].is_string(),
                    }
            })
            .await;
        if epoch.is_none() {
            let welcome = unb64(&commit["mls"]["welcome"]);
            self.device.join(&welcome).expect("joined from the welcome");
        } else {
            self.device
                .process(group, &unb64(&commit["mls"]["commit"]))
                .expect("the commit processes");
        }
    }

    pub(crate) async fn send(&mut self, chat: &str, text: &str) -> Value {
        let sealed = self
            .device
            .encrypt(chat.as_bytes(), text.as_bytes())
            .expect("encrypted");
        self.ws
            .ok(
                "send_message",
                json!({"chat_id": chat, "client_msg_id": unique("e2"), "content": b64(&sealed)}),
            )
            .await
    }

    /// The next message of another member in `chat`, decrypted (this
    /// connection also gets its own messages back: they are skipped).
    pub(crate) async fn receive(&mut self, chat: &str) -> String {
        let me = self.device.user_id().to_owned();
        let message = self
            .ws
            .event_where("message_received", |m| {
                m["type"] == "text" && m["chat_id"] == chat && m["sender_id"] != me.as_str()
            })
            .await;
        match self
            .device
            .process(chat.as_bytes(), &unb64(&message["content"]))
            .expect("decrypts")
        {
            Processed::Application { plaintext, .. } => {
                String::from_utf8(plaintext).expect("utf-8")
            }
            other => panic!("expected an application message, got {other:?}"),
        }
    }
}

/// Alice creates an e2ee group with `others` (who published key
/// packages), as its first commit; every other person joins.
pub(crate) async fn e2ee_group(alice: &mut Person, others: &mut [&mut Person]) -> String {
    let ids: Vec<String> = others
        .iter()
        .map(|p| p.device.user_id().to_owned())
        .collect();
    let chat = alice
        .ws
        .ok(
            "create_group",
            json!({"name": "circle", "member_ids": ids, "encryption": "e2ee"}),
        )
        .await["chat"]["id"]
        .as_str()
        .expect("a chat id")
        .to_owned();
    let group = chat.as_bytes();
    alice.device.create_group(group).expect("a group");
    let start = alice.device.group_info(group).expect("group info");
    let claimed = alice
        .ws
        .ok("claim_key_packages", json!({ "user_ids": ids }))
        .await;
    let packages: Vec<Vec<u8>> = claimed["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| unb64(&d["key_package"]))
        .collect();
    let bundle = alice
        .device
        .add_members(group, &packages)
        .expect("a commit");
    alice
        .ws
        .ok(
            "mls_commit",
            json!({
                "chat_id": chat,
                "epoch": 0,
                "commit": b64(&bundle.commit),
                "welcome": bundle.welcome.as_deref().map(b64),
                "group_info": b64(&start),
            }),
        )
        .await;
    alice.device.merge_pending_commit(group).expect("merged");
    for other in others.iter_mut() {
        other.follow_commit(&chat).await;
    }
    chat
}
