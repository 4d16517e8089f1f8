// The example of README's "Socket.IO clients", run as written by
// ../socketio.rs (keep the two the same).
import { io } from "socket.io-client";

const url = process.env.CHAT_URL ?? "http://127.0.0.1:8080";
const token = process.env.CHAT_TOKEN; // a JWT your app issued (in --dev: GET /dev/token?user=alice)
const socket = io(url, { auth: { token } });

socket.on("connect_error", (err) => console.error(err.message)); // "authentication_error: ..."
socket.on("message_received", (m) => console.log(`${m.sender_id}: ${m.content}`));
socket.on("connect", () => {
  socket.emit("create_direct", { user_id: "bob" }, (reply) => {
    if (!reply.ok) return console.error(reply.error.code, reply.error.message);
    const message = { chat_id: reply.data.chat.id, client_msg_id: crypto.randomUUID(), content: "hi bob" };
    socket.emit("send_message", message, (sent) => {
      console.log(sent.ok ? `stored as #${sent.data.message.seq}` : sent.error.code);
      socket.close();
    });
  });
});
