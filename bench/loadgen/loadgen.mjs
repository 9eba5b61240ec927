#!/usr/bin/env node
// Load generator for servers that implement the chat contract in docs/protocol.md.
//
//   node bench/loadgen/loadgen.mjs WORKLOAD [options]      (--help lists them)
//
// It speaks Engine.IO v4 / Socket.IO v5 framing by hand over the `ws` package,
// because socket.io-client costs too much memory and CPU per socket to hold
// thousands of them in one process. Only the websocket transport is used.
//
// stdout receives exactly one JSON object when the run ends, and progress goes
// to stderr. The exit code is 0 whenever a result was printed, even when the
// server misbehaved (then "ok" is false). It is 2 for an invalid option and 1
// when the generator itself failed.
//
// NOTE: every socket takes one file descriptor, so the caller must raise the
// open-file limit above the socket count first (for example `ulimit -n 65536`,
// up to the hard limit that `ulimit -Hn` shows). With the default limit of 1024
// on many systems, connects fail with EMFILE. On Linux the generator warns on
// stderr when the limit looks too low for the run.

import { existsSync, readFileSync } from "node:fs";

import { Semaphore } from "./client.mjs";
import { runIdle } from "./idle.mjs";
import { runMatch } from "./match.mjs";
import {
  MAX_OPEN_LOOP_MESSAGES,
  runRelayClosed,
  runRelayOpen,
} from "./relay.mjs";
import { fail, finish, log, run } from "./report.mjs";
import { runStorm } from "./storm.mjs";

const USAGE = `usage: node loadgen.mjs WORKLOAD [options]

Workloads and their options (defaults in brackets):
  idle          --count N [1000] --role visitor|mixed|agent [visitor]
                Opens N sockets, prints READY on stderr and holds them until
                stdin closes or SIGTERM arrives, within --timeout-s. mixed makes
                every 10th socket an agent and agent makes every socket one,
                cycling through the agent tokens.
  relay-closed  --pairs P [100] --duration-s D [10] --max-chats M [10]
                Each chat ping-pongs one message at a time between visitor and agent.
  relay-open    --chats C [1000] --rates R1,R2,... [500,2000] --step-s S [10] --max-chats M [10]
                --stop-p99-ms L [0]
                Sends R messages per second in total, on a schedule, for S seconds per rate.
                With L above 0, the rates after the first step whose p99 is over L ms
                are skipped: the server has bent, and higher rates only queue more.
                Both relays print MEASURE_START and MEASURE_END on stderr around
                each measured window (the relay, or one rate step with its drain).
  match         --visitors V [2000] --agents A [100] --capacity K [5]
                Queues V visitors, then makes A agents ready at once and times the matching.
  storm         --chats C [1000] --max-chats M [10] --messages-before N [5]
                --restart-wait-s W [60] --resume-max-s R [60]
                Prints STORM_READY on stderr, waits up to W s for the server to drop
                the sockets, reconnects them all and checks that no acked message is lost.

Common options:
  --url URL[,URL...]          server base URL [http://127.0.0.1:8080]; with several
                              (the nodes of one cluster), agents and visitors are
                              spread over them so that chats cross nodes
  --agents-file PATH          JSON array of agent access tokens (needed by every
                              workload that connects agents)
  --connect-concurrency N     sockets in handshake at once [200]
  --timeout-s N               hard stop for the whole run, in seconds [120]
  --no-cleanup                leave chats open and agents ready at the end
  --allow-remote              allow a URL whose host is not a loopback address
`;

const WORKLOAD_OPTIONS = {
  idle: { count: 1000, role: "visitor" },
  "relay-closed": { pairs: 100, "duration-s": 10, "max-chats": 10 },
  "relay-open": {
    chats: 1000,
    rates: "500,2000",
    "step-s": 10,
    "stop-p99-ms": 0,
    "max-chats": 10,
  },
  match: { visitors: 2000, agents: 100, capacity: 5 },
  storm: {
    chats: 1000,
    "max-chats": 10,
    "messages-before": 5,
    "restart-wait-s": 60,
    "resume-max-s": 60,
  },
};
const COMMON_OPTIONS = {
  url: "http://127.0.0.1:8080",
  "agents-file": "",
  "connect-concurrency": 200,
  "timeout-s": 120,
};
const FLAGS = new Set(["no-cleanup", "allow-remote"]);

class UsageError extends Error {}

