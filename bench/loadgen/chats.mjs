// Helpers shared by the workloads: waits, connects, chat setup and cleanup.

import { performance } from "node:perf_hooks";

import { Conn, requestOk } from "./client.mjs";
import { fail, log, round3, run } from "./report.mjs";

// Setup waits end when this long passes without progress.
const STALL_TIMEOUT_MS = 30_000;
// Closing sockets politely gets this long before the rest are terminated.
const CLOSE_GRACE_MS = 3_000;
// The end-of-run cleanup of chats and agents stops after this long.
const CLEANUP_MAX_MS = 30_000;
// A message text of ordinary chat length, the same in every workload.
export const TEXT =
  "Hello, this is a load test message of a typical chat length.";
const TEXT_JSON = JSON.stringify(TEXT);
// python-socketio encodes with compact separators, but a reply is matched
// loosely so that another server's spacing still counts as success.
export const OK_REPLY = /^\[\s*\{\s*"ok"\s*:\s*true/;

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Poll `progress()` (a number that rises to `target`) every 10 ms. Returns true
// when it reaches the target, false when it stalls for `stallMs` or runs past
// `maxMs`.
export async function waitForProgress(
  progress,
  target,
  stallMs = STALL_TIMEOUT_MS,
  maxMs = Infinity,
) {
  const start = performance.now();
  let last = progress();
  let lastChange = start;
  while (last < target) {
    await sleep(10);
    const now = performance.now();
    const value = progress();
    if (value !== last) {
      last = value;
      lastChange = now;
    }
    if (now - lastChange > stallMs || now - start > maxMs) {
      return progress() >= target;
    }
  }
  return true;
}

// Run `task(index)` for index 0..count-1, at most `limit` at once.
export async function forEachLimited(count, limit, task) {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      await task(index);
    }
  };
  const workers = [];
  for (let i = 0; i < Math.min(limit, count); i++) {
    workers.push(worker());
  }
  await Promise.all(workers);
}

// Connect every conn, at most `ctx.handshakes` in handshake at once. Returns
// the number connected and the time from the first attempt to the last session.
export async function connectAll(ctx, conns, onConnected = null) {
  let connected = 0;
  let lastSessionAt = performance.now();
  const firstAttemptAt = performance.now();
  let lastLog = firstAttemptAt;
  await Promise.all(
    conns.map(async (conn) => {
      await ctx.handshakes.acquire();
      try {
        await conn.connect(ctx.wsUrls[conn.node]);
        connected += 1;
        lastSessionAt = performance.now();
      } catch (err) {
        fail(`${conn.role} connect failed: ${err.message}`);
        return;
      } finally {
        ctx.handshakes.release();
      }
      if (lastSessionAt - lastLog > 2000) {
        lastLog = lastSessionAt;
        log(`${connected} of ${conns.length} sockets connected`);
      }
      if (onConnected !== null) {
        await onConnected(conn);
      }
    }),
  );
  return { connected, seconds: (lastSessionAt - firstAttemptAt) / 1000 };
}

// Close sockets with a close frame, then terminate those still open after
// CLOSE_GRACE_MS.
export async function closeAll(conns) {
  for (const conn of conns) {
    conn.onClose = null;
    conn.close();
  }
  const closedCount = () =>
    conns.reduce((n, conn) => n + (conn.isClosed() ? 1 : 0), 0);
  await waitForProgress(
    closedCount,
    conns.length,
    CLOSE_GRACE_MS,
    CLOSE_GRACE_MS,
  );
  for (const conn of conns) {
    conn.terminate();
  }
}

// ---------------------------------------------------------------------------
// Chat setup, shared by relay-closed, relay-open and storm

// A started chat with its two sockets and the per-chat state of the relays.
export class Pair {
  constructor(chatId) {
    this.chatId = chatId;
    this.visitor = null;
    this.agent = null;
    // Everything of a `message` frame after the ack id, up to the client_id value.
    this.framePrefix = `["message",{"chat_id":${JSON.stringify(chatId)},"text":${TEXT_JSON},"client_id":"`;
    this.sentAt = 0;
    this.expectedClientId = null;
    this.sent = 0;
    this.lastSeqAtVisitor = 0;
    this.lastSeqAtAgent = 0;
  }
}

