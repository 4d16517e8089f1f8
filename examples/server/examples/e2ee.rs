//! Run with: cargo run -p chat-server --example e2ee -- ws://127.0.0.1:8080/ws <token> <state.db>
//!
//! A terminal client for end-to-end encrypted chats: an MLS device of
//! `chat-e2ee` (its state kept in the SQLite file `state.db`, so it can be
//! stopped and started again), talking to the real server, which sees
//! only ciphertext. At start it publishes key packages. Then:
//!
//! ```text
//! /group <name> <user>...   create an e2ee group with these users (their
//!                           devices must have started this client once)
//! /send <chat_id> <text>    send an encrypted message
//! /rotate <chat_id>         a new key for this device (a self-update commit)
//! ```
//!
//! Incoming messages of e2ee chats are decrypted and printed as
//! `[chat] user: text`; commits are processed (a welcome joins the group);
//! everything else is printed as the server sent it.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chat_e2ee::{Device, Processed, SqliteDeviceStore};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token), Some(state)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: e2ee ws://HOST:PORT/ws TOKEN STATE_FILE");
        std::process::exit(2);
    };
    let (user, device_id) = identity_of(&token)?;
    let store = SqliteDeviceStore::open(&state)?;
    let mut device = match Device::open(store) {
        Ok(device) => device,
        Err(_) => Device::create(&user, &device_id, SqliteDeviceStore::open(&state)?)?,
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}{sep}token={token}")).await?;
    let mut client = Client { next_id: 0 };
    let packages: Vec<String> = device
        .generate_key_packages(20)?
        .iter()
        .map(|p| STANDARD.encode(p))
        .collect();
    let last_resort = STANDARD.encode(device.last_resort_key_package()?);
    let data = json!({"key_packages": packages, "last_resort": last_resort});
    let ack = client
        .request(&mut ws, &mut device, "publish_key_packages", data)
        .await?;
    println!(
        "* {user}/{device_id} ready; key packages on the server: {}",
        ack["available"]
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => on_frame(&mut device, &text),
                Some(Ok(Message::Close(close))) => {
                    println!("closed: {close:?}");
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                if let Err(e) = client.command(&mut ws, &mut device, line.trim()).await {
                    eprintln!("! {e}");
                }
            }
        }
    }
}

/// The token's `sub` and `device` claims (read, not verified: the server
/// verifies it).
fn identity_of(token: &str) -> Result<(String, String), Error> {
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    let claims: Value = serde_json::from_slice(&bytes)?;
    let user = claims["sub"].as_str().ok_or("no sub claim")?.to_owned();
    let device = claims["device"].as_str().unwrap_or("default").to_owned();
    Ok((user, device))
}

/// An event from the server: decrypted when it is a message of a group
/// this device is in, processed when it is a commit, printed otherwise.
fn on_frame(device: &mut Device, text: &str) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        println!("{text}");
        return;
    };
    let m = &frame["data"];
    if frame["type"] != "message_received" {
        println!("{text}");
        return;
    }
    let chat = m["chat_id"].as_str().unwrap_or_default();
    let group = chat.as_bytes();
    let decoded = |field: &Value| field.as_str().and_then(|s| STANDARD.decode(s).ok());
    if m["type"] == "mls_commit" {
        if device.epoch(group).is_err() {
            match decoded(&m["mls"]["welcome"]).map(|w| device.join(&w)) {
                Some(Ok(_)) => println!("* [{chat}] joined the group"),
                Some(Err(e)) => println!("* [{chat}] cannot join: {e}"),
                None => {}
            }
        } else if let Some(commit) = decoded(&m["mls"]["commit"]) {
            match device.process(group, &commit) {
                Ok(Processed::Commit { epoch, .. }) => println!("* [{chat}] epoch {epoch}"),
                Ok(_) => {}
                Err(e) => println!("* [{chat}] commit not processed: {e}"),
            }
        }
        return;
    }
    if device.epoch(group).is_err() || m["sender_id"] == device.user_id() {
        if device.epoch(group).is_err() {
            println!("{text}");
        }
        return;
    }
    match decoded(&m["content"]).map(|c| device.process(group, &c)) {
        Some(Ok(Processed::Application {
            sender_user,
            plaintext,
            ..
        })) => println!(
            "[{chat}] {sender_user}: {}",
            String::from_utf8_lossy(&plaintext)
        ),
        Some(Ok(_)) => {}
        Some(Err(e)) => println!("[{chat}] (cannot decrypt: {e})"),
        None => println!("{text}"),
    }
}