// Parse the command line into the workload, its options with their defaults,
// the WebSocket URL and the agent tokens. Throws UsageError on invalid input.
function parseArgs(argv) {
  const workload = argv[0];
  if (workload === undefined || workload === "--help" || workload === "-h") {
    process.stdout.write(USAGE);
    process.exit(workload === undefined ? 2 : 0);
  }
  const defaults = WORKLOAD_OPTIONS[workload];
  if (defaults === undefined) {
    throw new UsageError(
      `unknown workload '${workload}': use one of ${Object.keys(WORKLOAD_OPTIONS).join(", ")}`,
    );
  }
  const options = { ...COMMON_OPTIONS, ...defaults };
  const flags = new Set();
  for (let i = 1; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) {
      throw new UsageError(`unexpected argument '${arg}'`);
    }
    const name = arg.slice(2);
    if (FLAGS.has(name)) {
      flags.add(name);
      continue;
    }
    if (!(name in options)) {
      throw new UsageError(`unknown option '${arg}' for workload ${workload}`);
    }
    if (i + 1 >= argv.length) {
      throw new UsageError(`option '${arg}' needs a value`);
    }
    options[name] = argv[++i];
  }
  validateNumbers(options);
  const wsUrls = String(options.url)
    .split(",")
    .map((url) => websocketUrl(url.trim(), flags.has("allow-remote")));
  const agentTokens = readAgentTokens(workload, options);
  return { workload, options, flags, wsUrls, agentTokens };
}

// Convert the numeric options in place, checking their ranges.
function validateNumbers(options) {
  const integer = (name, min, max) => {
    const value = Number(options[name]);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new UsageError(
        `--${name} must be a whole number from ${min} to ${max}, got '${options[name]}'`,
      );
    }
    options[name] = value;
  };
  integer("connect-concurrency", 1, 100_000);
  integer("timeout-s", 1, 86_400);
  for (const name of ["count", "pairs", "chats", "visitors", "agents"]) {
    if (name in options) {
      integer(name, 1, 1_000_000);
    }
  }
  for (const name of [
    "duration-s",
    "step-s",
    "restart-wait-s",
    "resume-max-s",
  ]) {
    if (name in options) {
      integer(name, 1, 86_400);
    }
  }
  // The protocol allows max_chats from 1 to 50.
  for (const name of ["max-chats", "capacity"]) {
    if (name in options) {
      integer(name, 1, 50);
    }
  }
  if ("messages-before" in options) {
    integer("messages-before", 0, 100_000);
  }
  if ("stop-p99-ms" in options) {
    integer("stop-p99-ms", 0, 3_600_000);
  }
  if ("role" in options && !["visitor", "mixed", "agent"].includes(options.role)) {
    throw new UsageError(
      `--role must be visitor, mixed or agent, got '${options.role}'`,
    );
  }
  if ("rates" in options) {
    const rates = String(options.rates).split(",").map(Number);
    const invalid = rates.some(
      (rate) => !Number.isInteger(rate) || rate < 1 || rate > 1_000_000,
    );
    if (invalid || rates.length > 1000) {
      throw new UsageError(
        `--rates must be up to 1000 whole messages per second separated by commas, got '${options.rates}'`,
      );
    }
    const total = rates.reduce(
      (sum, rate) => sum + rate * options["step-s"],
      0,
    );
    if (total > MAX_OPEN_LOOP_MESSAGES) {
      throw new UsageError(
        `--rates and --step-s add up to ${total} messages, more than ${MAX_OPEN_LOOP_MESSAGES}`,
      );
    }
    options.rates = rates;
  }
}

// Return the Engine.IO WebSocket URL for the server's base URL.
function websocketUrl(baseUrl, allowRemote) {
  let url;
  try {
    url = new URL(baseUrl);
  } catch {
    throw new UsageError(`--url '${baseUrl}' is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(
      `--url must start with http:// or https://, got '${baseUrl}'`,
    );
  }
  const loopback =
    ["localhost", "[::1]"].includes(url.hostname) ||
    url.hostname.startsWith("127.");
  if (!loopback && !allowRemote) {
    throw new UsageError(
      `--url host '${url.hostname}' is not a loopback address: pass --allow-remote to load it anyway`,
    );
  }
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.pathname = "/socket.io/";
  url.search = "?EIO=4&transport=websocket";
  return url.toString();
}

