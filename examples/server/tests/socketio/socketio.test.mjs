// `/socket.io/` with socket.io-client v4 as a front end uses it: the URL
// and `auth`, nothing else (default transports: polling, then the
// WebSocket upgrade). Run by ../socketio.rs against a fresh chat-server,
// which passes CHAT_URL, TOKENS ({user: jwt}) and BAD_TOKEN.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const URL = process.env.CHAT_URL;
const TOKENS = JSON.parse(process.env.TOKENS);
const WAIT_MS = 5000;

const open = [];
after(() => {
  for (const s of open) s.close();
});

/** A client of `user`, connected (rejects on connect_error). */
function connect(user) {
  return connectWith({ auth: { token: TOKENS[user] } });
}

/** A client with these options, connected (rejects on connect_error). */
function connectWith(options) {
  const socket = io(URL, options);
  open.push(socket);
  const events = [];
  socket.onAny((type, data) => events.push({ type, data }));
  socket.events = events;
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(err));
  });
}

/** Emits a command and resolves with its ack: {ok, data} or {ok, error}. */
function request(socket, type, data) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ack for ${type}`)), WAIT_MS);
    socket.emit(type, data, (reply) => {
      clearTimeout(timer);
      resolve(reply);
    });
  });
}

/** The ack data of a command that must succeed. */
async function ok(socket, type, data) {
  const reply = await request(socket, type, data);
  assert.equal(reply.ok, true, `${type}: ${JSON.stringify(reply)}`);
  return reply.data;
}

/** The first event of `type` (already received or to come) matching `pred`. */
function event(socket, type, pred = () => true) {
  const seen = socket.events.find((e) => e.type === type && pred(e.data));
  if (seen) return Promise.resolve(seen.data);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.offAny(listener);
      reject(new Error(`no ${type} within ${WAIT_MS} ms`));
    }, WAIT_MS);
    const listener = (t, data) => {
      if (t === type && pred(data)) {
        clearTimeout(timer);
        socket.offAny(listener);
        resolve(data);
      }
    };
    socket.onAny(listener);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Sends a text; returns the stored message. */
async function send(socket, chatId, content) {
  const cid = `c-${Math.random().toString(36).slice(2)}`;
  return (await ok(socket, "send_message", { chat_id: chatId, client_msg_id: cid, content })).message;
}

test("a bad or missing token fails the connection with authentication_error", async () => {
  const refused = [{ auth: { token: process.env.BAD_TOKEN } }, { auth: { token: "" } }, {}];
  for (const options of refused) {
    await assert.rejects(connectWith(options), (err) => {
      assert.match(err.message, /^authentication_error/);
      return true;
    });
  }
});

test("a direct chat: acks, error acks, messages, typing, read receipts; the upgrade", async () => {
  const ann = await connect("ann");
  const bob = await connect("bob");
  // Both start on polling and upgrade to WebSocket on their own.
  const presence = await event(ann, "presence_update");
  assert.ok(Array.isArray(presence.users));

  const { chat } = await ok(ann, "create_direct", { user_id: "bob" });
  assert.equal(chat.type, "direct");
  const created = await event(bob, "chat_created", (c) => c.id === chat.id);
  assert.equal(created.id, chat.id);

  // An error ack, as on /ws: the code and a message.
  const bad = await request(ann, "send_message", { chat_id: chat.id, content: "no client_msg_id" });
  assert.equal(bad.ok, false);
  assert.equal(bad.error.code, "bad_request");
  assert.equal(typeof bad.error.message, "string");
  const unknown = await request(ann, "no_such_command", {});
  assert.equal(unknown.ok, false);
  assert.equal(unknown.error.code, "bad_request");

  const hi = await send(ann, chat.id, "hi bob, <b>not html</b>");
  const got = await event(bob, "message_received", (m) => m.id === hi.id);
  assert.equal(got.content, "hi bob, <b>not html</b>");
  assert.equal(got.sender_id, "ann");

  // Typing goes to participants who have the chat open.
  await ok(bob, "join_chat", { chat_id: chat.id });
  await ok(ann, "typing_start", { chat_id: chat.id });
  const typing = await event(bob, "user_typing", (t) => t.chat_id === chat.id);
  assert.equal(typing.user_id, "ann");

  await ok(bob, "mark_as_read", { chat_id: chat.id, up_to_seq: hi.seq });
  const read = await event(ann, "message_read", (r) => r.chat_id === chat.id);
  assert.deepEqual(read, { chat_id: chat.id, user_id: "bob", up_to_seq: hi.seq });

  // Commands run one at a time, in the order they were emitted.
  const sent = await Promise.all(
    Array.from({ length: 10 }, (_, i) => ok(ann, "send_message", {
      chat_id: chat.id, client_msg_id: `order-${i}`, content: `n${i}`,
    })),
  );
  const seqs = sent.map((a) => a.message.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(new Set(seqs).size, 10);

  assert.equal(ann.io.engine.transport.name, "websocket");
  assert.equal(bob.io.engine.transport.name, "websocket");
});

test("a group with roles; a removed member gets no more of its events", async () => {
  const ann = await connect("ann");
  const bob = await connect("bob");
  const cat = await connect("cat");
  const { chat } = await ok(ann, "create_group", { name: "circle", member_ids: ["bob", "cat"] });
  await event(cat, "chat_created", (c) => c.id === chat.id);
  await ok(ann, "set_role", { chat_id: chat.id, user_id: "cat", role: "moderator" });
  // A member may not change roles.
  const refused = await request(bob, "set_role", { chat_id: chat.id, user_id: "cat", role: "admin" });
  assert.equal(refused.ok, false);
  assert.equal(refused.error.code, "forbidden");

  // The moderator removes bob.
  await ok(cat, "remove_participant", { chat_id: chat.id, user_id: "bob" });
  const removed = await event(bob, "participant_removed", (p) => p.chat_id === chat.id);
  assert.equal(removed.user_id, "bob");
  const after = await send(ann, chat.id, "bob is gone");
  await event(cat, "message_received", (m) => m.id === after.id);
  await sleep(300);
  assert.equal(
    bob.events.some((e) => e.type === "message_received" && e.data.id === after.id),
    false,
    "a removed member gets nothing of the group",
  );
});

test("over the rate limit: the error ack and rate_limit_exceeded", async () => {
  const flo = await connect("flo");
  const { chat } = await ok(flo, "create_direct", { user_id: "ann" });
  const replies = await Promise.all(
    Array.from({ length: 40 }, (_, i) => request(flo, "send_message", {
      chat_id: chat.id, client_msg_id: `flood-${i}`, content: `flood ${i}`,
    })),
  );
  const limited = replies.filter((r) => !r.ok);
  assert.ok(limited.length > 0, "some sends are refused");
  assert.ok(limited.every((r) => r.error.code === "rate_limited"), JSON.stringify(limited[0]));
  const exceeded = await event(flo, "rate_limit_exceeded");
  assert.equal(exceeded.command, "send_message");
  assert.equal(typeof exceeded.retry_after_ms, "number");
});

test("a client that was away catches up with sync after reconnecting", async () => {
  const ann = await connect("ann");
  let bob = await connect("bob");
  const { chat } = await ok(ann, "create_direct", { user_id: "bob" });
  const first = await send(ann, chat.id, "before");
  await event(bob, "message_received", (m) => m.id === first.id);
  bob.close();
  const missed = [await send(ann, chat.id, "while away 1"), await send(ann, chat.id, "while away 2")];
  bob = await connect("bob");
  const { chats } = await ok(bob, "sync", { cursors: { [chat.id]: first.seq } });
  const mine = chats.find((c) => c.chat.id === chat.id);
  assert.deepEqual(mine.changes.map((m) => m.id), missed.map((m) => m.id));
});

test("a /ws client and a Socket.IO client talk to each other", async () => {
  const ann = await connect("ann");
  const ws = new WebSocket(`${URL.replace(/^http/, "ws")}/ws?token=${TOKENS.dan}`);
  const frames = [];
  const waiters = [];
  ws.onmessage = (m) => {
    const frame = JSON.parse(m.data);
    frames.push(frame);
    for (const w of [...waiters]) {
      if (w.pred(frame)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(frame);
      }
    }
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  const frame = (pred) => {
    const seen = frames.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      waiters.push({ pred, resolve });
      setTimeout(() => reject(new Error("no frame")), WAIT_MS);
    });
  };
  ws.send(JSON.stringify({ type: "create_direct", id: "r1", data: { user_id: "ann" } }));
  const chat = (await frame((f) => f.id === "r1")).data.chat;

  ws.send(JSON.stringify({
    type: "send_message", id: "r2", data: { chat_id: chat.id, client_msg_id: "ws-1", content: "from /ws" },
  }));
  const fromWs = await event(ann, "message_received", (m) => m.client_msg_id === "ws-1");
  assert.equal(fromWs.content, "from /ws");
  assert.equal(fromWs.sender_id, "dan");

  const reply = await send(ann, chat.id, "from socket.io");
  const got = await frame((f) => f.type === "message_received" && f.data.id === reply.id);
  assert.equal(got.data.content, "from socket.io");
  ws.close();
});

test("a suspended user is told why (closing, 4003) and disconnected", async () => {
  const eve = await connect("eve");
  const gone = new Promise((resolve) => eve.once("disconnect", resolve));
  const r = await fetch(`${URL}/api/v1/admin/users/eve/suspend`, {
    method: "POST",
    headers: { authorization: `Bearer ${process.env.ADMIN_TOKEN}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(r.status, 200, await r.text());
  const closing = await event(eve, "closing");
  assert.equal(closing.code, 4003);
  assert.equal(await gone, "io server disconnect");
  // And cannot come back while suspended.
  await assert.rejects(connect("eve"), (err) => {
    assert.equal(err.message, "authentication_error: this account is suspended");
    return true;
  });
});
