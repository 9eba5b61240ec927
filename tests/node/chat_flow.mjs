// Drives a whole chat with the stock Node.js Socket.IO client (socket.io-client 4.x):
// an agent and a visitor connect, match, exchange messages, relay typing and read
// marks, page history, retry a message, reconnect the visitor, and end the chat.
//
// Settings come from the environment:
//   CHAT_URL     the server's base URL, such as http://127.0.0.1:8080.
//   AGENT_TOKEN  an agent's access token, from POST /api/auth/login.
//   TRANSPORT    "websocket" or "polling". The client uses only this transport.
//
// Output: one JSON summary line, then "N passed, M failed". The exit code is 0 only
// when every step passed. The steps depend on each other, so after the first
// failure the remaining steps do not run and count as failed.

import assert from "node:assert/strict";
import { io } from "socket.io-client";

const ACK_TIMEOUT_MS = 5000;
const EVENT_TIMEOUT_MS = 5000;
const OVERALL_TIMEOUT_MS = 30000;
// Time for the sockets to send their close packets before the process exits.
const CLOSE_GRACE_MS = 1000;
// How long a socket must stay quiet to show that an event was not delivered.
const QUIET_MS = 500;
const TRANSPORTS = ["websocket", "polling"];

const settings = readSettings();
const sockets = [];
const results = [];

const overallTimer = setTimeout(() => {
  finish(`timed out after ${OVERALL_TIMEOUT_MS / 1000} s`);
}, OVERALL_TIMEOUT_MS);

function readSettings() {
  const url = process.env.CHAT_URL;
  const agentToken = process.env.AGENT_TOKEN;
  const transport = process.env.TRANSPORT;
  const problems = [];
  if (!url) problems.push("CHAT_URL is missing: set it to the server base URL");
  if (!agentToken) problems.push("AGENT_TOKEN is missing: set it to an agent access token");
  if (!TRANSPORTS.includes(transport)) {
    problems.push(`TRANSPORT is ${JSON.stringify(transport)}: set it to websocket or polling`);
  }
  if (problems.length > 0) {
    for (const problem of problems) console.error(problem);
    console.log("0 passed, 1 failed");
    process.exit(2);
  }
  return { url, agentToken, transport };
}

/** A socket that records every event it receives, so that none is missed between awaits. */
class RecordingClient {
  constructor(label, auth) {
    this.label = label;
    this.queues = new Map();
    this.waiters = new Map();
    this.connectError = null;
    this.socket = io(settings.url, {
      transports: [settings.transport],
      auth,
      forceNew: true,
    });
    sockets.push(this.socket);
    // The client connects asynchronously, so listeners added here see every event.
    this.socket.onAny((event, ...args) => this.record(event, args[0]));
    this.socket.on("connect_error", (err) => {
      this.connectError = err;
      this.record("connect_error", err);
    });
  }

  record(event, data) {
    const waiting = this.waiters.get(event);
    if (waiting && waiting.length > 0) {
      waiting.shift()(data);
      return;
    }
    if (!this.queues.has(event)) this.queues.set(event, []);
    this.queues.get(event).push(data);
  }

