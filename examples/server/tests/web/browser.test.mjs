// The web client in a real browser (Debian's chromium through
// playwright-core): two people sign in, chat, see typing and the read
// tick; one goes offline, misses a message and queues one, comes back and
// sees the first while the second is delivered once; an image is sent and
// its thumbnail shows; an HTML injection renders as text. Run by
// ../web.rs against a fresh `chat-server --dev` (CHAT_URL); screenshots go
// to SCREENSHOT_DIR.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { deflateSync, crc32 } from "node:zlib";
import { chromium } from "playwright-core";

const URL = process.env.CHAT_URL;
const SHOTS = process.env.SCREENSHOT_DIR;
const WAIT = { timeout: 10000 };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
after(() => browser.close());

/** A signed-in page of `user` (dev mode: a user id is enough). */
async function person(user, viewport = { width: 1000, height: 720 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("dialog", (d) => { throw new Error(`a dialog opened: ${d.message()}`); });
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e));
  await page.goto(URL);
  await page.fill("#user-id", user);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#me", { hasText: user }).waitFor(WAIT);
  return { context, page };
}

const messageText = (page, text) =>
  page.locator("#messages li.message .text", { hasText: text });

/** Creates a group from the sidebar and waits until it is open. */
async function createGroup(page, name, members) {
  await page.fill("#new-group-name", name);
  await page.fill("#new-group-members", members);
  await page.press("#new-group-members", "Enter");
  await page.locator("#chat-title", { hasText: name }).waitFor(WAIT);
}

