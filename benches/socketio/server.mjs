// The Node.js Socket.IO baseline of `chat-bench load --target
// node-socketio`: the chat traffic of the load generator (create_direct,
// create_group, send_message with acks; message_received to every member)
// on the `socket.io` server, as the original Node.js design would run it,
// with nothing stored and no checks beyond membership. The token's `sub`
// is read, not verified. Prints `listening on http://ADDR` for the
// generator. Run `npm ci` here first.
import { createServer } from "node:http";
import { Server } from "socket.io";

const http = createServer();
const io = new Server(http, { maxHttpBufferSize: 65536 });
const socketsOf = new Map(); // user -> Set<socket>
const chats = new Map(); // chat id -> { members, seq }
let nextChat = 0;
let nextMessage = 0;

io.use((socket, next) => {
  try {
    const payload = socket.handshake.auth.token.split(".")[1];
    socket.data.user = JSON.parse(Buffer.from(payload, "base64url").toString()).sub;
    next();
  } catch {
    next(new Error("authentication_error: bad token"));
  }
});

function open(members, chat) {
  const id = `c${nextChat++}`;
  chats.set(id, { members, seq: 0 });
  for (const m of members) for (const s of socketsOf.get(m) ?? []) s.join(id);
  return { id, ...chat };
}

io.on("connection", (socket) => {
  const user = socket.data.user;
  if (!socketsOf.has(user)) socketsOf.set(user, new Set());
  socketsOf.get(user).add(socket);
  socket.on("disconnect", () => socketsOf.get(user)?.delete(socket));
  socket.on("create_direct", (data, ack) => {
    ack?.({ ok: true, data: { chat: open([user, data.user_id], { type: "direct" }) } });
  });
  socket.on("create_group", (data, ack) => {
    const chat = open([user, ...data.member_ids], { type: "group", name: data.name });
    ack?.({ ok: true, data: { chat } });
  });
  socket.on("send_message", (data, ack) => {
    const chat = chats.get(data.chat_id);
    if (!chat || !chat.members.includes(user)) {
      ack?.({ ok: false, error: { code: "not_found", message: "chat not found" } });
      return;
    }
    chat.seq += 1;
    const message = {
      id: `m${nextMessage++}`, chat_id: data.chat_id, seq: chat.seq, updated_seq: chat.seq,
      sender_id: user, type: "text", content: data.content, media: null, reply_to: null,
      client_msg_id: data.client_msg_id, created_at: new Date().toISOString(),
      edited_at: null, deleted: false, reactions: {},
    };
    io.to(data.chat_id).emit("message_received", message);
    ack?.({ ok: true, data: { message } });
  });
});

http.listen(0, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${http.address().port}`);
});
