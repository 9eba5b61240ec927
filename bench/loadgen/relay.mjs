// Workloads relay-closed (one message in flight per chat) and relay-open (a fixed
// send rate on a schedule).

import { performance } from "node:perf_hooks";

import {
  OK_REPLY,
  cleanup,
  setupChats,
  sleep,
  waitForProgress,
} from "./chats.mjs";
import { GeneratorWindow, Samples, fail, log, round3, run } from "./report.mjs";

// After the sends of a relay step, stragglers get this long to arrive.
const DRAIN_MS = 5_000;
// Messages per relay-open run. Each takes 11 bytes in the per-message arrays,
// so this bounds them at 110 MB.
export const MAX_OPEN_LOOP_MESSAGES = 10_000_000;

export async function runRelayClosed(ctx, options) {
  Object.assign(ctx.result, {
    pairs: options.pairs,
    duration_s: options["duration-s"],
    max_chats: options["max-chats"],
  });
  run.phase = "setup";
  const pairs = await setupChats(ctx, options.pairs, options["max-chats"]);
  if (pairs === null) {
    await cleanup(ctx);
    return;
  }

  const latency = new Samples();
  let running = true;
  let messages = 0;
  let inFlight = 0;
  let acksFailed = 0;
  let unexpected = 0;
  let orderViolations = 0;
  let lastLog = performance.now();
  let sentCount = 0;
  let sendFailed = 0;
  const runId = ctx.runId;
  const onAck = (conn, raw) => {
    if (raw === null || !OK_REPLY.test(raw)) {
      acksFailed += 1;
    }
  };
  // Send the next message of `pair` from `conn`, stamping its send time. The
  // client_id names the run, the side, the chat and the message number.
  const sendNext = (pair, conn) => {
    pair.sent += 1;
    const clientId = `${runId}.${conn.role === "visitor" ? "v" : "a"}${pair.visitor.index}.${pair.sent}`;
    pair.expectedClientId = clientId;
    pair.sentAt = performance.now();
    if (conn.sendWithAck(`${pair.framePrefix}${clientId}"}]`, onAck)) {
      inFlight += 1;
      sentCount += 1;
    } else {
      sendFailed += 1;
    }
  };
  const onEvent = (conn, name, data) => {
    if (name !== "message") {
      if (name === "chat_ended" || name === "chat_requeued") {
        fail(`unexpected ${name} during the relay`);
      }
      return;
    }

    const now = performance.now();
    const pair = ctx.pairsByChat.get(data.chat_id);
    if (pair === undefined || data.client_id !== pair.expectedClientId) {
      unexpected += 1;
      return;
    }
    pair.expectedClientId = null;
    inFlight -= 1;
    latency.push(now - pair.sentAt);

    if (conn.role === "agent") {
      if (data.seq <= pair.lastSeqAtAgent) {
        orderViolations += 1;
      }
      pair.lastSeqAtAgent = data.seq;
    } else {
      if (data.seq <= pair.lastSeqAtVisitor) {
        orderViolations += 1;
      }
      pair.lastSeqAtVisitor = data.seq;
    }

    if (running) {
      messages += 1;
      sendNext(pair, conn);
      if (now - lastLog > 2000) {
        lastLog = now;
        log(`relay: ${messages} messages received`);
      }
    }
  };
  for (const conn of [...ctx.agents, ...ctx.visitors]) {
    conn.onEvent = onEvent;
  }

  run.phase = "relay";
  log(`relay-closed: ${pairs.length} pairs for ${options["duration-s"]} s`);
  const generatorWindow = new GeneratorWindow();
  process.stderr.write("MEASURE_START\n");
  const relayStart = performance.now();
  for (const pair of pairs) {
    sendNext(pair, pair.visitor);
  }
  await sleep(options["duration-s"] * 1000);
  running = false;
  const relayEnd = performance.now();
  process.stderr.write("MEASURE_END\n");
  const generator = generatorWindow.end();
  await waitForProgress(() => -inFlight, 0, DRAIN_MS, DRAIN_MS);

  const seconds = (relayEnd - relayStart) / 1000;
  Object.assign(ctx.result, {
    messages,
    messages_per_s: round3(messages / seconds),
    latency_ms: latency.summary(),
    sent: sentCount,
    lost: inFlight,
    acks_failed: acksFailed,
    send_failed: sendFailed,
    unexpected_messages: unexpected,
    order_violations: orderViolations,
    relay_generator: generator,
  });
  if (inFlight > 0) {
    fail(`${inFlight} messages were not received within ${DRAIN_MS} ms`);
  }
  if (acksFailed > 0) {
    fail(`${acksFailed} message sends were not acknowledged with ok`);
  }
  if (sendFailed > 0) {
    fail(`${sendFailed} message sends found the socket closed`);
  }
  if (unexpected > 0) {
    fail(`${unexpected} message events did not match the message in flight`);
  }
  if (orderViolations > 0) {
    fail(`${orderViolations} message events arrived out of seq order`);
  }
  await cleanup(ctx);
}

