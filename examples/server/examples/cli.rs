//! Run with: cargo run -p chat-server --example cli -- ws://127.0.0.1:8080/ws <token>
//!
//! A tiny terminal client for trying the server: every frame the server
//! sends is printed as one JSON line; every line typed is sent. Lines that
//! start with `{` go out as they are; a few shortcuts build commands:
//!
//! ```text
//! /direct <user>            create_direct
//! /group <name> <user>...   create_group
//! /join <chat_id>           join_chat (typing events, last 50 messages)
//! /send <chat_id> <text>    send_message
//! /typing <chat_id>         typing_start
//! /read <chat_id> <seq>     mark_as_read
//! /history <chat_id>        history
//! /sync                     sync (everything)
//! ```

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token)) = (args.next(), args.next()) else {
        eprintln!("usage: cli ws://HOST:PORT/ws TOKEN");
        std::process::exit(2);
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}{sep}token={token}")).await?;
    let (mut tx, mut rx) = ws.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(text))) => println!("{text}"),
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
                next_id += 1;
                match command(line.trim(), next_id) {
                    Some(frame) => tx.send(Message::Text(frame.to_string().into())).await?,
                    None => eprintln!("? unknown shortcut; see the help at the top of examples/cli.rs"),
                }
            }
        }
    }
}

fn command(line: &str, id: u64) -> Option<Value> {
    if line.starts_with('{') {
        return serde_json::from_str(line).ok();
    }
    let mut words = line.split_whitespace();
    let id = format!("cli-{id}");
    let (kind, data) = match words.next()? {
        "/direct" => ("create_direct", json!({"user_id": words.next()?})),
        "/group" => {
            let name = words.next()?;
            (
                "create_group",
                json!({"name": name, "member_ids": words.collect::<Vec<_>>()}),
            )
        }
        "/join" => ("join_chat", json!({"chat_id": words.next()?})),
        "/send" => {
            let chat_id = words.next()?;
            let text = words.collect::<Vec<_>>().join(" ");
            (
                "send_message",
                json!({"chat_id": chat_id, "client_msg_id": id, "content": text}),
            )
        }
        "/typing" => ("typing_start", json!({"chat_id": words.next()?})),
        "/read" => {
            let chat_id = words.next()?;
            let seq: u64 = words.next()?.parse().ok()?;
            (
                "mark_as_read",
                json!({"chat_id": chat_id, "up_to_seq": seq}),
            )
        }
        "/history" => ("history", json!({"chat_id": words.next()?})),
        "/sync" => ("sync", json!({"cursors": {}})),
        _ => return None,
    };
    Some(json!({"type": kind, "id": id, "data": data}))
}
