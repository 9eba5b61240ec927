// Workload idle: open many sockets and hold them while the caller samples the server.

import { performance } from "node:perf_hooks";

import { closeAll, connectAll } from "./chats.mjs";
import { Conn } from "./client.mjs";
import { fail, log, round3, run } from "./report.mjs";

export async function runIdle(ctx, options) {
  const count = options.count;
  const nodes = ctx.wsUrls.length;
  const conns = [];
  let agentsMade = 0;
  // Agents and visitors are each spread round-robin over the nodes.
  for (let i = 0; i < count; i++) {
    const agent =
      options.role === "agent" || (options.role === "mixed" && i % 10 === 0);
    if (agent) {
      conns.push(
        new Conn(
          i,
          "agent",
          ctx.agentTokens[agentsMade % ctx.agentTokens.length],
          agentsMade % nodes,
        ),
      );
      agentsMade += 1;
    } else {
      conns.push(new Conn(i, "visitor", null, (i - agentsMade) % nodes));
    }
  }
  log(`idle: connecting ${count} sockets (${agentsMade} agents)`);
  run.phase = "connect";
  const up = await connectAll(ctx, conns);
  Object.assign(ctx.result, {
    count,
    agents: agentsMade,
    connected: up.connected,
    failed: count - up.connected,
    connect_s: round3(up.seconds),
    connections_per_s: round3(up.connected / Math.max(up.seconds, 0.001)),
  });

  let dropped = 0;
  for (const conn of conns) {
    conn.onClose = () => {
      dropped += 1;
    };
  }
  run.phase = "hold";
  const holdStart = performance.now();
  process.stderr.write("READY\n");
  await new Promise((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
    process.stdin.on("error", resolve);
    run.onStopSignal = resolve;
    process.stdin.resume();
  });
  run.onStopSignal = null;
  ctx.result.held_s = round3((performance.now() - holdStart) / 1000);
  ctx.result.dropped_while_held = dropped;
  if (dropped > 0) {
    fail(`${dropped} sockets were closed by the server while held`);
  }
  if (up.connected < count) {
    fail(`${count - up.connected} of ${count} sockets failed to connect`);
  }
  log("idle: closing sockets");
  await closeAll(conns);
}