  /** Returns the next unread payload of `event`, waiting up to `timeoutMs` for it. */
  next(event, timeoutMs = EVENT_TIMEOUT_MS) {
    const queued = this.queues.get(event);
    if (queued && queued.length > 0) return Promise.resolve(queued.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const waiting = this.waiters.get(event);
        waiting.splice(waiting.indexOf(deliver), 1);
        reject(new Error(`${this.label} received no ${event} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const deliver = (data) => {
        clearTimeout(timer);
        resolve(data);
      };
      if (!this.waiters.has(event)) this.waiters.set(event, []);
      this.waiters.get(event).push(deliver);
    });
  }

  /** Returns the `session` payload, or rejects with the server's reason on `connect_error`. */
  async session() {
    const rejected = this.next("connect_error").then((err) => {
      throw new Error(
        `${this.label} connection rejected: ${err.message} ${JSON.stringify(err.data)}`,
      );
    });
    rejected.catch(() => {});
    return Promise.race([this.next("session"), rejected]);
  }

  /** Asserts that no further `event` arrives within `quietMs`. */
  async assertNoMore(event, quietMs = QUIET_MS) {
    await new Promise((resolve) => setTimeout(resolve, quietMs));
    const queued = this.queues.get(event) ?? [];
    assert.equal(
      queued.length,
      0,
      `${this.label} received an unexpected ${event}: ${JSON.stringify(queued[0])}`,
    );
  }

  call(event, payload) {
    return this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
  }

  transportName() {
    return this.socket.io.engine?.transport?.name;
  }

  close() {
    this.socket.close();
  }
}

function assertOk(reply, event) {
  assert.equal(reply?.ok, true, `${event} reply is not ok: ${JSON.stringify(reply)}`);
}

function assertErrorCode(reply, code, event) {
  assert.equal(reply?.ok, false, `${event} reply is ok: ${JSON.stringify(reply)}`);
  assert.equal(reply.error?.code, code, `${event} reply: ${JSON.stringify(reply)}`);
  assert.equal(typeof reply.error.message, "string");
}

function seqs(messages) {
  return messages.map((message) => message.seq);
}

// Non-ASCII text: accents, CJK, right-to-left script, and emoji outside the BMP
// (surrogate pairs in UTF-16, four bytes in UTF-8).
const VISITOR_NAME = "Nora 🌸";
const FIRST_TEXT = "Bonjour, ma commande n°42 est en retard — où est-elle ? 📦";
const AGENT_TEXT = "Hi Nora, I am checking now 👩‍💻 (一分钟)";
const VISITOR_TEXT = "谢谢! شكرا 🙏🏽 Ünïcödé";
const AWAY_TEXT = "Your parcel left the depot 🚚 — still there?";
const BACK_TEXT = "Welcome back ✨";

const state = {};

const steps = [
  [
    "agent with a bad token is rejected",
    async () => {
      const intruder = new RecordingClient("intruder", { role: "agent", token: "garbage" });
      const err = await intruder.next("connect_error");
      assert.equal(err.data?.code, "unauthorized", `connect_error: ${err.message}`);
      assert.equal(typeof err.data.message, "string");
      assert.equal(intruder.socket.connected, false);
      intruder.close();
    },
  ],
  [
    "agent gets session",
    async () => {
      state.agent = new RecordingClient("agent", { role: "agent", token: settings.agentToken });
      const session = await state.agent.session();
      assert.equal(session.role, "agent");
      assert.equal(typeof session.agent_id, "string");
      assert.equal(typeof session.name, "string");
      // A fresh agent is "away", but an agent who was ready before stays "ready".
      assert.ok(["away", "ready"].includes(session.status), `status: ${session.status}`);
      assert.deepEqual(session.chats, []);
      assert.equal(state.agent.transportName(), settings.transport);
      const queue = await state.agent.next("queue_changed");
      assert.equal(queue.queued, 0);
      state.agentId = session.agent_id;
      state.agentName = session.name;
    },
  ],
  [
    "agent_ready",
    async () => {
      const ready = await state.agent.call("agent_ready", { max_chats: 1 });
      assertOk(ready, "agent_ready");
      assert.equal(ready.status, "ready");
      assert.deepEqual(ready.chats, []);
    },
  ],
  [
    "visitor gets session with token",
    async () => {
      state.visitor = new RecordingClient("visitor", {
        role: "visitor",
        token: null,
        name: VISITOR_NAME,
      });
      const session = await state.visitor.session();
      assert.equal(session.role, "visitor");
      assert.equal(typeof session.visitor_id, "string");
      assert.equal(typeof session.token, "string");
      assert.ok(session.token.length > 0, "session token is empty");
      assert.equal(session.chat, null);
      assert.equal(state.visitor.transportName(), settings.transport);
      state.visitorId = session.visitor_id;
      state.visitorToken = session.token;
    },
  ],
  [
    "join_queue with first message",
    async () => {
      const joined = await state.visitor.call("join_queue", { message: FIRST_TEXT });
      assertOk(joined, "join_queue");
      assert.equal(joined.chat.status, "queued");
      assert.equal(joined.chat.visitor.id, state.visitorId);
      assert.equal(joined.chat.visitor.name, VISITOR_NAME);
      assert.equal(joined.chat.last_seq, 1);
      // The matcher runs concurrently and may already have taken the chat when the
      // server computes the position, so 0 (not in the queue) is also valid here.
      assert.ok(Number.isInteger(joined.position), `position: ${joined.position}`);
      assert.equal(joined.agents_online, 1);
      assert.ok("estimated_wait_s" in joined, "join_queue reply has no estimated_wait_s");
      state.chatId = joined.chat.id;
    },
  ],
  [
    "both sides get chat_started",
    async () => {
      for (const side of [state.visitor, state.agent]) {
        const started = await side.next("chat_started");
        assert.equal(started.chat.id, state.chatId);
        assert.equal(started.chat.status, "active");
        assert.equal(started.chat.agent.id, state.agentId);
        assert.equal(started.chat.agent.name, state.agentName);
        assert.equal(started.chat.visitor.name, VISITOR_NAME);
        assert.deepEqual(seqs(started.messages), [1]);
        assert.equal(started.messages[0].text, FIRST_TEXT);
        assert.equal(started.messages[0].sender.role, "visitor");
      }
    },
  ],
  [
    "agent message reaches visitor",
    async () => {
      const sent = await state.agent.call("message", {
        chat_id: state.chatId,
        text: AGENT_TEXT,
        client_id: "a-1",
      });
      assertOk(sent, "message");
      assert.equal(sent.message.seq, 2);
      assert.equal(sent.message.text, AGENT_TEXT);
      assert.equal(sent.message.client_id, "a-1");
      assert.equal(sent.message.sender.role, "agent");
      assert.equal(sent.message.sender.id, state.agentId);
      const received = await state.visitor.next("message");
      assert.deepEqual(received, sent.message);
    },
  ],
  [
    "visitor message reaches agent",
    async () => {
      const sent = await state.visitor.call("message", {
        chat_id: state.chatId,
        text: VISITOR_TEXT,
        client_id: "v-1",
      });
      assertOk(sent, "message");
      assert.equal(sent.message.seq, 3);
      assert.equal(sent.message.text, VISITOR_TEXT);
      assert.equal(sent.message.sender.role, "visitor");
      assert.equal(sent.message.sender.name, VISITOR_NAME);
      const received = await state.agent.next("message");
      assert.deepEqual(received, sent.message);
      state.visitorMessage = sent.message;
      await state.visitor.assertNoMore("message");
    },
  ],
  [
    "typing is relayed both ways",
    async () => {
      const visitorTyping = await state.visitor.call("typing", {
        chat_id: state.chatId,
        typing: true,
      });
      assertOk(visitorTyping, "typing");
      assert.deepEqual(await state.agent.next("typing"), {
        chat_id: state.chatId,
        role: "visitor",
        typing: true,
      });
      const agentTyping = await state.agent.call("typing", {
        chat_id: state.chatId,
        typing: false,
      });
      assertOk(agentTyping, "typing");
      assert.deepEqual(await state.visitor.next("typing"), {
        chat_id: state.chatId,
        role: "agent",
        typing: false,
      });
    },
  ],
  [
    "read is relayed",
    async () => {
      const read = await state.agent.call("read", { chat_id: state.chatId, seq: 3 });
      assertOk(read, "read");
      assert.deepEqual(await state.visitor.next("read"), {
        chat_id: state.chatId,
        role: "agent",
        seq: 3,
      });
    },
  ],
  [
    "history after_seq and limit",
    async () => {
      const all = await state.visitor.call("history", { chat_id: state.chatId });
      assertOk(all, "history");
      assert.deepEqual(seqs(all.messages), [1, 2, 3]);
      assert.deepEqual(
        all.messages.map((message) => message.text),
        [FIRST_TEXT, AGENT_TEXT, VISITOR_TEXT],
      );
      assert.equal(all.has_more, false);
      const after = await state.visitor.call("history", {
        chat_id: state.chatId,
        after_seq: 1,
      });
      assertOk(after, "history");
      assert.deepEqual(seqs(after.messages), [2, 3]);
      assert.equal(after.has_more, false);
      const page = await state.agent.call("history", {
        chat_id: state.chatId,
        after_seq: 1,
        limit: 1,
      });
      assertOk(page, "history");
      assert.deepEqual(seqs(page.messages), [2]);
      assert.equal(page.has_more, true);
    },
  ],
  [
    "retry with same client_id is not delivered twice",
    async () => {
      const retry = await state.visitor.call("message", {
        chat_id: state.chatId,
        text: VISITOR_TEXT,
        client_id: "v-1",
      });
      assertOk(retry, "message");
      assert.deepEqual(retry.message, state.visitorMessage);
      await state.agent.assertNoMore("message");
      const history = await state.agent.call("history", {
        chat_id: state.chatId,
        after_seq: 2,
      });
      assert.deepEqual(seqs(history.messages), [3]);
    },
  ],
  [
    "bad payloads get invalid_payload",
    async () => {
      const empty = await state.visitor.call("message", {
        chat_id: state.chatId,
        text: "",
        client_id: "v-bad",
      });
      assertErrorCode(empty, "invalid_payload", "message with empty text");
      const notObject = await state.visitor.call("message", "hello");
      assertErrorCode(notObject, "invalid_payload", "message with a string payload");
      const wrongType = await state.agent.call("read", { chat_id: state.chatId, seq: "3" });
      assertErrorCode(wrongType, "invalid_payload", "read with a string seq");
      const unknown = await state.visitor.call("no_such_event", {});
      assertErrorCode(unknown, "invalid_payload", "unknown event");
      await state.agent.assertNoMore("message");
      assert.equal(state.visitor.socket.connected, true);
      assert.equal(state.agent.socket.connected, true);
    },
  ],
  [
    "visitor reconnects with stored token",
    async () => {
      const disconnected = new Promise((resolve) => {
        state.visitor.socket.once("disconnect", resolve);
      });
      state.visitor.close();
      await disconnected;
      const away = await state.agent.call("message", {
        chat_id: state.chatId,
        text: AWAY_TEXT,
        client_id: "a-2",
      });
      assertOk(away, "message");
      assert.equal(away.message.seq, 4);

      state.visitor = new RecordingClient("visitor (reconnected)", {
        role: "visitor",
        token: state.visitorToken,
      });
      const session = await state.visitor.session();
      assert.equal(session.role, "visitor");
      assert.equal(session.visitor_id, state.visitorId);
      assert.equal(session.chat?.id, state.chatId);
      assert.equal(session.chat.status, "active");
      assert.equal(session.chat.last_seq, 4);
      assert.equal(session.chat.visitor.name, VISITOR_NAME);
      assert.equal(state.visitor.transportName(), settings.transport);
    },
  ],
  [
    "history returns exactly the missed messages",
    async () => {
      const missed = await state.visitor.call("history", {
        chat_id: state.chatId,
        after_seq: 3,
      });
      assertOk(missed, "history");
      assert.deepEqual(seqs(missed.messages), [4]);
      assert.equal(missed.messages[0].text, AWAY_TEXT);
      assert.equal(missed.has_more, false);
      await state.visitor.assertNoMore("message");
    },
  ],
  [
    "reconnected visitor is back in the room",
    async () => {
      const sent = await state.agent.call("message", {
        chat_id: state.chatId,
        text: BACK_TEXT,
        client_id: "a-3",
      });
      assertOk(sent, "message");
      assert.equal(sent.message.seq, 5);
      assert.deepEqual(await state.visitor.next("message"), sent.message);
    },
  ],
  [
    "end_chat reaches both sides",
    async () => {
      const ended = await state.visitor.call("end_chat", {
        chat_id: state.chatId,
        reason: "resolved",
      });
      assertOk(ended, "end_chat");
      for (const side of [state.visitor, state.agent]) {
        assert.deepEqual(await side.next("chat_ended"), {
          chat_id: state.chatId,
          ended_by: "visitor",
          reason: "resolved",
        });
      }
      const late = await state.agent.call("message", {
        chat_id: state.chatId,
        text: "Still there?",
        client_id: "a-4",
      });
      assertErrorCode(late, "wrong_state", "message to an ended chat");
    },
  ],
];

function describe(err) {
  if (err instanceof assert.AssertionError && err.generatedMessage) {
    const actual = JSON.stringify(err.actual);
    const expected = JSON.stringify(err.expected);
    return `${err.operator} failed: actual ${actual}, expected ${expected}`.slice(0, 1000);
  }
  return String(err?.message ?? err);
}

let finished = false;

function finish(fatal) {
  if (finished) return;
  finished = true;
  clearTimeout(overallTimer);
  for (const socket of sockets) socket.close();
  const passed = results.filter((result) => result.ok).length;
  const failed = steps.length - passed;
  const summary = {
    transport: settings.transport,
    chat_id: state.chatId ?? null,
    passed,
    failed,
    steps: results,
  };
  if (fatal) summary.error = fatal;
  console.log(JSON.stringify(summary));
  console.log(`${passed} passed, ${failed} failed`);
  // A polling client sends its close packet in a request of its own. Exiting at
  // once would cancel that request, so the server would keep the session until the
  // ping timeout. The timer gives that request time to finish, and the process
  // exits earlier if nothing keeps it alive.
  process.exitCode = failed === 0 && !fatal ? 0 : 1;
  setTimeout(() => process.exit(), CLOSE_GRACE_MS).unref();
}

async function main() {
  for (const [name, run] of steps) {
    try {
      await run();
      results.push({ name, ok: true });
    } catch (err) {
      results.push({ name, ok: false, error: describe(err) });
      console.error(`step "${name}" failed:`, err);
      break;
    }
  }
  for (const [name] of steps.slice(results.length)) {
    results.push({ name, ok: false, error: "not run: an earlier step failed" });
  }
  finish();
}

main().catch((err) => finish(`unexpected error: ${describe(err)}`));
