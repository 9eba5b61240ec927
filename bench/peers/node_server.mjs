// Reference peer for the benchmark: the chat server's routing with the Node.js
// Socket.IO server (socket.io 4.8), kept in memory, with no storage and no token
// checks. It speaks the client contract of docs/protocol.md closely enough that one
// load generator drives this peer and the Python server unchanged.
//
// Usage: node bench/peers/node_server.mjs [--port N] [--host ADDRESS]
// The port comes from --port, then the PORT environment variable, then 8080. The
// peer prints "listening on PORT" once it accepts connections.
//
// Differences from the Python server:
// - Tokens are not verified. A visitor token and an agent token are the person's id.
// - Chats are not checked for ownership.
// - There are no grace periods, so the peer never requeues or ends a chat by itself.
// - There are no `queue_update` events, and agents get `queue_changed` only once,
//   right after connecting.

import { createHash, randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const PING_INTERVAL_MS = 25_000;
const PING_TIMEOUT_MS = 20_000;
const MAX_PAYLOAD_BYTES = 1_000_000;
const MAX_TEXT_CHARS = 4000;
const STARTED_MESSAGES_LIMIT = 500;
// Time for the sockets to close on SIGTERM or SIGINT before the process exits anyway.
const SHUTDOWN_TIMEOUT_MS = 5000;
// Client errors are logged for the first few only, then once per this many, so a
// misbehaving client cannot flood the log.
const CLIENT_ERROR_LOG_FIRST = 20;
const CLIENT_ERROR_LOG_EVERY = 1000;
let clientErrors = 0;

function logClientError(message) {
  clientErrors += 1;
  if (clientErrors <= CLIENT_ERROR_LOG_FIRST || clientErrors % CLIENT_ERROR_LOG_EVERY === 0) {
    console.error(`${message} (${clientErrors} client errors so far)`);
  }
}

class ChatError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const invalid = (message) => new ChatError("invalid_payload", message);

// All state lives in these maps and is never pruned, so memory grows with the
// number of visitors, chats and messages a run creates.
const visitors = new Map(); // visitor id -> {id, name, sockets, chat}
// agent id -> {id, name, status, maxChats, sockets, activeChats, lastAssigned}
const agents = new Map();
const chats = new Map(); // chat id -> chat record, see newChat()
// Queued chats in arrival order, because a Map iterates in insertion order.
const queue = new Map();
let assignments = 0;
let matchRequested = false;

// Wire objects

function chatWire(chat) {
  return {
    id: chat.id,
    status: chat.status,
    visitor: { id: chat.visitor.id, name: chat.visitor.name },
    agent: chat.agent ? { id: chat.agent.id, name: chat.agent.name } : null,
    department: null,
    created_at: chat.createdAt,
    last_seq: chat.messages.length,
    ended_at: chat.endedAt,
    ended_by: chat.endedBy,
    end_reason: chat.endReason,
  };
}

function queueSummary() {
  const oldest = queue.values().next().value;
  const waitS = oldest ? Math.round(Date.now() - oldest.queuedAtMs) / 1000 : null;
  return { queued: queue.size, oldest_wait_s: waitS };
}

const roomOf = (chat) => `chat:${chat.id}`;

// Payload checks: types are strict, as in the Python server, but the checks cover
// only what the handlers below need.

function requireString(payload, field, maxLength) {
  const value = payload[field];
  if (typeof value !== "string" || value.length < 1 || value.length > maxLength) {
    throw invalid(`${field} must be a string of 1 to ${maxLength} characters`);
  }
  return value;
}

function optionalString(payload, field, maxLength) {
  return payload[field] == null ? null : requireString(payload, field, maxLength);
}

function optionalInteger(payload, field, min, max, fallback) {
  const value = payload[field];
  if (value == null) return fallback;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${field} must be an integer from ${min} to ${max}`);
  }
  return value;
}

function requireText(payload, field) {
  const text = payload[field];
  if (typeof text === "string" && text.length > MAX_TEXT_CHARS) {
    throw new ChatError("payload_too_large", `${field} exceeds ${MAX_TEXT_CHARS} characters`);
  }
  if (typeof text !== "string" || text.trim() === "") {
    throw invalid(`${field} must be a string that is not empty or only whitespace`);
  }
  return text;
}

function findChat(payload) {
  const chatId = requireString(payload, "chat_id", 64);
  const chat = chats.get(chatId);
  if (!chat) throw new ChatError("not_found", `chat ${JSON.stringify(chatId)} not found`);
  return chat;
}

function requireRole(caller, role, event) {
  if (caller.role !== role) throw new ChatError("forbidden", `${event} is for ${role}s only`);
}

// Chats and messages

function newChat(visitor) {
  const chat = {
    id: randomUUID(),
    status: "queued",
    visitor,
    agent: null,
    createdAt: new Date().toISOString(),
    queuedAtMs: Date.now(),
    endedAt: null,
    endedBy: null,
    endReason: null,
    messages: [],
    // "<sender id> <client_id>" -> message, so that a retried message is stored once.
    byClientId: new Map(),
    readMarks: new Map(),
  };
  chats.set(chat.id, chat);
  return chat;
}

// Stores a message and relays it to the room, or returns the stored message of a
// retry. `socket` is the sender's socket, which gets the message in its reply only.
function postMessage(caller, socket, chat, text, clientId) {
  const key = `${caller.person.id} ${clientId}`;
  const stored = chat.byClientId.get(key);
  if (stored) return stored;
  if (chat.status === "ended") {
    const reason = `chat ${JSON.stringify(chat.id)} has ended: start a new chat`;
    throw new ChatError("wrong_state", reason);
  }
  const message = {
    id: randomUUID(),
    chat_id: chat.id,
    seq: chat.messages.length + 1,
    sender: { role: caller.role, id: caller.person.id, name: caller.person.name },
    text,
    client_id: clientId,
    created_at: new Date().toISOString(),
  };
  chat.messages.push(message);
  chat.byClientId.set(key, message);
  if (socket) socket.to(roomOf(chat)).emit("message", message);
  return message;
}

function isOnlineReady(agent) {
  return agent.status === "ready" && agent.sockets.size > 0;
}

function countAgentsOnline() {
  let count = 0;
  for (const agent of agents.values()) if (isOnlineReady(agent)) count += 1;
  return count;
}

// Picks the ready, connected agent with a free slot and the fewest active chats.
// A tie goes to the agent whose last assignment is the oldest.
function pickAgent() {
  let best = null;
  for (const agent of agents.values()) {
    if (!isOnlineReady(agent) || agent.activeChats.size >= agent.maxChats) continue;
    const fewer = best && agent.activeChats.size < best.activeChats.size;
    const tieOlder =
      best &&
      agent.activeChats.size === best.activeChats.size &&
      agent.lastAssigned < best.lastAssigned;
    if (!best || fewer || tieOlder) best = agent;
  }
  return best;
}

// Assigns the oldest queued chats to agents until the queue is empty or no agent
// has a free slot. It runs after the reply of the event that requested it.
function match(io) {
  matchRequested = false;
  for (const chat of queue.values()) {
    const agent = pickAgent();
    if (!agent) return;
    queue.delete(chat.id);
    chat.status = "active";
    chat.agent = agent;
    agent.activeChats.add(chat.id);
    assignments += 1;
    agent.lastAssigned = assignments;
    const room = roomOf(chat);
    for (const socket of [...chat.visitor.sockets, ...agent.sockets]) socket.join(room);
    io.to(room).emit("chat_started", {
      chat: chatWire(chat),
      messages: chat.messages.slice(0, STARTED_MESSAGES_LIMIT),
      has_more: chat.messages.length > STARTED_MESSAGES_LIMIT,
    });
  }
}

// Event handlers. Each takes the caller, its socket, the payload object and the
// Socket.IO server, and returns the fields of the `ok` reply.

function joinQueue(caller, socket, payload) {
  requireRole(caller, "visitor", "join_queue");
  if (payload.department != null) throw invalid("leave department out: this peer has one queue");
  const text = payload.message == null ? null : requireText(payload, "message");
  let clientId = optionalString(payload, "client_id", 128);
  if (clientId === null && text !== null) {
    clientId = `join:${createHash("sha256").update(text).digest("hex").slice(0, 32)}`;
  }

  const visitor = caller.person;
  let chat = visitor.chat;
  let message = null;
  // A new chat is the last in the queue until the matcher runs after this reply.
  let position = queue.size + 1;
  if (chat) {
    if (text !== null) message = postMessage(caller, socket, chat, text, clientId);
    position = chat.status === "queued" ? [...queue.keys()].indexOf(chat.id) + 1 : 0;
  } else {
    chat = newChat(visitor);
    visitor.chat = chat;
    queue.set(chat.id, chat);
    if (text !== null) message = postMessage(caller, null, chat, text, clientId);
    for (const visitorSocket of visitor.sockets) visitorSocket.join(roomOf(chat));
    matchRequested = true;
  }

  return {
    chat: chatWire(chat),
    position,
    estimated_wait_s: null,
    agents_online: countAgentsOnline(),
    message,
  };
}

function agentReady(caller, socket, payload) {
  requireRole(caller, "agent", "agent_ready");
  if (Array.isArray(payload.departments) && payload.departments.length > 0) {
    throw invalid("leave departments out: this peer has one queue");
  }
  const agent = caller.person;
  agent.maxChats = optionalInteger(payload, "max_chats", 1, 50, agent.maxChats);
  agent.status = "ready";
  matchRequested = true;
  const active = [...agent.activeChats].map((chatId) => chatWire(chats.get(chatId)));
  return { status: "ready", max_chats: agent.maxChats, chats: active };
}

function agentAway(caller) {
  requireRole(caller, "agent", "agent_away");
  caller.person.status = "away";
  return { status: "away" };
}

function sendMessage(caller, socket, payload) {
  const chat = findChat(payload);
  const text = requireText(payload, "text");
  const clientId = requireString(payload, "client_id", 128);
  return { message: postMessage(caller, socket, chat, text, clientId) };
}

function typing(caller, socket, payload) {
  const chat = findChat(payload);
  if (typeof payload.typing !== "boolean") throw invalid("typing must be true or false");
  if (chat.status === "ended") throw new ChatError("wrong_state", `chat ${chat.id} has ended`);
  const relayed = { chat_id: chat.id, role: caller.role, typing: payload.typing };
  socket.to(roomOf(chat)).emit("typing", relayed);
  return {};
}

function read(caller, socket, payload) {
  const chat = findChat(payload);
  const seq = optionalInteger(payload, "seq", 0, chat.messages.length, undefined);
  if (seq === undefined) throw invalid("seq is missing");
  const key = `${caller.role} ${caller.person.id}`;
  const current = chat.readMarks.get(key) ?? 0;
  if (seq <= current) return { seq: current };
  chat.readMarks.set(key, seq);
  socket.to(roomOf(chat)).emit("read", { chat_id: chat.id, role: caller.role, seq });
  return { seq };
}

function history(caller, socket, payload) {
  const chat = findChat(payload);
  const afterSeq = optionalInteger(payload, "after_seq", 0, Number.MAX_SAFE_INTEGER, 0);
  const limit = optionalInteger(payload, "limit", 1, 500, 100);
  // Message seq n sits at index n - 1.
  const messages = chat.messages.slice(afterSeq, afterSeq + limit);
  return { messages, has_more: afterSeq + limit < chat.messages.length };
}

function endChat(caller, socket, payload, io) {
  const chat = findChat(payload);
  const reason = optionalString(payload, "reason", 200);
  if (chat.status === "ended") {
    throw new ChatError("wrong_state", `chat ${chat.id} has already ended`);
  }
  queue.delete(chat.id);
  chat.agent?.activeChats.delete(chat.id);
  if (chat.visitor.chat === chat) chat.visitor.chat = null;
  chat.status = "ended";
  chat.endedAt = new Date().toISOString();
  chat.endedBy = caller.role;
  chat.endReason = reason;
  const room = roomOf(chat);
  io.to(room).emit("chat_ended", { chat_id: chat.id, ended_by: caller.role, reason });
  io.in(room).socketsLeave(room);
  matchRequested = true;
  return { chat: chatWire(chat) };
}

const HANDLERS = new Map([
  ["join_queue", joinQueue],
  ["agent_ready", agentReady],
  ["agent_away", agentAway],
  ["message", sendMessage],
  ["typing", typing],
  ["read", read],
  ["history", history],
  ["end_chat", endChat],
]);

// Runs one client event and sends its reply through the acknowledgement, if the
// client asked for one. Errors become `ok: false` replies and never reach the socket.
function dispatch(io, socket, event, args) {
  const ack = typeof args.at(-1) === "function" ? args.pop() : null;
  let reply;
  try {
    const handler = HANDLERS.get(event);
    if (!handler) throw invalid(`unknown event ${JSON.stringify(String(event).slice(0, 64))}`);
    const payload = args.length === 0 ? {} : args[0];
    const isObject = payload !== null && typeof payload === "object" && !Array.isArray(payload);
    if (!isObject || args.length > 1) throw invalid("the payload must be one JSON object");
    reply = { ok: true, ...handler(socket.data.caller, socket, payload, io) };
  } catch (err) {
    if (err instanceof ChatError) {
      const detail = `${err.code} ${err.message.slice(0, 200)}`;
      logClientError(`socket ${socket.id} event rejected: ${detail}`);
    } else {
      console.error(`event ${event} of socket ${socket.id} failed:`, err);
    }
    const code = err instanceof ChatError ? err.code : "internal_error";
    const message = err instanceof ChatError ? err.message : "the peer failed to handle the event";
    reply = { ok: false, error: { code, message } };
  }
  if (ack) ack(reply);
  if (matchRequested) {
    try {
      match(io);
    } catch (err) {
      console.error("matching failed:", err);
    }
  }
}

// Connections

function authError(message) {
  const err = new Error(message);
  err.data = { code: "invalid_auth", message };
  return err;
}

// Finds or creates the person named by the handshake `auth`, without verifying
// the token: a visitor token and an agent token are the person's id.
function admit(auth) {
  if (auth === null || typeof auth !== "object" || Array.isArray(auth)) {
    throw authError('auth must be an object such as {"role": "visitor", "token": null}');
  }
  const hasName = typeof auth.name === "string" && auth.name.length > 0;
  const name = hasName ? auth.name.slice(0, 100) : null;
  if (auth.role === "visitor") {
    if (auth.token != null && (typeof auth.token !== "string" || auth.token === "")) {
      throw authError("auth.token must be null or a non-empty string");
    }
    const id = auth.token ?? randomUUID();
    let visitor = visitors.get(id);
    if (!visitor) {
      const defaultName = `Visitor ${id.slice(0, 4).toUpperCase()}`;
      visitor = { id, name: defaultName, sockets: new Set(), chat: null };
      visitors.set(id, visitor);
    }
    if (name) visitor.name = name;
    return { role: "visitor", person: visitor };
  }
  if (auth.role === "agent") {
    if (typeof auth.token !== "string" || auth.token === "") {
      throw authError("auth.token must be a non-empty string");
    }
    let agent = agents.get(auth.token);
    if (!agent) {
      agent = {
        id: auth.token,
        name: name ?? `Agent ${auth.token}`,
        status: "away",
        maxChats: 1,
        sockets: new Set(),
        activeChats: new Set(),
        lastAssigned: 0,
      };
      agents.set(agent.id, agent);
    }
    return { role: "agent", person: agent };
  }
  throw authError(`auth.role must be "visitor" or "agent", got ${JSON.stringify(auth.role)}`);
}

function onConnection(io, socket) {
  const { role, person } = socket.data.caller;
  person.sockets.add(socket);
  socket.on("disconnect", () => person.sockets.delete(socket));
  socket.onAny((event, ...args) => dispatch(io, socket, event, args));

  if (role === "visitor") {
    if (person.chat) socket.join(roomOf(person.chat));
    socket.emit("session", {
      role,
      visitor_id: person.id,
      name: person.name,
      token: person.id,
      chat: person.chat ? chatWire(person.chat) : null,
      agents_online: countAgentsOnline(),
    });
    return;
  }
  const active = [...person.activeChats].map((chatId) => chats.get(chatId));
  for (const chat of active) socket.join(roomOf(chat));
  socket.emit("session", {
    role,
    agent_id: person.id,
    name: person.name,
    status: person.status,
    max_chats: person.maxChats,
    chats: active.map(chatWire),
  });
  socket.emit("queue_changed", queueSummary());
  // An agent who comes back ready can take waiting chats again.
  if (person.sockets.size === 1 && person.status === "ready") match(io);
}

function readPort() {
  const { values } = parseArgs({
    options: { port: { type: "string" }, host: { type: "string", default: "127.0.0.1" } },
  });
  const port = Number(values.port ?? process.env.PORT ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    const portText = JSON.stringify(values.port ?? process.env.PORT);
    console.error(`invalid port ${portText}: give an integer from 0 to 65535`);
    process.exit(2);
  }
  return { host: values.host, port };
}

function main() {
  const { host, port } = readPort();
  const httpServer = createServer();
  const io = new Server(httpServer, {
    path: "/socket.io/",
    transports: ["polling", "websocket"],
    // Compression stays off, because a zlib context per socket costs memory and
    // CPU. Our server turns it off too (CHAT_WS_COMPRESSION defaults to off).
    perMessageDeflate: false,
    maxHttpBufferSize: MAX_PAYLOAD_BYTES,
    pingInterval: PING_INTERVAL_MS,
    pingTimeout: PING_TIMEOUT_MS,
  });
  io.use((socket, next) => {
    try {
      socket.data.caller = admit(socket.handshake.auth);
      next();
    } catch (err) {
      logClientError(`socket ${socket.id} connection rejected: ${err.message}`);
      next(err);
    }
  });
  io.on("connection", (socket) => onConnection(io, socket));

  httpServer.listen(port, host, () => {
    console.log(`listening on ${httpServer.address().port}`);
  });

  const shutdown = (signal) => {
    console.log(`${signal} received: closing ${io.engine.clientsCount} connections`);
    setTimeout(() => process.exit(0), SHUTDOWN_TIMEOUT_MS).unref();
    io.close(() => process.exit(0));
  };
  process.once("SIGTERM", () => shutdown("SIGTERM"));
  process.once("SIGINT", () => shutdown("SIGINT"));
}

main();
