//! The load generator's Socket.IO client: Engine.IO 4 / Socket.IO 5 over
//! a WebSocket from the start (what socket.io-client ends up on after its
//! upgrade), written out by hand so that `/ws` and `/socket.io/` are driven
//! by the same generator, frame for frame.
//!
//! Packets (one per WebSocket text frame): `0{..}` open, `2` ping (answer
//! `3`), `40{auth}` connect to `/`, `40{sid}` connected, `44{message}`
//! refused, `42<id>["type",data]` a command with an ack id,
//! `42["type",data]` an event, `43<id>[reply]` an ack.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{Error, load::Ws};

/// Opens a Socket.IO connection to `/socket.io/` and joins `/` with
/// `token`.
pub(crate) async fn connect(addr: SocketAddr, token: &str) -> Result<Ws, Error> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(format!("expected the Engine.IO open packet, got {open}").into());
    }
    let auth = serde_json::json!({ "token": token });
    ws.send(Message::Text(format!("40{auth}").into())).await?;
    loop {
        let packet = next_text(&mut ws).await?;
        if packet.starts_with("40") {
            return Ok(ws);
        }
        if packet.starts_with("44") {
            return Err(format!("connection refused: {packet}").into());
        }
        if packet == "2" {
            ws.send(Message::Text("3".into())).await?;
        }
    }
}

/// The next text frame.
async fn next_text(ws: &mut Ws) -> Result<String, Error> {
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            return Ok(text.as_str().to_owned());
        }
    }
    Err("connection closed".into())
}

/// `42<ack>["<kind>",<data>]`: a command whose ack comes as `43<ack>`.
pub(crate) fn command(ack: u64, kind: &str, data: &str) -> String {
    format!(r#"42{ack}["{kind}",{data}]"#)
}

/// Sends a command and reads until its ack; returns the ack's `data`.
pub(crate) async fn request(
    ws: &mut Ws,
    ack: u64,
    kind: &str,
    data: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    ws.send(Message::Text(command(ack, kind, &data.to_string()).into()))
        .await?;
    let prefix = format!("43{ack}[");
    loop {
        let packet = next_text(ws).await?;
        if packet == "2" {
            ws.send(Message::Text("3".into())).await?;
            continue;
        }
        let Some(rest) = packet.strip_prefix(&prefix) else {
            continue;
        };
        let reply: serde_json::Value = serde_json::from_str(&format!("[{rest}"))?;
        let reply = &reply[0];
        if reply["ok"] == true {
            return Ok(reply["data"].clone());
        }
        return Err(format!("{kind} failed: {}", reply["error"]).into());
    }
}

/// What a packet the reader gets is.
pub(crate) enum Incoming {
    /// `42["message_received",..]`.
    Delivery,
    /// An ack: `Ok(())`, or the error's code.
    Ack(Result<(), ()>),
    /// An Engine.IO ping to answer.
    Ping,
    Other,
}

/// Classifies a packet by its prefix, without parsing it.
pub(crate) fn classify(packet: &str) -> Incoming {
    if packet.starts_with(r#"42["message_received""#) {
        return Incoming::Delivery;
    }
    if packet == "2" {
        return Incoming::Ping;
    }
    if let Some(rest) = packet.strip_prefix("43") {
        let reply = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        return Incoming::Ack(if reply.starts_with(r#"[{"ok":true"#) {
            Ok(())
        } else {
            Err(())
        });
    }
    Incoming::Other
}
