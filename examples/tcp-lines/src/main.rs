//! The chat protocol as line-delimited JSON over TCP: one frame per line,
//! in both directions. Everything but the socket is chat-core's connection
//! driver, exactly as behind `/ws`.
//!
//! Run: `CHAT_JWT_SECRET=s cargo run -p chat-tcp-lines -- 127.0.0.1:7070`,
//! then `nc 127.0.0.1 7070` and type
//! `{"type":"authenticate","id":"1","data":{"token":"<jwt>"}}`
//! (a token from `chat-server token alice` with the same secret).

use std::sync::Arc;

use chat_core::{
    ChatEngine, MemoryStore,
    protocol::{Auth, Driver, DriverConfig, Inbound, Outbound},
};
use chat_transport_ws::auth::{AuthConfig, Verifier};
use futures::{SinkExt, StreamExt, future::ready};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

/// Longest line accepted, as `/ws` bounds its frames.
const MAX_LINE: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs one connection: lines in, lines out. A close is written as a last
/// line, `{"type":"close","data":{"code":..,"reason":..}}`, since TCP has
/// no close code of its own; then the socket is shut.
async fn connection(driver: Driver, tcp: TcpStream) {
    let (read, write) = tcp.into_split();
    let inbound =
        FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE)).scan((), |(), line| {
            ready(match line {
                Ok(line) if line.trim().is_empty() => Some(Inbound::Heartbeat),
                Ok(line) => Some(Inbound::Text(line)),
                Err(LinesCodecError::MaxLineLengthExceeded) => Some(Inbound::TooLarge),
                Err(_) => None,
            })
        });
    let outbound = FramedWrite::new(write, LinesCodec::new()).with(|out: Outbound| {
        ready(Ok::<_, LinesCodecError>(match out {
            // Frames are serde_json's output: UTF-8 without raw newlines.
            Outbound::Text(text) => String::from_utf8_lossy(&text).into_owned(),
            Outbound::Close(close) => format!(
                r#"{{"type":"close","data":{{"code":{},"reason":{:?}}}}}"#,
                close.reason.code(),
                close.message
            ),
            // No pings are configured; an empty line would do.
            _ => String::new(),
        }))
    });
    driver
        .run(Auth::FirstFrame, outbound, Box::pin(inbound))
        .await;
}

/// Accepts connections on `listener` for `driver`, forever.
async fn serve(listener: TcpListener, driver: Driver) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => drop(tokio::spawn(connection(driver.clone(), tcp))),
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}

/// A driver for `engine`, verifying tokens signed with `secret`.
fn driver(engine: ChatEngine, secret: &str) -> Result<Driver, BoxError> {
    let verifier = Arc::new(Verifier::new(&AuthConfig::hs256(secret))?);
    let mut config = DriverConfig::default();
    // A line transport has no ping frame; clients send empty lines instead.
    config.ping_interval = None;
    Ok(Driver::new(engine, verifier, config))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:7070".into());
    let secret = std::env::var("CHAT_JWT_SECRET").map_err(|_| "set CHAT_JWT_SECRET")?;
    let engine = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .build()
        .await?;
    let listener = TcpListener::bind(&addr).await?;
    println!("chat over TCP lines on {addr}");
    tokio::select! {
        () = serve(listener, driver(engine.clone(), &secret)?) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    engine.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
