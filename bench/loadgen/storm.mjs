// Workload storm: the server restarts under open chats, and every socket reconnects.

import { performance } from "node:perf_hooks";

import {
  TEXT,
  cleanup,
  forEachLimited,
  setupChats,
  sleep,
  waitForProgress,
} from "./chats.mjs";
import { requestOk } from "./client.mjs";
import { GeneratorWindow, fail, log, round3, run } from "./report.mjs";

// The protocol allows a `history` limit of at most 500.
const HISTORY_PAGE = 500;
const HISTORY_MAX_PAGES = 1_000;

export async function runStorm(ctx, options) {
  const chats = options.chats;
  const perChat = options["messages-before"];
  Object.assign(ctx.result, {
    chats,
    max_chats: options["max-chats"],
    messages_before: perChat,
  });
  run.phase = "setup";
  const pairs = await setupChats(ctx, chats, options["max-chats"]);
  if (pairs === null) {
    await cleanup(ctx);
    return;
  }
  const sockets = [...ctx.agents, ...ctx.visitors];
  ctx.result.sockets = sockets.length;

  // The highest seq each socket has seen per chat, from acks, message events
  // and history replies.
  for (const conn of sockets) {
    conn.lastSeq = new Map();
  }
  const recordSeq = (conn, chatId, seq) => {
    if (seq > (conn.lastSeq.get(chatId) ?? 0)) {
      conn.lastSeq.set(chatId, seq);
    }
  };
  for (const pair of pairs) {
    pair.visitor.lastSeq.set(pair.chatId, 0);
    pair.agent.lastSeq.set(pair.chatId, 0);
  }
  const onEvent = (conn, name, data) => {
    if (name === "message") {
      recordSeq(conn, data.chat_id, data.seq);
    }
  };
  for (const conn of sockets) {
    conn.onEvent = onEvent;
  }

  // Acked message ids per chat, sent alternately by the visitor and the agent.
  run.phase = "messages";
  log(`storm: sending ${perChat} messages in each of ${chats} chats`);
  const acked = new Map(pairs.map((pair) => [pair.chatId, new Set()]));
  let ackedCount = 0;
  await forEachLimited(pairs.length, pairs.length, async (i) => {
    const pair = pairs[i];
    for (let n = 0; n < perChat; n++) {
      const sender = n % 2 === 0 ? pair.visitor : pair.agent;
      try {
        const reply = await requestOk(sender, "message", {
          chat_id: pair.chatId,
          text: TEXT,
          client_id: `${ctx.runId}.${i}.${n}`,
        });
        acked.get(pair.chatId).add(reply.message.id);
        ackedCount += 1;
        recordSeq(sender, pair.chatId, reply.message.seq);
      } catch (err) {
        fail(`storm: ${err.message}`);
      }
    }
  });
  ctx.result.acked_before = ackedCount;

  // Every socket reconnects on its own after the server drops it.
  run.phase = "restart";
  let firstDisconnectAt = 0;
  let lastResumedAt = 0;
  let disconnected = 0;
  let reconnected = 0;
  let resumed = 0;
  let gaveUp = 0;
  let catchUpFailed = 0;
  // Attempts refused at the TCP level while the killed server is not
  // listening yet, apart from handshakes that a listening server failed.
  let refusedWhileDown = 0;
  let failedHandshakes = 0;
  let historyMessages = 0;
  const resumeMaxMs = options["resume-max-s"] * 1000;

  const resume = async (conn) => {
    const deadline = performance.now() + resumeMaxMs;
    for (;;) {
      await sleep(100 + Math.random() * 400);
      if (run.finished) {
        return;
      }
      if (performance.now() > deadline) {
        gaveUp += 1;
        fail(
          `storm: a ${conn.role} socket did not reconnect within ${options["resume-max-s"]} s`,
        );
        return;
      }
      await ctx.handshakes.acquire();
      try {
        await conn.connect(ctx.wsUrls[conn.node]);
      } catch (err) {
        if (err.code === "ECONNREFUSED") {
          refusedWhileDown += 1;
        } else {
          failedHandshakes += 1;
        }
        conn.terminate();
        continue;
      } finally {
        ctx.handshakes.release();
      }
      reconnected += 1;
      break;
    }
    // Catch up on every chat the socket had, as a client does after a drop.
    const session = conn.session;
    const chatIds =
      conn.role === "visitor"
        ? [session.chat?.id].filter(Boolean)
        : (session.chats ?? []).map((chat) => chat.id);
    for (const chatId of conn.lastSeq.keys()) {
      if (!chatIds.includes(chatId)) {
        fail(
          `storm: a ${conn.role}'s session after the restart lacks one of its chats`,
        );
      }
    }
    try {
      for (const chatId of chatIds) {
        let after = conn.lastSeq.get(chatId) ?? 0;
        for (let page = 0; page < HISTORY_MAX_PAGES; page++) {
          const reply = await requestOk(conn, "history", {
            chat_id: chatId,
            after_seq: after,
            limit: HISTORY_PAGE,
          });
          historyMessages += reply.messages.length;
          for (const message of reply.messages) {
            recordSeq(conn, chatId, message.seq);
          }
          if (!reply.has_more || reply.messages.length === 0) {
            break;
          }
          after = reply.messages[reply.messages.length - 1].seq;
        }
      }
    } catch (err) {
      catchUpFailed += 1;
      fail(`storm: catch-up failed: ${err.message}`);
      return;
    }
    resumed += 1;
    lastResumedAt = performance.now();
  };

  const resumes = [];
  const onClose = (conn) => {
    disconnected += 1;
    if (firstDisconnectAt === 0) {
      firstDisconnectAt = performance.now();
      log("storm: the server closed the first socket, reconnecting");
    }
    resumes.push(resume(conn));
  };
  for (const conn of sockets) {
    conn.onClose = onClose;
  }
  process.stderr.write("STORM_READY\n");
  const generatorWindow = new GeneratorWindow();
  const restartWaitMs = options["restart-wait-s"] * 1000;
  await waitForProgress(() => disconnected, 1, restartWaitMs, restartWaitMs);
  if (disconnected === 0) {
    fail(
      `storm: no socket was closed within ${options["restart-wait-s"]} s of STORM_READY`,
    );
    await cleanup(ctx);
    return;
  }
  // Sockets that were still open a moment after the first drop kept their
  // connection, which means the server did not restart for them.
  await waitForProgress(() => disconnected, sockets.length, 10_000, 10_000);
  await waitForProgress(
    () => resumed + gaveUp + catchUpFailed,
    disconnected,
    resumeMaxMs + 30_000,
  );
  await Promise.all(resumes);
  ctx.result.resume_generator = generatorWindow.end();
  for (const conn of sockets) {
    conn.onClose = null;
  }

  // Every acked message must be in the chat's history from seq 0.
  run.phase = "verify";
  log("storm: checking every acked message against the history");
  let lostMessages = 0;
  let seqGaps = 0;
  let unverified = 0;
  await forEachLimited(pairs.length, ctx.concurrency, async (i) => {
    const pair = pairs[i];
    let reader = null;
    if (pair.visitor.open) {
      reader = pair.visitor;
    } else if (pair.agent.open) {
      reader = pair.agent;
    }
    if (reader === null) {
      unverified += 1;
      return;
    }
    const ids = new Set();
    let after = 0;
    let expectedSeq = 1;
    try {
      for (let page = 0; page < HISTORY_MAX_PAGES; page++) {
        const reply = await requestOk(reader, "history", {
          chat_id: pair.chatId,
          after_seq: after,
          limit: HISTORY_PAGE,
        });
        for (const message of reply.messages) {
          ids.add(message.id);
          if (message.seq !== expectedSeq) {
            seqGaps += 1;
          }
          expectedSeq = message.seq + 1;
        }
        if (!reply.has_more || reply.messages.length === 0) {
          break;
        }
        after = reply.messages[reply.messages.length - 1].seq;
      }
    } catch (err) {
      unverified += 1;
      fail(`storm: history check failed: ${err.message}`);
      return;
    }
    for (const id of acked.get(pair.chatId)) {
      if (!ids.has(id)) {
        lostMessages += 1;
      }
    }
  });

  Object.assign(ctx.result, {
    disconnected,
    reconnected,
    resumed,
    failed_handshakes: failedHandshakes,
    refused_while_down: refusedWhileDown,
    resume_s:
      resumed > 0 ? round3((lastResumedAt - firstDisconnectAt) / 1000) : null,
    history_messages_after_resume: historyMessages,
    lost_messages: lostMessages,
    seq_gaps: seqGaps,
    unverified_chats: unverified,
  });
  if (disconnected < sockets.length) {
    fail(
      `storm: ${sockets.length - disconnected} sockets were never disconnected`,
    );
  }
  if (lostMessages > 0) {
    fail(`storm: ${lostMessages} acked messages are missing after the restart`);
  }
  if (seqGaps > 0) {
    fail(`storm: ${seqGaps} gaps in seq numbering after the restart`);
  }
  if (unverified > 0) {
    fail(`storm: ${unverified} chats could not be checked`);
  }
  await cleanup(ctx);
}