struct Client {
    next_id: u64,
}

impl Client {
    /// Sends a command and returns its ack's data, handling the events
    /// that arrive meanwhile.
    async fn request(
        &mut self,
        ws: &mut Socket,
        device: &mut Device,
        kind: &str,
        data: Value,
    ) -> Result<Value, Error> {
        self.next_id += 1;
        let id = format!("e2ee-{}", self.next_id);
        let frame = json!({"type": kind, "id": id, "data": data});
        ws.send(Message::Text(frame.to_string().into())).await?;
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg? else { continue };
            let v: Value = serde_json::from_str(&text)?;
            if v["id"] == id.as_str() {
                if v["type"] == "ack" {
                    return Ok(v["data"].clone());
                }
                return Err(format!("{kind}: {}", v["data"]).into());
            }
            on_frame(device, &text);
        }
        Err("connection closed".into())
    }

    async fn command(
        &mut self,
        ws: &mut Socket,
        device: &mut Device,
        line: &str,
    ) -> Result<(), Error> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("/group") => {
                let name = words.next().ok_or("usage: /group <name> <user>...")?;
                let users: Vec<&str> = words.collect();
                let data = json!({"name": name, "member_ids": users, "encryption": "e2ee"});
                let chat = self.request(ws, device, "create_group", data).await?["chat"]["id"]
                    .as_str()
                    .ok_or("no chat id")?
                    .to_owned();
                let group = chat.as_bytes();
                device.create_group(group)?;
                let start = device.group_info(group)?;
                let claimed = self
                    .request(ws, device, "claim_key_packages", json!({"user_ids": users}))
                    .await?;
                let packages: Vec<Vec<u8>> = claimed["devices"]
                    .as_array()
                    .ok_or("no devices")?
                    .iter()
                    .filter_map(|d| d["key_package"].as_str())
                    .filter_map(|p| STANDARD.decode(p).ok())
                    .collect();
                let bundle = device.add_members(group, &packages)?;
                let data = json!({
                    "chat_id": chat, "epoch": bundle.epoch,
                    "commit": STANDARD.encode(&bundle.commit),
                    "welcome": bundle.welcome.as_deref().map(|w| STANDARD.encode(w)),
                    "group_info": STANDARD.encode(&start),
                });
                match self.request(ws, device, "mls_commit", data).await {
                    Ok(_) => {
                        device.merge_pending_commit(group)?;
                        println!("* [{chat}] e2ee group with {} devices", packages.len() + 1);
                    }
                    Err(e) => {
                        device.discard_pending_commit(group)?;
                        return Err(e);
                    }
                }
            }
            Some("/send") => {
                let chat = words.next().ok_or("usage: /send <chat_id> <text>")?;
                let text = words.collect::<Vec<_>>().join(" ");
                let sealed = device.encrypt(chat.as_bytes(), text.as_bytes())?;
                self.next_id += 1;
                let data = json!({
                    "chat_id": chat, "client_msg_id": format!("e2ee-msg-{}", self.next_id),
                    "content": STANDARD.encode(&sealed),
                });
                self.request(ws, device, "send_message", data).await?;
            }
            Some("/rotate") => {
                let chat = words.next().ok_or("usage: /rotate <chat_id>")?;
                let bundle = device.self_update(chat.as_bytes())?;
                let data = json!({
                    "chat_id": chat, "epoch": bundle.epoch,
                    "commit": STANDARD.encode(&bundle.commit),
                });
                match self.request(ws, device, "mls_commit", data).await {
                    Ok(_) => {
                        let epoch = device.merge_pending_commit(chat.as_bytes())?;
                        println!("* [{chat}] new key, epoch {epoch}");
                    }
                    Err(e) => {
                        device.discard_pending_commit(chat.as_bytes())?;
                        return Err(e);
                    }
                }
            }
            _ => {
                return Err(
                    "commands: /group <name> <user>..., /send <chat_id> <text>, /rotate <chat_id>"
                        .into(),
                );
            }
        }
        Ok(())
    }
}
