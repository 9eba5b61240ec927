// A minimal Socket.IO v5 client over Engine.IO v4, on the websocket transport only.

import { WebSocket } from "ws";

import { fail, run } from "./report.mjs";

// Time for the HTTP upgrade, and then for the `session` event after it.
const HANDSHAKE_TIMEOUT_MS = 10_000;
const SESSION_TIMEOUT_MS = 20_000;
// Time for the acknowledgement of a setup or check request (join_queue, history).
export const REQUEST_TIMEOUT_MS = 30_000;

// Limits how many sockets are between the first connect attempt and their
// `session` event at once.
export class Semaphore {
  constructor(limit) {
    this.free = limit;
    this.waiters = [];
  }

  acquire() {
    if (this.free > 0) {
      this.free -= 1;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release() {
    const next = this.waiters.shift();
    if (next) {
      next();
    } else {
      this.free += 1;
    }
  }
}

export class ConnectError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

// A Socket.IO client socket on the default namespace.
//
// Acknowledgement handlers are called as `handler(conn, rawJson)`, where
// `rawJson` is the text of the ack's argument array, or null when the socket
// closed before the ack came. Hot paths register one shared handler instead of
// a closure per message.
export class Conn {
  constructor(index, role, token, node = 0) {
    this.index = index;
    this.role = role;
    // Index of the server node, in ctx.wsUrls, that the socket connects to.
    this.node = node;
    // The visitor token is replaced by the newest one from every `session`.
    this.token = token;
    this.ws = null;
    this.open = false;
    this.session = null;
    this.nextAckId = 0;
    this.acks = new Map();
    // Workload hooks: onEvent(conn, name, data) and onClose(conn).
    this.onEvent = null;
    this.onClose = null;
    this.pending = null;
    run.conns.add(this);
  }

  authJson() {
    return JSON.stringify({ role: this.role, token: this.token ?? null });
  }

  // Open the WebSocket and resolve with the `session` payload, or reject with
  // a ConnectError on a refused connection, connect_error or timeout.
  connect(wsUrl) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl, {
        perMessageDeflate: false,
        handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
      });
      this.ws = ws;
      this.open = false;
      this.session = null;
      const timer = setTimeout(() => {
        this.settleConnect(
          new ConnectError("no session event within the timeout", "timeout"),
        );
        ws.terminate();
      }, HANDSHAKE_TIMEOUT_MS + SESSION_TIMEOUT_MS);
      this.pending = { resolve, reject, timer, lastError: null };
      ws.on("message", (data, isBinary) => {
        if (ws === this.ws) {
          this.receive(isBinary ? null : data.toString());
        }
      });
      ws.on("error", (err) => {
        if (ws === this.ws && this.pending) {
          this.pending.lastError = err;
        }
      });
      ws.on("close", () => {
        if (ws === this.ws) {
          this.closed();
        }
      });
    });
  }

  settleConnect(error, session) {
    const pending = this.pending;
    if (!pending) {
      return;
    }
    this.pending = null;
    clearTimeout(pending.timer);
    if (error) {
      pending.reject(error);
    } else {
      pending.resolve(session);
    }
  }

  receive(text) {
    if (text === null || text.length === 0) {
      return;
    }
    const engineType = text.charCodeAt(0);
    if (engineType === 0x32) {
      // Engine.IO ping: reply with a pong.
      this.ws.send("3");
    } else if (engineType === 0x34) {
      this.receiveSocketIo(text);
    } else if (engineType === 0x30) {
      // Engine.IO open: connect to the default namespace with the auth object.
      this.ws.send(`40${this.authJson()}`);
    } else if (engineType === 0x31) {
      this.ws.close();
    }
  }

  receiveSocketIo(text) {
    const packetType = text.charCodeAt(1);
    if (packetType === 0x32 || packetType === 0x33) {
      // EVENT or ACK, with an optional ack id before the JSON array.
      let start = 2;
      let id = 0;
      for (
        let c = text.charCodeAt(start);
        c >= 0x30 && c <= 0x39;
        c = text.charCodeAt(++start)
      ) {
        id = id * 10 + (c - 0x30);
      }
      if (packetType === 0x33) {
        const handler = this.acks.get(id);
        if (handler !== undefined) {
          this.acks.delete(id);
          handler(this, text.slice(start));
        }
        return;
      }
      let packet;
      try {
        packet = JSON.parse(text.slice(start));
      } catch {
        fail("the server sent an event packet that is not valid JSON");
        return;
      }
      const name = packet[0];
      const data = packet[1];
      if (name === "session") {
        this.session = data;
        if (this.role === "visitor" && typeof data?.token === "string") {
          this.token = data.token;
        }
        this.open = true;
        this.settleConnect(null, data);
      }
      if (this.onEvent !== null) {
        this.onEvent(this, name, data);
      }
    } else if (packetType === 0x34) {
      // CONNECT_ERROR: {"message", "data": {"code", "message"}}.
      let code = "connect_error";
      let message = text.slice(2);
      try {
        const body = JSON.parse(text.slice(2));
        code = body?.data?.code ?? code;
        message = body?.message ?? message;
      } catch {
        // The raw text is kept as the message.
      }
      this.settleConnect(
        new ConnectError(`connect_error ${code}: ${message}`, code),
      );
      this.ws.close();
    } else if (packetType === 0x31) {
      this.ws.close();
    }
  }

  closed() {
    const wasOpen = this.open;
    this.open = false;
    if (this.pending) {
      const cause = this.pending.lastError;
      const code = cause?.code ?? "closed";
      const message = cause
        ? cause.message
        : "connection closed before the session event";
      this.settleConnect(new ConnectError(message, code));
    }
    const acks = [...this.acks.values()];
    this.acks.clear();
    for (const handler of acks) {
      handler(this, null);
    }
    if (wasOpen && this.onClose !== null) {
      this.onClose(this);
    }
  }

  // Send `42<id>` + `body` and register `handler` for the ack. Returns false
  // when the socket is not open, and then the handler is not called.
  sendWithAck(body, handler) {
    if (!this.open) {
      return false;
    }
    const id = this.nextAckId++;
    this.acks.set(id, handler);
    this.ws.send(`42${id}${body}`);
    return true;
  }

  // Emit `event` and resolve with the reply object. Rejects when the socket is
  // closed, closes before the reply, or the reply takes over `timeoutMs`.
  request(event, payload, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      let timer = null;
      const sent = this.sendWithAck(
        JSON.stringify([event, payload]),
        (conn, raw) => {
          clearTimeout(timer);
          if (raw === null) {
            reject(new Error(`socket closed before the '${event}' reply`));
            return;
          }
          try {
            resolve(JSON.parse(raw)[0]);
          } catch (err) {
            reject(new Error(`'${event}' reply is not JSON: ${err.message}`));
          }
        },
      );
      if (!sent) {
        reject(new Error(`socket closed before sending '${event}'`));
        return;
      }
      const id = this.nextAckId - 1;
      timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new Error(`'${event}' reply timed out after ${timeoutMs} ms`));
      }, timeoutMs);
    });
  }

  close() {
    if (this.ws !== null && this.ws.readyState <= WebSocket.OPEN) {
      this.ws.close(1000);
    }
  }

  terminate() {
    if (this.ws !== null && this.ws.readyState !== WebSocket.CLOSED) {
      this.ws.terminate();
    }
  }

  isClosed() {
    return this.ws === null || this.ws.readyState === WebSocket.CLOSED;
  }
}

// Send a request that must succeed, and throw with the server's error code if not.
export async function requestOk(conn, event, payload, timeoutMs) {
  const reply = await conn.request(event, payload, timeoutMs);
  if (!reply || reply.ok !== true) {
    const code = reply?.error?.code ?? "malformed reply";
    throw new Error(
      `'${event}' failed: ${code}: ${reply?.error?.message ?? JSON.stringify(reply)}`,
    );
  }
  return reply;
}