// ---------------------------------------------------------------------------
// Workload: relay-open

// Per-step counters of the open-loop relay.
class Step {
  constructor(rate, first, count) {
    this.rate = rate;
    this.first = first;
    this.count = count;
    this.sent = 0;
    this.sendFailed = 0;
    this.received = 0;
    this.late = 0;
    this.acksOk = 0;
    this.acksFailed = 0;
    this.closed = false;
    this.start = 0;
    this.lastReceiveAt = 0;
    this.latency = new Samples();
    this.sendLag = new Samples();
    this.onAck = (conn, raw) => {
      if (raw !== null && OK_REPLY.test(raw)) {
        this.acksOk += 1;
      } else {
        this.acksFailed += 1;
      }
    };
  }
}

export async function runRelayOpen(ctx, options) {
  const rates = options.rates;
  const stepS = options["step-s"];
  Object.assign(ctx.result, {
    chats: options.chats,
    rates,
    step_s: stepS,
    max_chats: options["max-chats"],
  });
  run.phase = "setup";
  const pairs = await setupChats(ctx, options.chats, options["max-chats"]);
  if (pairs === null) {
    await cleanup(ctx);
    return;
  }

  const total = rates.reduce((sum, rate) => sum + Math.round(rate * stepS), 0);
  // Scheduled send time and step of every message, indexed by its number k,
  // which is also the last part of its client_id.
  const scheduledAt = new Float64Array(total);
  const stepOf = new Uint16Array(total);
  const received = new Uint8Array(total);
  const steps = [];
  let duplicates = 0;
  let unexpected = 0;
  let orderViolations = 0;
  const prefix = `${ctx.runId}.`;

  const onEvent = (conn, name, data) => {
    if (name !== "message") {
      if (name === "chat_ended" || name === "chat_requeued") {
        fail(`unexpected ${name} during the relay`);
      }
      return;
    }

    const now = performance.now();
    const clientId = data.client_id;
    const k = clientId.startsWith(prefix)
      ? Number(clientId.slice(prefix.length))
      : -1;
    if (!(k >= 0 && k < total)) {
      unexpected += 1;
      return;
    }
    if (received[k] === 1) {
      duplicates += 1;
      return;
    }
    received[k] = 1;

    const pair = ctx.pairsByChat.get(data.chat_id);
    if (pair !== undefined) {
      if (conn.role === "agent") {
        if (data.seq <= pair.lastSeqAtAgent) {
          orderViolations += 1;
        }
        pair.lastSeqAtAgent = data.seq;
      } else {
        if (data.seq <= pair.lastSeqAtVisitor) {
          orderViolations += 1;
        }
        pair.lastSeqAtVisitor = data.seq;
      }
    }

    const step = steps[stepOf[k]];
    if (step.closed) {
      step.late += 1;
      return;
    }
    step.received += 1;
    step.lastReceiveAt = now;
    step.latency.push(now - scheduledAt[k]);
  };
  for (const conn of [...ctx.agents, ...ctx.visitors]) {
    conn.onEvent = onEvent;
  }

  const chatCount = pairs.length;
  let first = 0;
  ctx.result.steps = [];
  for (let s = 0; s < rates.length; s++) {
    const rate = rates[s];
    const step = new Step(rate, first, Math.round(rate * stepS));
    steps.push(step);
    first += step.count;
    run.phase = `step ${rate}/s`;
    log(
      `relay-open: ${rate} messages/s for ${stepS} s over ${chatCount} chats`,
    );
    const generatorWindow = new GeneratorWindow();
    const intervalMs = 1000 / rate;
    process.stderr.write("MEASURE_START\n");
    step.start = performance.now();

    // Send every message whose scheduled time has come, then wait for the
    // next timer tick. A late tick sends a batch, and each message keeps its
    // scheduled time, so generator lag shows up in the latency.
    await new Promise((resolve) => {
      const tick = () => {
        const now = performance.now();
        const due = Math.min(
          step.count,
          Math.floor((now - step.start) / intervalMs) + 1,
        );
        while (step.sent < due) {
          const j = step.sent;
          const k = step.first + j;
          const at = step.start + j * intervalMs;
          scheduledAt[k] = at;
          stepOf[k] = s;
          const pair = pairs[j % chatCount];
          const sender =
            Math.floor(j / chatCount) % 2 === 0 ? pair.visitor : pair.agent;
          step.sendLag.push(now - at);
          if (
            !sender.sendWithAck(
              `${pair.framePrefix}${prefix}${k}"}]`,
              step.onAck,
            )
          ) {
            step.sendFailed += 1;
          }
          step.sent += 1;
        }
        if (step.sent < step.count) {
          setTimeout(tick, 1);
        } else {
          resolve();
        }
      };
      tick();
    });
    const generator = generatorWindow.end();
    const sendEnd = performance.now();
    const expected = step.sent - step.sendFailed;
    await waitForProgress(
      () => Math.min(step.received, step.acksOk + step.acksFailed),
      expected,
      DRAIN_MS,
      DRAIN_MS,
    );
    step.closed = true;
    process.stderr.write("MEASURE_END\n");
    const lost = expected - step.received;
    const acksMissing = expected - step.acksOk - step.acksFailed;
    const deliveredSpan =
      Math.max(step.lastReceiveAt, step.start + stepS * 1000) - step.start;
    const report = {
      rate,
      sent: step.sent,
      received: step.received,
      achieved_rate: round3(step.received / (deliveredSpan / 1000)),
      send_rate: round3(
        step.sent / ((sendEnd - step.start + intervalMs) / 1000),
      ),
      latency_ms: step.latency.summary(),
      send_lag_ms: (({ p50, p99, max }) => ({ p50, p99, max }))(
        step.sendLag.summary(),
      ),
      lost,
      acks_failed: step.acksFailed + acksMissing,
      send_failed: step.sendFailed,
      step_generator: generator,
    };
    ctx.result.steps.push(report);
    log(
      `relay-open: step ${rate}/s done: ${JSON.stringify(report.latency_ms)}`,
    );
    if (lost > 0) {
      fail(
        `${lost} messages of the ${rate}/s step were not received within ${DRAIN_MS} ms`,
      );
    }
    if (report.acks_failed > 0) {
      fail(
        `${report.acks_failed} sends of the ${rate}/s step were not acknowledged with ok`,
      );
    }
    if (step.sendFailed > 0) {
      fail(
        `${step.sendFailed} sends of the ${rate}/s step found the socket closed`,
      );
    }
    const stopP99Ms = options["stop-p99-ms"];
    const bent = stopP99Ms > 0 && report.latency_ms.p99 > stopP99Ms;
    if (bent && s + 1 < rates.length) {
      ctx.result.skipped_rates = rates.slice(s + 1);
      log(
        `relay-open: p99 ${report.latency_ms.p99} ms is over ${stopP99Ms} ms, skipping ${ctx.result.skipped_rates.join(", ")}/s`,
      );
      break;
    }
  }
  ctx.result.late = steps.reduce((sum, step) => sum + step.late, 0);
  ctx.result.duplicates = duplicates;
  ctx.result.unexpected_messages = unexpected;
  ctx.result.order_violations = orderViolations;
  if (duplicates > 0) {
    fail(`${duplicates} messages were received twice`);
  }
  if (unexpected > 0) {
    fail(`${unexpected} message events had an unknown client_id`);
  }
  if (orderViolations > 0) {
    fail(`${orderViolations} message events arrived out of seq order`);
  }
  await cleanup(ctx);
}