/** A 160x120 PNG, made here (no fixture file). */
function png() {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const w = 160, h = 120;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = [];
  for (let y = 0; y < h; y++) {
    rows.push(0);
    for (let x = 0; x < w; x++) rows.push(40 + x, 110 + (y >> 1), 200 - y);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(Buffer.from(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

test("two people chat in the browser, through an offline spell", async () => {
  const ann = await person("web-ann");
  const bob = await person("web-bob");

  // Ann starts a direct chat and writes; Bob finds it in his list.
  await ann.page.fill("#new-direct-user", "web-bob");
  await ann.page.press("#new-direct-user", "Enter");
  await ann.page.locator("#chat-title", { hasText: "web-bob" }).waitFor(WAIT);
  await ann.page.fill("#text", "hello bob");
  await ann.page.press("#text", "Enter");
  await messageText(ann.page, "hello bob").waitFor(WAIT);
  const item = bob.page.locator(".chat-item", { hasText: "web-ann" });
  await item.waitFor(WAIT);
  await item.locator(".unread").waitFor(WAIT);
  await item.click();
  await messageText(bob.page, "hello bob").waitFor(WAIT);

  // Bob read it: Ann's tick says so. Bob types: Ann sees it.
  await ann.page.locator("#messages li.mine .tick[data-status=read]").first().waitFor(WAIT);
  await bob.page.fill("#text", "typing a reply");
  await ann.page.locator("#typing", { hasText: "web-bob is typing" }).waitFor(WAIT);
  await bob.page.press("#text", "Enter");
  await messageText(ann.page, "typing a reply").waitFor(WAIT);

  // Shift+Enter is a newline, not a send.
  await ann.page.fill("#text", "line one");
  await ann.page.press("#text", "Shift+Enter");
  await ann.page.type("#text", "line two");
  await ann.page.press("#text", "Enter");
  await messageText(bob.page, "line one\nline two").waitFor(WAIT);

  if (SHOTS) {
    await ann.page.screenshot({ path: `${SHOTS}/conversation.png` });
  }

  // Bob goes offline; Ann writes meanwhile; Bob queues a message.
  await bob.context.setOffline(true);
  await bob.page.locator("#offline").waitFor({ state: "visible", ...WAIT });
  await ann.page.fill("#text", "while you were away");
  await ann.page.press("#text", "Enter");
  await messageText(ann.page, "while you were away").waitFor(WAIT);
  await bob.page.fill("#text", "written offline");
  await bob.page.press("#text", "Enter");
  await bob.page.locator("#messages li.mine .tick[data-status=sending]").waitFor(WAIT);

  // Back online: Bob sees what he missed without a reload, and his queued
  // message reaches Ann exactly once.
  await bob.context.setOffline(false);
  await bob.page.locator("#offline").waitFor({ state: "hidden", ...WAIT });
  await messageText(bob.page, "while you were away").waitFor(WAIT);
  await messageText(ann.page, "written offline").waitFor(WAIT);
  await ann.page.waitForTimeout(500);
  assert.equal(await messageText(ann.page, "written offline").count(), 1);
  assert.equal(await bob.page.locator("#messages li.mine .tick[data-status=sending]").count(), 0);

  // An HTML injection is text.
  const injection = "<img src=x onerror=alert(1)>";
  await ann.page.fill("#text", injection);
  await ann.page.press("#text", "Enter");
  const shown = bob.page.locator("#messages li.message .text").filter({ hasText: "onerror" });
  await shown.waitFor(WAIT);
  assert.equal(await shown.textContent(), injection);
  assert.equal(await bob.page.locator("#messages img[src=x]").count(), 0);

  // An image: its thumbnail shows (fetched with the token, from a blob).
  await ann.page.setInputFiles("#file", { name: "dot.png", mimeType: "image/png", buffer: png() });
  const thumb = bob.page.locator("#messages img.thumb[src^='blob:']");
  await thumb.waitFor(WAIT);
  await bob.page.waitForFunction(() => {
    const img = document.querySelector("#messages img.thumb[src^='blob:']");
    return img && img.complete && img.naturalWidth > 0;
  }, null, WAIT);

  if (SHOTS) {
    await bob.page.screenshot({ path: `${SHOTS}/chat-list-and-conversation.png` });
  }

  // At 360 px: the list, then the conversation with its back button.
  const narrow = await person("web-cat", { width: 360, height: 740 });
  await narrow.page.fill("#new-direct-user", "web-ann");
  await narrow.page.press("#new-direct-user", "Enter");
  await narrow.page.locator("#back").waitFor({ state: "visible", ...WAIT });
  await narrow.page.locator("#composer button[type=submit]").waitFor({ state: "visible", ...WAIT });
  if (SHOTS) {
    await narrow.page.screenshot({ path: `${SHOTS}/narrow.png` });
  }

  for (const p of [ann.page, bob.page, narrow.page]) {
    assert.deepEqual(p.errors.map(String), []);
  }
});

test("a group: members with roles, reply, edit (Escape cancels), reaction, delete", async () => {
  const dee = await person("web-dee");
  const eli = await person("web-eli");
  await createGroup(dee.page, "Circle", "web-eli, web-fay");
  await dee.page.click("#members-toggle");
  await dee.page.locator("#members li", { hasText: "web-dee · admin" }).waitFor(WAIT);
  await dee.page.locator("#members li", { hasText: "web-eli · member" }).waitFor(WAIT);
  assert.equal(await dee.page.getAttribute("#members-toggle", "aria-expanded"), "true");

  await dee.page.fill("#text", "welcome, everyone");
  await dee.page.press("#text", "Enter");
  await eli.page.locator(".chat-item", { hasText: "Circle" }).click();
  const welcome = eli.page.locator("#messages li.message", { hasText: "welcome, everyone" });
  await welcome.waitFor(WAIT);

  // Eli replies: the answer quotes the message.
  await welcome.getByRole("button", { name: "Reply" }).click();
  await eli.page.locator("#context", { hasText: "Replying to web-dee" }).waitFor(WAIT);
  await eli.page.fill("#text", "thanks!");
  await eli.page.press("#text", "Enter");
  const answer = dee.page.locator("#messages li.message", { hasText: "thanks!" });
  await answer.locator("blockquote", { hasText: "web-dee: welcome, everyone" }).waitFor(WAIT);

  // Dee starts an edit and cancels it with Escape, then edits for real.
  const mine = dee.page.locator("#messages li.mine", { hasText: "welcome, everyone" });
  await mine.getByRole("button", { name: "Edit" }).click();
  assert.equal(await dee.page.inputValue("#text"), "welcome, everyone");
  await dee.page.press("#text", "Escape");
  assert.equal(await dee.page.isHidden("#context"), true);
  assert.equal(await dee.page.inputValue("#text"), "");
  await mine.getByRole("button", { name: "Edit" }).click();
  await dee.page.fill("#text", "welcome, all of you");
  await dee.page.press("#text", "Enter");
  const edited = eli.page.locator("#messages li.message")
    .filter({ has: eli.page.locator(".text", { hasText: /^welcome, all of you$/ }) });
  await edited.locator(".meta", { hasText: "edited" }).waitFor(WAIT);

  // A reaction shows on the other side; a deletion leaves a tombstone.
  await edited.getByRole("button", { name: "React with 👍" }).click();
  await dee.page.locator("#messages li.mine .reaction", { hasText: "1" }).waitFor(WAIT);
  const gone = eli.page.locator("#messages li.mine", { hasText: "thanks!" });
  await gone.getByRole("button", { name: "Delete" }).click();
  await dee.page.locator("#messages li.message em", { hasText: "Message deleted" }).waitFor(WAIT);
  assert.equal(await dee.page.locator("#messages .text", { hasText: "thanks!" }).count(), 0);

  for (const p of [dee.page, eli.page]) {
    assert.deepEqual(p.errors.map(String), []);
  }
});

test("a crisis phrase: the sender gets support resources apart, the other person only the message", async () => {
  const gus = await person("web-gus");
  const hal = await person("web-hal");
  await gus.page.fill("#new-direct-user", "web-hal");
  await gus.page.press("#new-direct-user", "Enter");
  await gus.page.locator("#chat-title", { hasText: "web-hal" }).waitFor(WAIT);
  await hal.page.locator(".chat-item", { hasText: "web-gus" }).click();
  await gus.page.fill("#text", "some days I want to die");
  await gus.page.press("#text", "Enter");

  const notice = gus.page.locator("#resources");
  await notice.waitFor({ state: "visible", ...WAIT });
  const link = notice.getByRole("link", { name: "Crisis line" });
  assert.equal(await link.getAttribute("href"), "https://example.org/help");
  assert.equal(await link.getAttribute("rel"), "noopener noreferrer");
  assert.match(await notice.textContent(), /988/);
  // Apart from the conversation, not one of its messages.
  assert.equal(await gus.page.locator("#messages #resources").count(), 0);

  await messageText(hal.page, "some days I want to die").waitFor(WAIT);
  await hal.page.waitForTimeout(500);
  assert.equal(await hal.page.isHidden("#resources"), true);

  await notice.getByRole("button", { name: "Close" }).click();
  await notice.waitFor({ state: "hidden", ...WAIT });
});

test("check-ins: an admin asks, a member answers privately, the admin sees the counts", async () => {
  const ivy = await person("web-ivy");
  const jon = await person("web-jon");
  await createGroup(ivy.page, "Check-ins", "web-jon");
  await ivy.page.click("#checkin-panel summary");
  await ivy.page.fill("#checkin-prompt", "How are you today?");
  await ivy.page.fill("#checkin-options", "good, hard");
  await ivy.page.click("#checkin-form button[type=submit]");
  const asked = ivy.page.locator("#messages li.mine", { hasText: "How are you today?" });
  await asked.locator(".results", { hasText: "No answers yet" }).waitFor(WAIT);

  await jon.page.locator(".chat-item", { hasText: "Check-ins" }).click();
  const question = jon.page.locator("#messages li.message", { hasText: "How are you today?" });
  await question.getByRole("button", { name: "hard" }).click();
  await question.locator("button[aria-pressed=true]", { hasText: "hard" }).waitFor(WAIT);
  assert.equal(await jon.page.locator("#messages .results").count(), 0, "members see no counts");
  assert.equal(await jon.page.isHidden("#checkin-panel"), true, "members do not ask");

  await asked.locator(".results", { hasText: "1 answer: good 0 · hard 1" }).waitFor(WAIT);
});

test("older messages load when scrolling up", async () => {
  // Sixty messages written over the protocol, then read in the browser.
  const token = (await (await fetch(`${URL}/dev/token?user=web-kim`)).json()).token;
  const ws = new WebSocket(`${URL.replace(/^http/, "ws")}/ws`);
  const acks = new Map();
  ws.onmessage = (m) => {
    const f = JSON.parse(m.data);
    if (f.id && acks.has(f.id)) acks.get(f.id)(f);
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  let n = 0;
  const call = (type, data) => new Promise((resolve) => {
    const id = `k${n++}`;
    acks.set(id, resolve);
    ws.send(JSON.stringify({ type, id, data }));
  });
  await call("authenticate", { token });
  const { data: { chat } } = await call("create_direct", { user_id: "web-lou" });
  for (let i = 1; i <= 60; i++) {
    await call("send_message", { chat_id: chat.id, client_msg_id: `old-${i}`, content: `old message ${i}` });
  }
  ws.close();

  const lou = await person("web-lou");
  await lou.page.locator(".chat-item", { hasText: "web-kim" }).click();
  // The chat opened: its last 50 messages are shown (not the first ten).
  await lou.page.waitForFunction(
    () => document.querySelectorAll("#messages li.message").length === 50, null, WAIT);
  await messageText(lou.page, /^old message 11$/).waitFor(WAIT);
  assert.equal(await messageText(lou.page, /^old message 10$/).count(), 0, "the first page is the last 50");
  await lou.page.evaluate(() => { document.getElementById("messages").scrollTop = 0; });
  await messageText(lou.page, /^old message 1$/).waitFor(WAIT);
  assert.equal(await lou.page.locator("#messages li.message").count(), 60);
});
