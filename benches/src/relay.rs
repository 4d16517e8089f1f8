//! The bare broadcast relay: the baseline for WebSocket fan-out.
//!
//! Clients connect to `ws://ADDR/?group=<name>`; every text frame a client
//! sends is queued, as the same shared buffer, on every connection of its
//! group (the sender's too). No authentication, no JSON parsing, no
//! storage: what is left is the cost of WebSockets and fan-out, which the
//! chat server pays too.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use clap::Args;
use futures::{SinkExt, StreamExt};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{Request, Response},
};

use crate::Error;

/// `chat-bench relay`
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
}

type Groups = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>>;

pub(crate) async fn run(args: RelayArgs) -> Result<(), Error> {
    let listener = TcpListener::bind(args.bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener).await
}

/// Serves the relay on `listener` until the process ends.
pub(crate) async fn serve(listener: TcpListener) -> Result<(), Error> {
    let groups: Groups = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let groups = groups.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut group = String::new();
            // The callback's error type is tungstenite's; it never fails here.
            #[allow(clippy::result_large_err)]
            let callback = |req: &Request, resp: Response| {
                group = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("group=")))
                    .unwrap_or("default")
                    .to_owned();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            // Same bound as the chat server's default outgoing queue.
            let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
            groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(group.clone())
                .or_default()
                .push(tx);
            // Writes what is queued in one flush, as the chat server does,
            // so that the ratio measures the engine and not a write
            // strategy.
            let writer = tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    let mut next = Some(first);
                    let mut fed = 0;
                    while let Some(frame) = next.take() {
                        let Ok(text) = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(frame)
                        else {
                            return;
                        };
                        if sink.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                        fed += 1;
                        if fed < 64 {
                            next = rx.try_recv().ok();
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Close(_) = msg {
                    break;
                }
                if let Message::Text(text) = msg {
                    let frame = Bytes::from(text);
                    let groups = groups.lock().unwrap_or_else(|e| e.into_inner());
                    for member in groups.get(&group).into_iter().flatten() {
                        let _ = member.try_send(frame.clone());
                    }
                }
            }
            writer.abort();
        });
    }
}
