// Workload match: queue visitors, make agents ready at once, time and check the matching.

import { performance } from "node:perf_hooks";

import { cleanup, connectAll, sleep, waitForProgress } from "./chats.mjs";
import { Conn, requestOk } from "./client.mjs";
import {
  GeneratorWindow,
  MAX_ERRORS,
  fail,
  log,
  round3,
  run,
} from "./report.mjs";

export async function runMatch(ctx, options) {
  const visitorCount = options.visitors;
  const agentCount = options.agents;
  const capacity = options.capacity;
  const expected = Math.min(visitorCount, agentCount * capacity);
  Object.assign(ctx.result, {
    visitors: visitorCount,
    agents: agentCount,
    capacity,
    expected,
  });
  const violations = [];
  let violationCount = 0;
  const violate = (message) => {
    violationCount += 1;
    if (violations.length < MAX_ERRORS) {
      violations.push(message);
    }
  };

  // Visitor side: the chat and agent of each chat_started. The clock stops when
  // `target` chats have started, and the target is set once the agents are known.
  let matched = 0;
  let matchedAt = 0;
  let target = Infinity;
  const visitorEvent = (conn, name, data) => {
    if (name !== "chat_started") {
      return;
    }
    conn.startedCount += 1;
    if (conn.startedCount > 1) {
      violate(
        `visitor ${conn.index} received chat_started ${conn.startedCount} times`,
      );
      return;
    }
    conn.startedChatId = data.chat.id;
    conn.agentId = data.chat.agent?.id ?? null;
    matched += 1;
    if (matched === target) {
      matchedAt = performance.now();
    }
  };
  // Agent side: the chats for which each agent socket received chat_started.
  const agentEvent = (conn, name, data) => {
    if (name !== "chat_started") {
      return;
    }
    if (conn.startedChats.has(data.chat.id)) {
      violate(`agent ${conn.index} received chat_started twice for one chat`);
      return;
    }
    conn.startedChats.add(data.chat.id);
  };

  run.phase = "queue";
  log(`match: connecting ${visitorCount} visitors`);
  const visitors = [];
  for (let i = 0; i < visitorCount; i++) {
    // Spread over the nodes; which agent takes a visitor is up to the server.
    const visitor = new Conn(i, "visitor", null, i % ctx.wsUrls.length);
    visitor.onEvent = visitorEvent;
    visitor.chatId = null;
    visitor.startedCount = 0;
    visitor.startedChatId = null;
    visitor.agentId = null;
    visitors.push(visitor);
  }
  ctx.visitors = visitors;
  const visitorsUp = await connectAll(ctx, visitors);
  log(
    `match: ${visitorsUp.connected} visitors connected, joining the queue one at a time`,
  );
  // Joins go one at a time, each after the previous ack, so that the join
  // order is the queue order.
  const joinStart = performance.now();
  const joined = [];
  for (const visitor of visitors) {
    if (!visitor.open) {
      continue;
    }
    try {
      const reply = await requestOk(visitor, "join_queue", {});
      visitor.chatId = reply.chat.id;
      joined.push(visitor);
    } catch (err) {
      fail(`match: ${err.message}`);
    }
    if (joined.length % 500 === 0 && visitor.chatId !== null) {
      log(`match: ${joined.length} visitors queued`);
    }
  }
  ctx.result.queued = joined.length;
  ctx.result.join_s = round3((performance.now() - joinStart) / 1000);
  if (matched > 0) {
    fail(`${matched} chats started before any agent was made ready`);
  }

  log(`match: connecting ${agentCount} agents`);
  const agents = ctx.agentTokens.slice(0, agentCount).map((token, i) => {
    const agent = new Conn(i, "agent", token, i % ctx.wsUrls.length);
    agent.onEvent = agentEvent;
    agent.startedChats = new Set();
    return agent;
  });
  ctx.agents = agents;
  const agentsUp = await connectAll(ctx, agents);
  if (agentsUp.connected < agentCount) {
    fail(`match: only ${agentsUp.connected} of ${agentCount} agents connected`);
  }
  for (const agent of agents) {
    if (
      agent.open &&
      (agent.session.status !== "away" || agent.session.chats?.length > 0)
    ) {
      fail(
        "match: an agent connected as ready or with active chats, so start the server " +
          "on a fresh data dir or let the earlier run clean up",
      );
      break;
    }
  }
  const expectedNow = Math.min(joined.length, agentsUp.connected * capacity);
  target = expectedNow;

  run.phase = "match";
  log(
    `match: making ${agentsUp.connected} agents ready with capacity ${capacity}`,
  );
  const generatorWindow = new GeneratorWindow();
  const readyStart = performance.now();
  const readyReplies = agents
    .filter((agent) => agent.open)
    .map((agent) =>
      requestOk(agent, "agent_ready", { max_chats: capacity }).catch((err) =>
        fail(`match: ${err.message}`),
      ),
    );
  const complete = await waitForProgress(() => matched, expectedNow);
  const matchEnd = matchedAt || performance.now();
  ctx.result.match_generator = generatorWindow.end();
  await Promise.all(readyReplies);
  // Late or extra chat_started events get one more second to show up.
  await sleep(1000);
  Object.assign(ctx.result, {
    matched,
    expected: expectedNow,
    match_s: round3((matchEnd - readyStart) / 1000),
    matches_per_s: round3(
      matched / Math.max((matchEnd - readyStart) / 1000, 0.001),
    ),
  });
  if (!complete) {
    fail(`only ${matched} of ${expectedNow} chats started`);
  }

  // Rule: the oldest chats are served first, so exactly the first
  // `expectedNow` visitors in join order have a chat.
  for (let i = 0; i < joined.length; i++) {
    const visitor = joined[i];
    if (i < expectedNow && visitor.startedCount === 0) {
      violate(`visitor ${visitor.index} (join ${i + 1}) was not matched`);
    } else if (i >= expectedNow && visitor.startedCount > 0) {
      violate(
        `visitor ${visitor.index} (join ${i + 1}) was matched, beyond the first ${expectedNow}`,
      );
    }
    if (
      visitor.startedChatId !== null &&
      visitor.startedChatId !== visitor.chatId
    ) {
      violate(
        `visitor ${visitor.index} started a chat that is not the one it queued`,
      );
    }
  }
  // Rule: no agent has more than `capacity` chats, and each started chat was
  // announced to its agent.
  const chatsByAgentId = new Map();
  for (const visitor of joined) {
    if (visitor.startedChatId === null) {
      continue;
    }
    const list = chatsByAgentId.get(visitor.agentId) ?? [];
    list.push(visitor.startedChatId);
    chatsByAgentId.set(visitor.agentId, list);
  }
  const agentsById = new Map(
    agents
      .filter((agent) => agent.session !== null)
      .map((agent) => [agent.session.agent_id, agent]),
  );
  let maxLoad = 0;
  for (const [agentId, chats] of chatsByAgentId) {
    maxLoad = Math.max(maxLoad, chats.length);
    if (chats.length > capacity) {
      violate(
        `agent ${agentId} got ${chats.length} chats, more than ${capacity}`,
      );
    }
    const agent = agentsById.get(agentId);
    if (agent === undefined) {
      violate(
        `chats went to agent ${agentId}, which is not one of this run's agents`,
      );
      continue;
    }
    for (const chatId of chats) {
      if (!agent.startedChats.has(chatId)) {
        violate(
          `agent ${agent.index} never received chat_started for a chat assigned to it`,
        );
      }
    }
  }
  for (const agent of agents) {
    if (agent.startedChats.size > capacity) {
      violate(
        `agent ${agent.index} received ${agent.startedChats.size} chats, more than ${capacity}`,
      );
    }
  }
  ctx.result.max_chats_per_agent = maxLoad;
  ctx.result.rules_ok = violationCount === 0;
  ctx.result.violation_count = violationCount;
  ctx.result.violations = violations;
  if (violationCount > 0) {
    fail(`${violationCount} matching rule violations`);
  }
  await cleanup(ctx);
}
