// Run state, error collection, latency samples and the final JSON report.

import { monitorEventLoopDelay, performance } from "node:perf_hooks";

// Latency samples kept per series, which bounds memory at 160 MB per series.
const MAX_SAMPLES = 20_000_000;
// Distinct error texts kept in the report.
export const MAX_ERRORS = 20;

// The histogram records whole timer intervals, so the sampling interval is
// subtracted again when the delay is reported.
const LOOP_DELAY_RESOLUTION_MS = 10;
const runLoopDelay = monitorEventLoopDelay({
  resolution: LOOP_DELAY_RESOLUTION_MS,
});
runLoopDelay.enable();

export const run = {
  result: { workload: null, ok: true, errors: [] },
  errorCounts: new Map(),
  errorTotal: 0,
  finished: false,
  conns: new Set(),
  phase: "start",
  // Set while a phase waits for SIGTERM or SIGINT as its normal end.
  onStopSignal: null,
};

export function log(message) {
  // performance.now() counts from the start of the process, as process.cpuUsage() does.
  const seconds = (performance.now() / 1000).toFixed(1);
  process.stderr.write(`[loadgen ${seconds}s] ${message}\n`);
}

// Record a failure of the server or of the run: `ok` becomes false.
export function fail(message) {
  run.result.ok = false;
  noteError(message);
}

// Record an error message, keeping at most MAX_ERRORS distinct texts.
export function noteError(message) {
  run.errorTotal += 1;
  const count = run.errorCounts.get(message);
  if (count !== undefined) {
    run.errorCounts.set(message, count + 1);
  } else if (run.errorCounts.size < MAX_ERRORS) {
    run.errorCounts.set(message, 1);
    log(`error: ${message}`);
  }
}

export function round3(value) {
  return Math.round(value * 1000) / 1000;
}

function loopDelaySummary(histogram) {
  const excessMs = (nanoseconds) =>
    round3(Math.max(0, nanoseconds / 1e6 - LOOP_DELAY_RESOLUTION_MS));
  return {
    p99: excessMs(histogram.percentile(99)),
    max: excessMs(histogram.max),
  };
}

// Measure the generator's own load over one measured phase, so that a
// saturated generator shows up next to the numbers it produced.
export class GeneratorWindow {
  constructor() {
    this.cpu = process.cpuUsage();
    this.start = performance.now();
    this.loopDelay = monitorEventLoopDelay({
      resolution: LOOP_DELAY_RESOLUTION_MS,
    });
    this.loopDelay.enable();
  }

  // Return CPU seconds, CPU percent of one core and event loop delay since the start.
  end() {
    const cpu = process.cpuUsage(this.cpu);
    const cpuS = (cpu.user + cpu.system) / 1e6;
    const wallS = (performance.now() - this.start) / 1000;
    this.loopDelay.disable();
    return {
      cpu_s: round3(cpuS),
      cpu_pct: round3((100 * cpuS) / Math.max(wallS, 0.001)),
      loop_delay_ms: loopDelaySummary(this.loopDelay),
    };
  }
}

// Print the report, close every socket and exit. Only the first call acts.
export function finish(exitCode = 0) {
  if (run.finished) {
    return;
  }
  run.finished = true;
  for (const conn of run.conns) {
    conn.terminate();
  }
  const result = run.result;
  result.errors = [...run.errorCounts].map(([message, count]) =>
    count > 1 ? `${message} (${count} times)` : message,
  );
  result.error_count = run.errorTotal;
  const cpu = process.cpuUsage();
  result.generator_cpu_s = round3((cpu.user + cpu.system) / 1e6);
  result.generator_wall_s = round3(performance.now() / 1000);
  result.generator_cpu_pct = round3(
    (100 * result.generator_cpu_s) / Math.max(result.generator_wall_s, 0.001),
  );
  result.generator_loop_delay_ms = loopDelaySummary(runLoopDelay);
  process.stdout.write(`${JSON.stringify(result)}\n`, () =>
    process.exit(exitCode),
  );
}

// ---------------------------------------------------------------------------
// Latency samples

export class Samples {
  constructor() {
    this.data = new Float64Array(4096);
    this.length = 0;
    this.dropped = 0;
  }

  push(value) {
    if (this.length === this.data.length) {
      if (this.length >= MAX_SAMPLES) {
        this.dropped += 1;
        return;
      }
      const grown = new Float64Array(Math.min(this.length * 2, MAX_SAMPLES));
      grown.set(this.data);
      this.data = grown;
    }
    this.data[this.length++] = value;
  }

  // Percentiles by nearest rank, in the unit pushed (milliseconds here).
  summary() {
    const n = this.length;
    if (n === 0) {
      return {
        count: 0,
        dropped: this.dropped,
        p50: null,
        p90: null,
        p99: null,
        p999: null,
        max: null,
      };
    }
    const sorted = this.data.slice(0, n).sort();
    const at = (q) =>
      round3(sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]);
    return {
      count: n,
      // Samples past MAX_SAMPLES are counted here but left out of the percentiles.
      dropped: this.dropped,
      p50: at(0.5),
      p90: at(0.9),
      p99: at(0.99),
      p999: at(0.999),
      max: round3(sorted[n - 1]),
    };
  }
}
