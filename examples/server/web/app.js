// The chat's web client: plain ES module, no build step, served by
// chat-server at `/`. It speaks the protocol of docs/protocol.md over
// `/ws` as any client would: `authenticate` first, optimistic sends with
// their `client_msg_id` (kept and resent as they are while offline, so a
// retry is never a second message), `sync` after every (re)connect.
// Everything a person wrote is put on the page as text (`textContent`),
// never as HTML; the only links are `resource` messages' https URLs.

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
};

const state = {
  token: null,
  me: null,
  ws: null,
  ready: false,
  retry: 0,
  nextId: 1,
  waiting: new Map(), // request id -> {resolve, reject}
  chats: new Map(), // chat id -> chat
  logs: new Map(), // chat id -> Map(seq -> message)
  cursors: {}, // chat id -> highest updated_seq seen
  online: new Set(),
  typing: new Map(), // chat id -> Map(user -> timer)
  outbox: [], // sends not yet acknowledged: {chat_id, client_msg_id, type, content, media_id}
  current: null,
  editing: null, // message being edited
  replyTo: null, // message being answered
  lastTyping: 0,
  loaded: false, // the chat list came (see initialLoad)
  joining: false, // a chat's first page is on its way (join_chat)
  results: new Map(), // check-in id -> {counts, total}, for check-ins I asked
  answered: new Map(), // check-in id -> the option I picked
};

// --- the connection -------------------------------------------------------

function connect() {
  if (!state.token || (state.ws && state.ws.readyState <= WebSocket.OPEN)) return;
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => {
    const id = `r${state.nextId++}`;
    state.waiting.set(id, {
      resolve: (data) => onAuthenticated(data),
      reject: (e) => signOut(e.message),
    });
    ws.send(JSON.stringify({ type: "authenticate", id, data: { token: state.token } }));
  };
  ws.onmessage = (m) => onFrame(JSON.parse(m.data));
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ready = false;
    state.ws = null;
    for (const { reject } of state.waiting.values()) reject(new Error("offline"));
    state.waiting.clear();
    showOffline(true);
    if (!state.token || !navigator.onLine) return; // `online` reconnects
    const delay = Math.min(15000, 500 * 2 ** state.retry++);
    setTimeout(connect, delay);
  };
}

async function onAuthenticated(who) {
  state.me = who.user_id;
  state.ready = true;
  state.retry = 0;
  showOffline(false);
  $("me").textContent = state.me;
  if (!state.loaded) await initialLoad();
  await syncAll();
  await flushOutbox();
}