// Connect ceil(chats / maxChats) agents and make them ready, then connect
// `chats` visitors that each join the queue, and wait until every chat has
// started on both sides. Returns the pairs in visitor order, or null after
// recording why the setup failed.
//
// With several nodes, agent i connects to node i % nodes, and the setup goes
// one node at a time: that node's agents send agent_ready, and as many
// visitors as they have free slots join through the other nodes. Only the
// ready agents have free slots, so every chat has its two sides on two nodes.
export async function setupChats(ctx, chats, maxChats) {
  const setupStart = performance.now();
  const agentCount = Math.ceil(chats / maxChats);
  const nodes = ctx.wsUrls.length;
  const pairsByChat = new Map();
  const pairOf = (chatId) => {
    let pair = pairsByChat.get(chatId);
    if (pair === undefined) {
      pair = new Pair(chatId);
      pairsByChat.set(chatId, pair);
    }
    return pair;
  };
  let started = 0;
  const onSetupEvent = (conn, name, data) => {
    if (name !== "chat_started") {
      return;
    }
    const pair = pairOf(data.chat.id);
    if (conn.role === "agent") {
      if (pair.agent === null) {
        pair.agent = conn;
        started += pair.visitor !== null ? 1 : 0;
      }
    } else if (pair.visitor === null) {
      pair.visitor = conn;
      started += pair.agent !== null ? 1 : 0;
    }
  };

  log(`setup: connecting ${agentCount} agents`);
  const agents = ctx.agentTokens
    .slice(0, agentCount)
    .map((token, i) => new Conn(i, "agent", token, i % nodes));
  for (const agent of agents) {
    agent.onEvent = onSetupEvent;
  }
  const agentsUp = await connectAll(ctx, agents);
  if (agentsUp.connected < agentCount) {
    fail(`setup: only ${agentsUp.connected} of ${agentCount} agents connected`);
    return null;
  }
  for (const agent of agents) {
    if (agent.session.chats?.length > 0) {
      fail(
        "setup: an agent already had active chats when it connected, so start the " +
          "server on a fresh data dir or let the earlier run clean up",
      );
      return null;
    }
  }
  const visitors = [];
  let complete = true;
  for (let node = 0; node < nodes && complete; node++) {
    const ready = agents.filter((agent) => agent.node === node);
    const first = visitors.length;
    const count = Math.min(ready.length * maxChats, chats - first);
    try {
      await Promise.all(
        ready.map((agent) =>
          requestOk(agent, "agent_ready", { max_chats: maxChats }),
        ),
      );
    } catch (err) {
      fail(`setup: ${err.message}`);
      return null;
    }

    log(`setup: connecting ${count} visitors and joining the queue`);
    const joining = [];
    for (let i = first; i < first + count; i++) {
      // With one node every visitor goes to node 0; with more, the visitors
      // take the other nodes in turn.
      const visitorNode =
        nodes === 1 ? 0 : (node + 1 + ((i - first) % (nodes - 1))) % nodes;
      const visitor = new Conn(i, "visitor", null, visitorNode);
      visitor.onEvent = onSetupEvent;
      visitor.chatId = null;
      joining.push(visitor);
    }
    visitors.push(...joining);
    await connectAll(ctx, joining, async (visitor) => {
      try {
        const reply = await requestOk(visitor, "join_queue", {});
        visitor.chatId = reply.chat.id;
      } catch (err) {
        fail(`setup: ${err.message}`);
      }
    });
    complete = await waitForProgress(() => started, visitors.length);
  }
  ctx.result.chats_started = started;
  ctx.result.setup_s = round3((performance.now() - setupStart) / 1000);
  ctx.agents = agents;
  ctx.visitors = visitors;
  if (!complete) {
    fail(`setup: only ${started} of ${chats} chats started on both sides`);
    return null;
  }
  const pairs = [];
  for (const visitor of visitors) {
    const pair = pairsByChat.get(visitor.chatId);
    if (pair === undefined || pair.visitor !== visitor || pair.agent === null) {
      fail("setup: a visitor's join_queue chat is not the chat it started");
      return null;
    }
    pairs.push(pair);
  }
  ctx.result.cross_node_chats = pairs.filter(
    (pair) => pair.visitor.node !== pair.agent.node,
  ).length;
  ctx.pairsByChat = pairsByChat;
  log(`setup: ${chats} chats started in ${ctx.result.setup_s} s`);
  return pairs;
}

// End every visitor's chat and set every agent away, so that a later run on
// the same server starts from a clean queue. Failures here are logged and
// counted, but they do not make the run fail.
export async function cleanup(ctx) {
  if (ctx.noCleanup) {
    return;
  }
  run.phase = "cleanup";
  // The cleanup's own chat_ended events are not failures of the workload.
  for (const conn of [...(ctx.visitors ?? []), ...(ctx.agents ?? [])]) {
    conn.onEvent = null;
    conn.onClose = null;
  }
  // Newest chats end first: ending a queued chat moves every chat behind it up
  // the queue, and each such move costs the server a queue_update.
  const visitors = (ctx.visitors ?? [])
    .filter((visitor) => visitor.open && visitor.chatId)
    .reverse();
  const agents = (ctx.agents ?? []).filter((agent) => agent.open);
  let failed = 0;
  const tryRequest = async (conn, event, payload) => {
    try {
      const reply = await conn.request(event, payload);
      // wrong_state means the chat had already ended, which is the goal.
      if (!reply.ok && reply.error?.code !== "wrong_state") {
        failed += 1;
      }
    } catch {
      failed += 1;
    }
  };
  // An overloaded server may take long to get through its backlog, so the
  // whole cleanup stops after CLEANUP_MAX_MS and counts the rest as failed.
  const deadline = performance.now() + CLEANUP_MAX_MS;
  let skipped = 0;
  const guarded = (conn, event, payload) => {
    if (performance.now() > deadline) {
      skipped += 1;
      return null;
    }
    return tryRequest(conn, event, payload);
  };
  const steps = (async () => {
    await forEachLimited(visitors.length, ctx.concurrency, (i) =>
      guarded(visitors[i], "end_chat", {
        chat_id: visitors[i].chatId,
        reason: "load test done",
      }),
    );
    await forEachLimited(agents.length, ctx.concurrency, (i) =>
      guarded(agents[i], "agent_away", {}),
    );
  })();
  const finished = await Promise.race([
    steps.then(() => true),
    sleep(CLEANUP_MAX_MS + 1000).then(() => false),
  ]);
  ctx.result.cleanup_failed = failed + skipped;
  ctx.result.cleanup_complete = finished && skipped === 0;
  if (failed > 0) {
    log(`cleanup: ${failed} requests failed`);
  }
}