// Read the agent tokens for the workloads that connect agents, checking that
// there are enough distinct ones.
function readAgentTokens(workload, options) {
  if (workload === "idle" && options.role === "visitor") {
    return [];
  }

  const path = options["agents-file"];
  if (!path) {
    throw new UsageError(
      `workload ${workload} connects agents: pass --agents-file`,
    );
  }

  let tokens;
  try {
    tokens = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new UsageError(
      `failed to read --agents-file '${path}': ${err.message}`,
    );
  }
  if (
    !Array.isArray(tokens) ||
    tokens.length === 0 ||
    tokens.some((token) => typeof token !== "string" || !token)
  ) {
    throw new UsageError(
      `--agents-file '${path}' must contain a non-empty JSON array of token strings`,
    );
  }

  // Each agent has its own max_chats slots, so the chats need distinct agents.
  let needed = 0;
  if (workload === "match") {
    needed = options.agents;
  } else if (workload === "relay-closed") {
    needed = Math.ceil(options.pairs / options["max-chats"]);
  } else if (workload === "relay-open" || workload === "storm") {
    needed = Math.ceil(options.chats / options["max-chats"]);
  }
  const distinct = new Set(tokens).size;
  if (distinct < needed) {
    throw new UsageError(
      `workload ${workload} needs ${needed} distinct agent tokens, and --agents-file ` +
        `has ${distinct}: add agents or raise --max-chats`,
    );
  }
  return tokens;
}

// Return how many sockets the workload opens at once.
function plannedSockets(workload, options) {
  switch (workload) {
    case "idle":
      return options.count;
    case "relay-closed":
      return options.pairs + Math.ceil(options.pairs / options["max-chats"]);
    case "relay-open":
    case "storm":
      return options.chats + Math.ceil(options.chats / options["max-chats"]);
    case "match":
      return options.visitors + options.agents;
    default:
      return 0;
  }
}

// Warn when the soft open-file limit in /proc/self/limits (Linux only) leaves
// too few descriptors for the sockets of the run.
function warnAboutFileLimit(sockets) {
  if (!existsSync("/proc/self/limits")) {
    return;
  }
  const limits = readFileSync("/proc/self/limits", "utf8");
  const match = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
  if (match === null || match[1] === "unlimited") {
    return;
  }
  const limit = Number(match[1]);
  // Node.js keeps about 20 descriptors of its own, so a margin is left.
  if (sockets + 100 > limit) {
    log(
      `warning: the open-file limit is ${limit} and this run opens ${sockets} ` +
        "sockets: raise it with `ulimit -n` or connects fail with EMFILE",
    );
  }
}

async function main() {
  let parsed;
  try {
    parsed = parseArgs(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`loadgen: ${err.message}\n\n${USAGE}`);
      process.exit(2);
    }
    throw err;
  }
  const { workload, options, flags } = parsed;
  run.result.workload = workload;
  run.result.nodes = parsed.wsUrls.length;
  warnAboutFileLimit(plannedSockets(workload, options));
  const ctx = {
    result: run.result,
    // One Engine.IO URL per node; a Conn connects to wsUrls[conn.node].
    wsUrls: parsed.wsUrls,
    agentTokens: parsed.agentTokens,
    concurrency: options["connect-concurrency"],
    handshakes: new Semaphore(options["connect-concurrency"]),
    noCleanup: flags.has("no-cleanup"),
    // Makes client_ids unique across runs against the same server.
    runId: Math.random().toString(36).slice(2, 8),
    agents: [],
    visitors: [],
  };

  setTimeout(() => {
    if (run.phase === "cleanup") {
      // The measurement is complete, so only the cleanup is cut short.
      run.result.cleanup_complete = false;
    } else {
      fail(`timed out after ${options["timeout-s"]} s in phase '${run.phase}'`);
    }
    finish(0);
  }, options["timeout-s"] * 1000);
  // A signal ends the hold of idle normally, and any other phase with ok false.
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      if (run.onStopSignal) {
        run.onStopSignal();
        return;
      }
      fail(`stopped by ${signal} in phase '${run.phase}'`);
      finish(0);
    });
  }

  const workloads = {
    idle: runIdle,
    "relay-closed": runRelayClosed,
    "relay-open": runRelayOpen,
    match: runMatch,
    storm: runStorm,
  };
  await workloads[workload](ctx, options);
  finish(0);
}

process.on("uncaughtException", (err) => {
  process.stderr.write(`loadgen: generator failure: ${err.stack}\n`);
  fail(`generator failure: ${err.message}`);
  finish(1);
});
process.on("unhandledRejection", (err) => {
  process.stderr.write(`loadgen: generator failure: ${err?.stack ?? err}\n`);
  fail(`generator failure: ${err?.message ?? err}`);
  finish(1);
});

main();