/** A JSON answer of the HTTP API. */
async function api(path) {
  const r = await fetch(path, { headers: { authorization: `Bearer ${state.token}` } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.message ?? `${path}: ${r.status}`);
  return body;
}

/** First load: the chat list (not every chat's whole log, which `sync`
 * without cursors would bring), each chat's last message for its
 * preview, and a cursor at each chat's `last_seq`, so that `sync` brings
 * only what changes from now on; a chat's history loads when it opens. */
async function initialLoad() {
  try {
    const chats = [];
    let cursor = null;
    do {
      const page = await api(`/api/v1/chat/sessions?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      chats.push(...page.chats);
      cursor = page.next_cursor;
    } while (cursor && chats.length < 1000);
    for (const chat of chats) {
      state.chats.set(chat.id, chat);
      state.cursors[chat.id] = chat.last_seq ?? 0;
    }
    await Promise.all(chats.map((chat) => request("history", { chat_id: chat.id, limit: 1 })
      .then(({ messages }) => { for (const m of messages) logOf(chat.id).set(m.seq, m); }, () => {})));
    state.loaded = true;
  } catch (e) {
    toast(e.message);
  }
}

function request(type, data) {
  if (!state.ready) return Promise.reject(new Error("offline"));
  const id = `r${state.nextId++}`;
  return new Promise((resolve, reject) => {
    state.waiting.set(id, { resolve, reject });
    state.ws.send(JSON.stringify({ type, id, data }));
  });
}

function onFrame(frame) {
  if (frame.id && state.waiting.has(frame.id)) {
    const { resolve, reject } = state.waiting.get(frame.id);
    state.waiting.delete(frame.id);
    if (frame.type === "ack") resolve(frame.data);
    else reject(Object.assign(new Error(frame.data.message), { code: frame.data.code }));
    return;
  }
  const handler = events[frame.type];
  if (handler) handler(frame.data);
}

const events = {
  message_received: (m) => {
    const mine = m.sender_id === state.me;
    const known = logOf(m.chat_id).has(m.seq);
    upsert(m);
    if (!mine && !known) {
      if (m.chat_id === state.current && document.visibilityState === "visible") markRead(m.chat_id);
      else {
        request("mark_delivered", { chat_id: m.chat_id, up_to_seq: m.seq }).catch(() => {});
        const chat = state.chats.get(m.chat_id);
        if (chat) chat.unread_count = (chat.unread_count ?? 0) + 1;
      }
    }
    renderList();
  },
  message_edited: (m) => upsert(m),
  message_deleted: (d) => {
    const m = messageById(d.chat_id, d.message_id);
    if (m) upsert({ ...m, deleted: true, content: null, media: null, updated_seq: d.updated_seq });
  },
  reaction_added: (r) => react(r, true),
  reaction_removed: (r) => react(r, false),
  message_delivered: (r) => watermark(r, "delivered_seq"),
  message_read: (r) => watermark(r, "read_seq"),
  user_typing: (t) => setTyping(t.chat_id, t.user_id, true),
  user_stopped_typing: (t) => setTyping(t.chat_id, t.user_id, false),
  presence_update: (p) => {
    for (const u of p.users) (u.online ? state.online.add(u.user_id) : state.online.delete(u.user_id));
    renderList();
  },
  user_online: (u) => { state.online.add(u.user_id); renderList(); },
  user_offline: (u) => { state.online.delete(u.user_id); renderList(); },
  chat_created: (c) => { state.chats.set(c.id, c); renderList(); },
  chat_updated: (c) => { state.chats.set(c.id, { ...state.chats.get(c.id), ...c }); renderList(); renderHeader(); },
  participant_added: () => syncAll(),
  participant_removed: (p) => {
    if (p.user_id === state.me) {
      state.chats.delete(p.chat_id);
      if (state.current === p.chat_id) closeChat();
      renderList();
    } else syncAll();
  },
  support_resources: (s) => showResources(s),
  checkin_answered: (r) => {
    state.results.set(r.message_id, r);
    if (r.chat_id === state.current) renderMessages();
  },
  rate_limit_exceeded: (r) => toast(`Slow down: try again in ${Math.ceil(r.retry_after_ms / 1000)} s.`),
  error: (e) => toast(e.message),
  authentication_error: (e) => signOut(e.message),
};

// --- state ----------------------------------------------------------------

function logOf(chatId) {
  if (!state.logs.has(chatId)) state.logs.set(chatId, new Map());
  return state.logs.get(chatId);
}

/** A message of `chatId`'s log we hold, by its id. */
function messageById(chatId, id) {
  for (const m of logOf(chatId).values()) if (m.id === id) return m;
  return undefined;
}

function upsert(m) {
  logOf(m.chat_id).set(m.seq, m);
  state.cursors[m.chat_id] = Math.max(state.cursors[m.chat_id] ?? 0, m.updated_seq);
  const chat = state.chats.get(m.chat_id);
  if (chat && m.seq > (chat.last_seq ?? 0)) {
    chat.last_seq = m.seq;
    chat.last_activity = m.created_at;
  }
  if (m.chat_id === state.current) renderMessages();
}

function react(r, add) {
  const m = messageById(r.chat_id, r.message_id);
  if (!m) return;
  const reactions = { ...(m.reactions ?? {}) };
  const users = new Set(reactions[r.emoji] ?? []);
  add ? users.add(r.user_id) : users.delete(r.user_id);
  if (users.size) reactions[r.emoji] = [...users];
  else delete reactions[r.emoji];
  upsert({ ...m, reactions, updated_seq: r.updated_seq });
}

function watermark(r, key) {
  const chat = state.chats.get(r.chat_id);
  const p = chat?.participants?.find((x) => x.user_id === r.user_id);
  if (!p) return;
  p[key] = Math.max(p[key] ?? 0, r.up_to_seq);
  if (key === "read_seq") p.delivered_seq = Math.max(p.delivered_seq ?? 0, r.up_to_seq);
  if (r.chat_id === state.current) renderMessages();
}

async function syncAll() {
  try {
    for (;;) {
      const { chats } = await request("sync", { cursors: state.cursors });
      let more = false;
      for (const { chat, changes, has_more } of chats) {
        state.chats.set(chat.id, chat);
        for (const m of changes) upsert(m);
        if (!(chat.id in state.cursors)) state.cursors[chat.id] = chat.last_seq ?? 0;
        more ||= has_more;
      }
      if (!more) break;
    }
  } catch (e) {
    if (e.message !== "offline") toast(e.message);
  }
  renderList();
  if (state.current) {
    renderHeader();
    renderMessages();
    markRead(state.current);
  }
}

function markRead(chatId) {
  const chat = state.chats.get(chatId);
  const last = Math.max(0, ...logOf(chatId).keys());
  if (!chat || !last) return;
  chat.unread_count = 0;
  request("mark_as_read", { chat_id: chatId, up_to_seq: last }).catch(() => {});
  renderList();
}

// --- sending --------------------------------------------------------------

async function send(item) {
  state.outbox.push(item);
  if (item.chat_id === state.current) renderMessages();
  await flushOutbox();
}

let flushing = false;
async function flushOutbox() {
  if (flushing) return;
  flushing = true;
  try {
    while (state.ready && state.outbox.length) {
      const item = state.outbox[0];
      const data = { chat_id: item.chat_id, client_msg_id: item.client_msg_id };
      if (item.type) data.type = item.type;
      if (item.content) data.content = item.content;
      if (item.media_id) data.media_id = item.media_id;
      if (item.reply_to) data.reply_to = item.reply_to;
      try {
        const { message } = await request("send_message", data);
        state.outbox.shift();
        upsert(message);
      } catch (e) {
        if (e.message === "offline") break; // resent, same client_msg_id, when back
        state.outbox.shift();
        toast(`Not sent: ${e.message}`);
        if (item.chat_id === state.current) renderMessages();
      }
    }
  } finally {
    flushing = false;
  }
}

function newId() {
  return crypto.randomUUID();
}

async function upload(file) {
  const chatId = state.current;
  const form = new FormData();
  form.append("file", file);
  const r = await fetch(`/api/v1/chat/upload/${encodeURIComponent(chatId)}`, {
    method: "POST",
    headers: { authorization: `Bearer ${state.token}` },
    body: form,
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.message ?? `upload failed (${r.status})`);
  const type = file.type.startsWith("image/") ? "image" : file.type.startsWith("audio/") ? "voice" : "file";
  await send({ chat_id: chatId, client_msg_id: newId(), type, media_id: body.media.id });
}

const blobs = new Map(); // url -> object URL
async function blobUrl(url) {
  if (!blobs.has(url)) {
    const r = await fetch(url, { headers: { authorization: `Bearer ${state.token}` } });
    if (!r.ok) throw new Error(`download failed (${r.status})`);
    blobs.set(url, URL.createObjectURL(await r.blob()));
  }
  return blobs.get(url);
}

// --- rendering ------------------------------------------------------------

function chatName(chat) {
  if (chat.type === "group") return chat.name ?? "Group";
  return chat.participants?.find((p) => p.user_id !== state.me)?.user_id ?? "Direct chat";
}

function lastMessage(chatId) {
  const log = logOf(chatId);
  const seqs = [...log.keys()].sort((a, b) => b - a);
  for (const s of seqs) if (log.get(s).type !== "system") return log.get(s);
  return null;
}

function preview(m) {
  if (!m) return "";
  if (m.deleted) return "Message deleted";
  if (m.type === "image") return "Photo";
  if (m.type === "voice") return "Voice note";
  if (m.type === "file") return "File";
  if (m.type === "resource") return m.resource?.title ?? "Resource";
  if (m.type === "checkin") return m.checkin?.prompt ?? "Check-in";
  return m.content ?? "";
}

function renderList() {
  const list = $("chat-list");
  const chats = [...state.chats.values()].sort((a, b) =>
    String(b.last_activity).localeCompare(String(a.last_activity)));
  list.replaceChildren(...chats.map((chat) => {
    const other = chat.type === "direct" ? chat.participants?.find((p) => p.user_id !== state.me) : null;
    const online = other && state.online.has(other.user_id);
    const unread = chat.unread_count ?? 0;
    return el("li", {},
      el("button", {
        type: "button",
        class: `chat-item${chat.id === state.current ? " current" : ""}`,
        "data-chat-id": chat.id,
        "aria-current": chat.id === state.current ? "true" : null,
        onclick: () => openChat(chat.id),
      },
      el("span", { class: `dot${online ? " online" : ""}`, "aria-label": other ? (online ? "online" : "offline") : null }),
      el("span", { class: "chat-name", text: chatName(chat) }),
      el("span", { class: "chat-preview", text: preview(lastMessage(chat.id)) }),
      unread ? el("span", { class: "unread", "aria-label": `${unread} unread`, text: String(unread) }) : ""));
  }));
}

function renderHeader() {
  const chat = state.chats.get(state.current);
  if (!chat) return;
  $("chat-title").textContent = chatName(chat);
  $("checkin-panel").hidden = !mayAsk(chat);
  $("members").replaceChildren(...(chat.participants ?? []).map((p) =>
    el("li", { text: `${p.user_id} · ${p.role}` })));
}

function status(chat, m) {
  const others = (chat.participants ?? []).filter((p) => p.user_id !== state.me);
  if (others.length && others.every((p) => (p.read_seq ?? 0) >= m.seq)) return "read";
  if (others.length && others.every((p) => (p.delivered_seq ?? 0) >= m.seq)) return "delivered";
  return "sent";
}

const TICKS = { sending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓" };

function renderMessage(chat, m, pending = false) {
  const mine = m.sender_id === state.me;
  const body = el("div", { class: "body" });
  if (m.deleted) body.append(el("em", { text: "Message deleted" }));
  else if (m.type === "system") body.append(el("em", { text: systemText(m) }));
  else if (m.type === "resource" && m.resource) {
    const safe = /^https:\/\//i.test(m.resource.url);
    body.append(safe
      ? el("a", { href: m.resource.url, target: "_blank", rel: "noopener noreferrer", text: m.resource.title })
      : el("span", { text: m.resource.title }));
    if (m.resource.summary) body.append(el("p", { text: m.resource.summary }));
  } else if (m.type === "checkin" && m.checkin) {
    body.append(el("p", { class: "prompt", text: m.checkin.prompt }));
    const options = m.checkin.options ?? ["1", "2", "3", "4", "5"];
    if (mine) {
      const r = state.results.get(m.id);
      if (!r) loadResults(m);
      body.append(el("p", { class: "results", "data-total": r?.total ?? 0,
        text: r?.total ? `${r.total} ${r.total === 1 ? "answer" : "answers"}: ${options.map((o, i) => `${o} ${r.counts[i] ?? 0}`).join(" · ")}` : "No answers yet" }));
    } else {
      body.append(el("div", { class: "options", role: "group", "aria-label": "Your answer" }, ...options.map((o, i) => el("button", {
        type: "button",
        text: o,
        "aria-pressed": String(state.answered.get(m.id) === i),
        onclick: () => request("answer_checkin", { message_id: m.id, option: i }).then(() => {
          state.answered.set(m.id, i);
          renderMessages();
        }, (e) => toast(e.message)),
      }))));
      if (m.checkin.anonymous) body.append(el("p", { class: "hint", text: "Anonymous: nobody sees who answered what." }));
    }
  } else {
    if (m.media && m.type === "image") {
      const img = el("img", { class: "thumb", alt: m.content || "Image", "data-media": m.media.id });
      blobUrl(m.media.thumbnail_url ?? m.media.url).then((u) => { img.src = u; }, () => {});
      const open = el("button", { type: "button", class: "thumb-button", "aria-label": "Open image",
        onclick: () => openLightbox(m.media.url) }, img);
      body.append(open);
    } else if (m.media) {
      body.append(el("button", { type: "button", class: "download", text: m.type === "voice" ? "Voice note ⤓" : "File ⤓",
        onclick: () => download(m.media) }));
    }
    if (m.content) body.append(el("p", { class: "text", text: m.content }));
  }
  if (m.reply_to) {
    const quoted = messageById(m.chat_id, m.reply_to);
    body.prepend(el("blockquote", { text: quoted ? `${quoted.sender_id}: ${preview(quoted)}` : "an earlier message" }));
  }
  const reactions = Object.entries(m.reactions ?? {}).map(([emoji, users]) =>
    el("button", { type: "button", class: "reaction", "aria-pressed": String(users.includes(state.me)),
      text: `${emoji} ${users.length}`,
      onclick: () => request(users.includes(state.me) ? "unreact" : "react", { message_id: m.id, emoji })
        .catch((e) => toast(e.message)) }));
  const s = pending ? "sending" : mine ? status(chat, m) : null;
  const meta = el("div", { class: "meta" },
    el("span", { class: "sender", text: mine ? "You" : m.sender_id }),
    el("time", { datetime: m.created_at, text: new Date(m.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) }),
    m.edited_at ? el("span", { text: "edited" }) : "",
    s ? el("span", { class: `tick ${s}`, "data-status": s, "aria-label": s, text: TICKS[s] }) : "");
  const actions = (pending || m.deleted || m.type === "system") ? "" : el("div", { class: "actions" },
    el("button", { type: "button", text: "Reply", onclick: () => startReply(m) }),
    el("button", { type: "button", text: "Like", "aria-label": "React with 👍",
      onclick: () => request("react", { message_id: m.id, emoji: "👍" }).catch((e) => toast(e.message)) }),
    mine && m.type === "text" ? el("button", { type: "button", text: "Edit", onclick: () => startEdit(m) }) : "",
    mine ? el("button", { type: "button", text: "Delete", onclick: () => request("delete_message", { message_id: m.id }).catch((e) => toast(e.message)) }) : "");
  return el("li", { class: `message${mine ? " mine" : ""}`, "data-seq": m.seq ?? "", "data-client-msg-id": m.client_msg_id ?? "" },
    meta, body, reactions.length ? el("div", { class: "reactions" }, ...reactions) : "", actions);
}

const loading = new Set();
function loadResults(m) {
  if (loading.has(m.id) || !state.ready) return;
  loading.add(m.id);
  request("checkin_results", { message_id: m.id }).then((r) => {
    state.results.set(m.id, { ...r, message_id: m.id, chat_id: m.chat_id });
    if (m.chat_id === state.current) renderMessages();
  }, () => {});
}

/** Whether I may ask a check-in in `chat`: either side of a direct chat,
 * a group's admins and moderators. */
function mayAsk(chat) {
  if (chat.type === "direct") return true;
  const me = chat.participants?.find((p) => p.user_id === state.me);
  return me?.role === "admin" || me?.role === "moderator";
}

function systemText(m) {
  const e = m.system ?? {};
  if (e.type === "participant_added") return `${e.user_id} joined`;
  if (e.type === "participant_removed") return `${e.user_id} left`;
  if (e.type === "role_changed") return `${e.user_id} is now ${e.role}`;
  return "Chat updated";
}

function renderMessages() {
  const chat = state.chats.get(state.current);
  if (!chat) return;
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const stored = [...logOf(chat.id).values()].sort((a, b) => a.seq - b.seq);
  const storedIds = new Set(stored.map((m) => m.client_msg_id));
  const pending = state.outbox
    .filter((o) => o.chat_id === chat.id && !storedIds.has(o.client_msg_id))
    .map((o) => ({ ...o, sender_id: state.me, created_at: new Date().toISOString(), reactions: {} }));
  list.replaceChildren(
    ...stored.map((m) => renderMessage(chat, m)),
    ...pending.map((m) => renderMessage(chat, m, true)));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

async function openChat(chatId) {
  state.current = chatId;
  $("conversation").hidden = false;
  document.body.classList.add("in-chat");
  $("resources").hidden = true;
  renderHeader();
  renderMessages();
  renderList();
  state.joining = true;
  try {
    const { messages } = await request("join_chat", { chat_id: chatId });
    for (const m of messages) upsert(m);
  } catch (e) {
    if (e.message !== "offline") toast(e.message);
  } finally {
    state.joining = false;
  }
  $("messages").scrollTop = $("messages").scrollHeight;
  markRead(chatId);
  $("text").focus();
}

function closeChat() {
  if (state.current) request("leave_chat", { chat_id: state.current }).catch(() => {});
  state.current = null;
  $("conversation").hidden = true;
  document.body.classList.remove("in-chat");
  renderList();
}

async function olderMessages() {
  // The first page is still coming: older ones are asked for after it.
  if (state.joining) return;
  const chatId = state.current;
  const seqs = [...logOf(chatId).keys()];
  if (!chatId || !seqs.length || Math.min(...seqs) <= 1) return;
  try {
    const { messages } = await request("history", { chat_id: chatId, before_seq: Math.min(...seqs), limit: 50 });
    const list = $("messages");
    const from = list.scrollHeight - list.scrollTop;
    for (const m of messages) logOf(chatId).set(m.seq, m);
    renderMessages();
    list.scrollTop = list.scrollHeight - from;
  } catch (e) {
    if (e.message !== "offline") toast(e.message);
  }
}

function setTyping(chatId, user, on) {
  if (!state.typing.has(chatId)) state.typing.set(chatId, new Map());
  const users = state.typing.get(chatId);
  clearTimeout(users.get(user));
  if (on) users.set(user, setTimeout(() => setTyping(chatId, user, false), 6000));
  else users.delete(user);
  if (chatId === state.current) {
    const names = [...users.keys()];
    $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
  }
}

function showResources(s) {
  const box = $("resources");
  box.replaceChildren(
    el("p", { text: "If things feel heavy right now, you don't have to go through it alone. These can help:" }),
    el("ul", {}, ...s.resources.map((r) => el("li", {},
      /^https:\/\//i.test(r.url ?? "")
        ? el("a", { href: r.url, target: "_blank", rel: "noopener noreferrer", text: r.title })
        : el("span", { text: r.title }),
      r.phone ? el("span", { text: ` · ${r.phone}` }) : ""))),
    el("button", { type: "button", text: "Close", onclick: () => { box.hidden = true; } }));
  box.hidden = false;
}

function startReply(m) {
  state.replyTo = m;
  state.editing = null;
  $("context-text").textContent = `Replying to ${m.sender_id}: ${preview(m)}`;
  $("context").hidden = false;
  $("text").focus();
}

function startEdit(m) {
  state.editing = m;
  state.replyTo = null;
  $("context-text").textContent = "Editing your message";
  $("context").hidden = false;
  $("text").value = m.content ?? "";
  $("text").focus();
}

function cancelContext() {
  if (state.editing) $("text").value = "";
  state.editing = null;
  state.replyTo = null;
  $("context").hidden = true;
}

async function openLightbox(url) {
  try {
    $("lightbox-img").src = await blobUrl(url);
    $("lightbox").hidden = false;
    $("lightbox-close").focus();
  } catch (e) {
    toast(e.message);
  }
}

async function download(media) {
  try {
    const a = el("a", { href: await blobUrl(media.url), download: media.name ?? "download" });
    a.click();
  } catch (e) {
    toast(e.message);
  }
}

/** Tells why a command failed. */
function failed(err) {
  toast(err.message === "offline" ? "You are offline." : err.message);
}

let toastTimer;
function toast(text) {
  $("toast").textContent = text;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 5000);
}

function showOffline(offline) {
  $("offline").hidden = !offline;
}

// --- signing in and out ---------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  let token = $("token").value.trim();
  const user = $("user-id").value.trim();
  if (!token && user) {
    const r = await fetch(`/dev/token?user=${encodeURIComponent(user)}`);
    if (!r.ok) {
      $("signin-error").textContent = "This server is not in development mode: paste a token.";
      return;
    }
    token = (await r.json()).token;
  }
  if (!token) {
    $("signin-error").textContent = "Enter a user id or paste a token.";
    return;
  }
  state.token = token;
  sessionStorage.setItem("chat-token", token);
  $("signin").hidden = true;
  $("app").hidden = false;
  connect();
}

function signOut(reason) {
  state.token = null;
  sessionStorage.removeItem("chat-token");
  const ws = state.ws;
  state.ws = null;
  state.ready = false;
  ws?.close();
  state.chats.clear();
  state.logs.clear();
  state.cursors = {};
  state.outbox = [];
  state.loaded = false;
  closeChat();
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = reason ?? "";
}

// --- wiring ---------------------------------------------------------------

$("signin-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut());
$("back").addEventListener("click", closeChat);
$("context-cancel").addEventListener("click", cancelContext);
$("lightbox-close").addEventListener("click", () => { $("lightbox").hidden = true; });
$("members-toggle").addEventListener("click", () => {
  const open = $("members").hidden;
  $("members").hidden = !open;
  $("members-toggle").setAttribute("aria-expanded", String(open));
});
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop === 0) olderMessages();
});

$("new-direct").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const { chat } = await request("create_direct", { user_id: $("new-direct-user").value.trim() });
    state.chats.set(chat.id, chat);
    $("new-direct-user").value = "";
    openChat(chat.id);
  } catch (err) {
    failed(err);
  }
});

$("new-group").addEventListener("submit", async (e) => {
  e.preventDefault();
  const members = $("new-group-members").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const { chat } = await request("create_group", { name: $("new-group-name").value.trim(), member_ids: members });
    state.chats.set(chat.id, chat);
    $("new-group-name").value = "";
    $("new-group-members").value = "";
    openChat(chat.id);
  } catch (err) {
    failed(err);
  }
});

$("checkin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const options = $("checkin-options").value.split(",").map((o) => o.trim()).filter(Boolean);
  const data = {
    chat_id: state.current,
    client_msg_id: newId(),
    prompt: $("checkin-prompt").value.trim(),
    anonymous: $("checkin-anonymous").checked,
  };
  if (options.length) data.options = options;
  else data.kind = "mood";
  try {
    const { message } = await request("create_checkin", data);
    upsert(message);
    $("checkin-form").reset();
    $("checkin-panel").open = false;
  } catch (err) {
    failed(err);
  }
});

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !state.current) return;
  $("text").value = "";
  if (state.editing) {
    const m = state.editing;
    cancelContext();
    request("edit_message", { message_id: m.id, content: text }).then(({ message }) => upsert(message), (err) => toast(err.message));
    return;
  }
  const reply = state.replyTo?.id;
  cancelContext();
  if (state.ready) request("typing_stop", { chat_id: state.current }).catch(() => {});
  await send({ chat_id: state.current, client_msg_id: newId(), content: text, reply_to: reply });
});

$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  } else if (e.key === "Escape") {
    cancelContext();
  }
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if (state.ready && state.current && now - state.lastTyping > 3000) {
    state.lastTyping = now;
    request("typing_start", { chat_id: state.current }).catch(() => {});
  }
});

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  $("file").value = "";
  if (!file || !state.current) return;
  try {
    await upload(file);
  } catch (e) {
    toast(e.message);
  }
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !$("lightbox").hidden) $("lightbox").hidden = true;
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && state.current) markRead(state.current);
});

window.addEventListener("offline", () => {
  showOffline(true);
  state.ws?.close();
});
window.addEventListener("online", () => {
  state.retry = 0;
  connect();
});

fetch("/dev/token?user=probe").then((r) => { $("dev-hint").hidden = !r.ok; }, () => {});
const saved = sessionStorage.getItem("chat-token");
if (saved) {
  state.token = saved;
  $("signin").hidden = true;
  $("app").hidden = false;
  connect();
}
