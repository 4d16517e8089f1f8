//! The line transport end to end over real TCP sockets on loopback.

use std::time::Duration;

use chat_core::UserId;
use chat_transport_ws::auth::issue_hs256;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::*;

const SECRET: &str = "a test secret";

struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let (read, write) = tcp.into_split();
        Self {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    /// Connected and authenticated as `user`; the `presence_update` read.
    async fn signed_in(addr: std::net::SocketAddr, user: &str) -> Self {
        let mut client = Self::open(addr).await;
        let user = UserId::new(user).expect("a valid id");
        let token = issue_hs256(SECRET.as_bytes(), &user, false, Duration::from_secs(600))
            .expect("a token");
        client
            .send(json!({"type": "authenticate", "id": "a", "data": {"token": token}}))
            .await;
        assert_eq!(client.next().await["type"], "ack");
        assert_eq!(client.next().await["type"], "presence_update");
        client
    }

    async fn send(&mut self, frame: Value) {
        self.send_line(&frame.to_string()).await;
    }

    async fn send_line(&mut self, line: &str) {
        self.write.write_all(line.as_bytes()).await.expect("writes");
        self.write.write_all(b"\n").await.expect("writes");
    }

    /// The next line of type `kind` (or answering request `kind`).
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let line = self.next().await;
            if line["type"] == kind || line["id"] == kind {
                return line;
            }
        }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .expect("reads")
            .expect("the connection is open");
        serde_json::from_str(&line).expect("a JSON line")
    }
}

async fn server() -> std::net::SocketAddr {
    let engine = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .build()
        .await
        .expect("an engine");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    let driver = driver(engine, SECRET).expect("a driver");
    tokio::spawn(serve(listener, driver));
    addr
}

#[tokio::test]
async fn two_clients_chat_over_lines() {
    let addr = server().await;
    let mut alice = Client::signed_in(addr, "alice").await;
    let mut bob = Client::signed_in(addr, "bob").await;
    alice
        .send(json!({"type": "create_direct", "id": "1", "data": {"user_id": "bob"}}))
        .await;
    let ack = alice.next_of("1").await;
    let chat = ack["data"]["chat"]["id"].clone();
    assert_eq!(bob.next().await["type"], "chat_created");
    let send = json!({"type": "send_message", "id": "2",
        "data": {"chat_id": chat, "client_msg_id": "c-1", "content": "hello over TCP"}});
    alice.send(send).await;
    let received = bob.next_of("message_received").await;
    assert_eq!(received["data"]["content"], "hello over TCP");
}

#[tokio::test]
async fn bad_tokens_and_long_lines_close_with_their_codes() {
    let addr = server().await;
    let mut stranger = Client::open(addr).await;
    stranger
        .send(json!({"type": "authenticate", "data": {"token": "not a jwt"}}))
        .await;
    assert_eq!(stranger.next().await["type"], "authentication_error");
    assert_eq!(stranger.next().await["data"]["code"], 4001);
    let mut carol = Client::signed_in(addr, "carol").await;
    carol.send_line(&"x".repeat(MAX_LINE + 1)).await;
    let close = carol.next().await;
    assert_eq!(close["type"], "close");
    assert_eq!(close["data"]["code"], 1009);
}
