/*
 * Visitor chat widget. Embed it with one script tag:
 *
 *   <script src="https://chat.example.com/widget.js" async
 *           data-title="Acme support" data-color="#0f766e"></script>
 *
 * Settings come from the tag's data attributes, or from window.SioChatConfig
 * set before the tag: server (defaults to the script's own origin), title,
 * color, textColor, greeting, position ("right" or "left").
 *
 * Commands, callable before the script has loaded through the usual stub:
 *
 *   window.SioChat = window.SioChat || function () {
 *     (window.SioChat.q = window.SioChat.q || []).push(arguments);
 *   };
 *   SioChat("identify", { name: "Maya", email: "maya@example.com" });
 *
 * SioChat("open"), SioChat("close"), SioChat("toggle"), SioChat("identify",
 * {name, email}) and SioChat("reset") are also methods: SioChat.open().
 *
 * Everything the other side sends is shown with textContent, never as HTML.
 */
(function () {
  "use strict";

  if (window.SioChat && window.SioChat.__widget) return;

  const script = document.currentScript;
  const data = (script && script.dataset) || {};
  const preset = window.SioChatConfig || {};
  const scriptOrigin = script && script.src ? new URL(script.src).origin : location.origin;
  const config = {
    server: (preset.server || data.server || scriptOrigin).replace(/\/+$/, ""),
    title: preset.title || data.title || "Chat with us",
    color: preset.color || data.color || "#2563eb",
    textColor: preset.textColor || data.textColor || "#ffffff",
    greeting:
      preset.greeting || data.greeting || "Hi! Ask us anything and an agent will answer here.",
    position: (preset.position || data.position) === "left" ? "left" : "right",
  };
  const storageKey = "sio-chat:" + config.server;
  const ACK_TIMEOUT_MS = 10000;
  const TYPING_IDLE_MS = 3000;

  // Storage: the visitor token, the identity, and messages not yet acknowledged.

  function load(name, fallback) {
    try {
      const raw = localStorage.getItem(storageKey + ":" + name);
      return raw === null ? fallback : JSON.parse(raw);
    } catch (error) {
      return fallback;
    }
  }

  function save(name, value) {
    try {
      if (value === null || value === undefined) {
        localStorage.removeItem(storageKey + ":" + name);
      } else {
        localStorage.setItem(storageKey + ":" + name, JSON.stringify(value));
      }
    } catch (error) {
      // Private browsing can refuse storage; the chat still works in memory.
    }
  }

  function newClientId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "c-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  const state = {
    socket: null,
    open: false,
    connected: false,
    everConnected: false,
    chat: null,
    agentsOnline: null,
    position: null,
    estimatedWait: null,
    messages: new Map(), // seq -> Message
    outbox: load("outbox", []), // [{kind, client_id, text}]
    flushing: false,
    failedConnects: 0,
    agentReadSeq: 0,
    agentTyping: false,
    unread: 0,
  };

  // DOM, inside a shadow root so the host page's CSS cannot reach it.

  const host = document.createElement("div");
  host.setAttribute("data-sio-chat", "");
  const root = host.attachShadow({ mode: "open" });
  root.innerHTML = `
    <style>
      :host { all: initial; }
      * { box-sizing: border-box; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
      .launcher {
        position: fixed; bottom: 20px; ${config.position}: 20px; z-index: 2147483000;
        width: 60px; height: 60px; border-radius: 50%; border: none; cursor: pointer;
        background: var(--accent); color: var(--accent-text); display: grid; place-items: center;
        box-shadow: 0 6px 20px rgba(0,0,0,.25);
      }
      .launcher:focus-visible, button:focus-visible, textarea:focus-visible {
        outline: 3px solid #f59e0b; outline-offset: 2px;
      }
      .badge {
        position: absolute; top: -4px; right: -4px; min-width: 22px; height: 22px;
        border-radius: 11px; background: #dc2626; color: #fff; font-size: 12px;
        line-height: 22px; padding: 0 6px;
      }
      .panel {
        position: fixed; bottom: 92px; ${config.position}: 20px; z-index: 2147483000;
        width: 370px; height: min(600px, calc(100vh - 120px)); display: flex;
        flex-direction: column; background: #fff; color: #111827; border-radius: 14px;
        box-shadow: 0 12px 40px rgba(0,0,0,.3); overflow: hidden; font-size: 15px;
      }
      .panel[hidden], .launcher[hidden], [hidden] { display: none !important; }
      header {
        background: var(--accent); color: var(--accent-text); padding: 14px 16px;
        display: flex; align-items: flex-start; gap: 8px;
      }
      header .titles { flex: 1; }
      header h2 { margin: 0; font-size: 17px; }
      header p { margin: 2px 0 0; font-size: 13px; opacity: .9; }
      header button {
        background: transparent; color: inherit; border: none; font-size: 22px;
        cursor: pointer; line-height: 1; padding: 2px 6px;
      }
      .banner { padding: 8px 14px; font-size: 13px; background: #fef3c7; color: #92400e; }
      .status { padding: 8px 14px; font-size: 13px; background: #f3f4f6; color: #374151; }
      .log { flex: 1; overflow-y: auto; padding: 12px; display: flex; flex-direction: column; gap: 8px; }
      .greeting { color: #4b5563; font-size: 14px; }
      .msg { max-width: 82%; padding: 8px 11px; border-radius: 12px; white-space: pre-wrap;
             overflow-wrap: anywhere; }
      .msg.mine { align-self: flex-end; background: var(--accent); color: var(--accent-text); }
      .msg.theirs { align-self: flex-start; background: #e5e7eb; color: #111827; }
      .msg.system { align-self: center; background: transparent; color: #6b7280; font-size: 13px; }
      .meta { display: block; font-size: 11px; opacity: .8; margin-top: 3px; }
      .typing { padding: 0 14px 6px; font-size: 13px; color: #6b7280; min-height: 1.2em; }
      form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #e5e7eb; }
      textarea {
        flex: 1; resize: none; border: 1px solid #d1d5db; border-radius: 8px;
        padding: 8px; font-size: 15px; min-height: 42px; max-height: 120px;
      }
      .send, .again, .end {
        border: none; border-radius: 8px; padding: 0 14px; cursor: pointer;
        background: var(--accent); color: var(--accent-text); font-size: 14px;
      }
      .end { background: transparent; color: inherit; border: 1px solid currentColor;
             padding: 4px 8px; font-size: 12px; margin-top: 4px; }
      .ended { padding: 12px; text-align: center; border-top: 1px solid #e5e7eb; }
      .again { padding: 10px 16px; }
      .sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden;
                 clip: rect(0 0 0 0); white-space: nowrap; }
      @media (max-width: 480px) {
        .panel { inset: 0; width: 100%; height: 100%; border-radius: 0; bottom: 0; }
      }
    </style>
    <button class="launcher" type="button" aria-label="Open chat" aria-expanded="false">
      <svg aria-hidden="true" width="28" height="28" viewBox="0 0 24 24" fill="none"
           stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">
        <path d="M21 12a8 8 0 0 1-11.6 7.1L4 20.5l1.4-4.9A8 8 0 1 1 21 12z"/>
      </svg><span class="badge" hidden></span>
    </button>
    <section class="panel" role="dialog" aria-label="" hidden>
      <header>
        <div class="titles">
          <h2 class="title"></h2>
          <p class="agents"></p>
          <button class="end" type="button" hidden>End chat</button>
        </div>
        <button class="close" type="button" aria-label="Close chat">×</button>
      </header>
      <div class="banner" role="status" hidden>Reconnecting…</div>
      <div class="status" role="status"></div>
      <div class="log" role="log" aria-live="polite" aria-label="Messages">
        <p class="greeting"></p>
      </div>
      <div class="typing" aria-live="polite"></div>
      <form class="composer">
        <label class="sr-only" for="sio-chat-text">Message</label>
        <textarea id="sio-chat-text" rows="1" maxlength="4000"
                  placeholder="Write a message…"></textarea>
        <button class="send" type="submit">Send</button>
      </form>
      <div class="ended" hidden>
        <p>This chat has ended.</p>
        <button class="again" type="button">Start a new chat</button>
      </div>
    </section>`;
  host.style.setProperty("--accent", config.color);
  host.style.setProperty("--accent-text", config.textColor);

  const $ = (selector) => root.querySelector(selector);
  const ui = {
    launcher: $(".launcher"),
    badge: $(".badge"),
    panel: $(".panel"),
    title: $(".title"),
    agents: $(".agents"),
    close: $(".close"),
    end: $(".end"),
    banner: $(".banner"),
    status: $(".status"),
    log: $(".log"),
    greeting: $(".greeting"),
    typing: $(".typing"),
    composer: $(".composer"),
    text: $("textarea"),
    ended: $(".ended"),
    again: $(".again"),
  };
  ui.title.textContent = config.title;
  ui.panel.setAttribute("aria-label", config.title);
  ui.greeting.textContent = config.greeting;

  // Rendering. Every piece of text from the server goes through textContent.

  function render() {
    const chat = state.chat;
    ui.banner.hidden = state.connected || !state.everConnected;
    if (state.agentsOnline === null) {
      ui.agents.textContent = "";
    } else if (state.agentsOnline === 0) {
      ui.agents.textContent = "No agents are online right now.";
    } else {
      ui.agents.textContent =
        state.agentsOnline === 1 ? "1 agent online" : state.agentsOnline + " agents online";
    }
    ui.status.textContent = statusLine();
    ui.status.hidden = ui.status.textContent === "";
    ui.typing.textContent =
      state.agentTyping && chat && chat.agent ? chat.agent.name + " is typing…" : "";
    const ended = Boolean(chat && chat.status === "ended");
    ui.end.hidden = !chat || ended;
    ui.composer.hidden = ended;
    ui.ended.hidden = !ended;
    ui.badge.hidden = state.unread === 0 || state.open;
    ui.badge.textContent = String(state.unread);
    renderLog();
  }

  function statusLine() {
    const chat = state.chat;
    if (!state.connected && !state.everConnected) {
      // A few failed attempts usually mean the site's origin is not allowed
      // by the chat server, or the server is down.
      return state.failedConnects >= 3 ? "The chat server cannot be reached right now." : "Connecting…";
    }
    if (!chat) return "";
    if (chat.status === "active" && chat.agent) return "You are chatting with " + chat.agent.name + ".";
    if (chat.status === "queued") {
      let line = state.position ? "You are number " + state.position + " in the queue." : "You are in the queue.";
      if (typeof state.estimatedWait === "number") {
        line += " Estimated wait: " + formatWait(state.estimatedWait) + ".";
      } else if (state.agentsOnline === 0) {
        line += " You stay in the queue until an agent comes online.";
      } else {
        line += " An agent will be with you soon.";
      }
      return line;
    }
    return "";
  }

  function formatWait(seconds) {
    if (seconds < 60) return "under a minute";
    const minutes = Math.round(seconds / 60);
    return minutes === 1 ? "about 1 minute" : "about " + minutes + " minutes";
  }

  function renderLog() {
    const nodes = [ui.greeting];
    const sorted = [...state.messages.values()].sort((a, b) => a.seq - b.seq);
    for (const message of sorted) nodes.push(messageNode(message, false));
    const stored = new Set(sorted.map((message) => message.client_id));
    for (const pending of state.outbox) {
      if (!stored.has(pending.client_id)) {
        nodes.push(messageNode({ text: pending.text, sender: { role: "visitor" } }, true));
      }
    }
    if (state.chat && state.chat.status === "ended") {
      const note = document.createElement("div");
      note.className = "msg system";
      note.textContent = "Chat ended.";
      nodes.push(note);
    }
    const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    ui.log.replaceChildren(...nodes);
    if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function messageNode(message, pending) {
    const mine = message.sender.role === "visitor";
    const node = document.createElement("div");
    let side = "theirs";
    if (mine) side = "mine";
    else if (message.sender.role === "system") side = "system";
    node.className = "msg " + side;
    node.setAttribute("data-seq", pending ? "" : String(message.seq));
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    node.append(text);
    const meta = document.createElement("span");
    meta.className = "meta";
    if (mine) {
      if (pending) meta.textContent = "Sending…";
      else meta.textContent = message.seq <= state.agentReadSeq ? "Read" : "Sent";
    } else {
      meta.textContent = message.sender.name || "";
    }
    node.append(meta);
    return node;
  }

  // Socket.IO: loaded from the chat server itself, never from a CDN.

  function loadClient() {
    if (window.io && window.io.Manager) return Promise.resolve(window.io);
    return new Promise((resolve, reject) => {
      const previous = window.io;
      const tag = document.createElement("script");
      tag.src = config.server + "/vendor/socket.io.min.js";
      tag.async = true;
      tag.onload = () => {
        const io = window.io;
        // Leave the page's own global as it was.
        if (previous === undefined) delete window.io;
        else window.io = previous;
        resolve(io);
      };
      tag.onerror = () => reject(new Error("could not load " + tag.src));
      document.head.append(tag);
    });
  }

  function auth() {
    const identity = load("identity", {});
    return { role: "visitor", token: load("token", null), ...identity };
  }

  async function connect() {
    if (state.socket) return;
    const io = await loadClient();
    const socket = io(config.server, { auth: (callback) => callback(auth()) });
    state.socket = socket;

    socket.on("connect", () => {
      state.failedConnects = 0;
      state.connected = true;
      state.everConnected = true;
      render();
    });
    socket.on("disconnect", () => {
      state.connected = false;
      render();
    });
    socket.on("connect_error", (error) => {
      if (error && error.data && error.data.code === "unauthorized") {
        // The stored token is no longer valid: continue as a new visitor.
        save("token", null);
      }
      state.failedConnects += 1;
      render();
    });
    socket.on("session", onSession);
    socket.on("queue_update", (update) => {
      if (!state.chat || state.chat.status === "ended") {
        // Another tab of this visitor opened the chat.
        state.chat = { id: update.chat_id, status: "queued", agent: null };
        state.messages.clear();
        catchUp();
      }
      if (update.chat_id !== state.chat.id) return;
      state.position = update.position;
      state.estimatedWait = update.estimated_wait_s;
      state.agentsOnline = update.agents_online;
      render();
    });
    socket.on("chat_started", ({ chat, messages, has_more }) => {
      setChat(chat);
      addMessages(messages);
      if (has_more) catchUp();
      render();
    });
    socket.on("chat_requeued", ({ chat_id }) => {
      if (!state.chat || state.chat.id !== chat_id) return;
      state.chat = { ...state.chat, status: "queued", agent: null };
      state.agentTyping = false;
      render();
    });
    socket.on("message", (message) => {
      if (!state.chat || message.chat_id !== state.chat.id) return;
      addMessages([message]);
      if (message.sender.role === "agent") state.agentTyping = false;
      render();
      markRead();
    });
    socket.on("typing", ({ chat_id, role, typing }) => {
      if (!state.chat || chat_id !== state.chat.id || role !== "agent") return;
      state.agentTyping = typing;
      render();
    });
    socket.on("read", ({ chat_id, role, seq }) => {
      if (!state.chat || chat_id !== state.chat.id || role !== "agent") return;
      state.agentReadSeq = Math.max(state.agentReadSeq, seq);
      render();
    });
    socket.on("chat_ended", ({ chat_id }) => {
      if (!state.chat || chat_id !== state.chat.id) return;
      state.chat = { ...state.chat, status: "ended" };
      state.agentTyping = false;
      render();
    });
  }

  async function onSession(session) {
    save("token", session.token);
    state.agentsOnline = session.agents_online ?? state.agentsOnline;
    if (session.chat) {
      setChat(session.chat);
      await catchUp();
    } else if (state.chat && state.chat.status !== "ended") {
      // The chat ended while this page was away from the server.
      state.chat = { ...state.chat, status: "ended" };
    }
    render();
    flushOutbox();
  }

  function setChat(chat) {
    if (!state.chat || state.chat.id !== chat.id) {
      state.messages.clear();
      state.agentReadSeq = 0;
      state.position = null;
    }
    state.chat = chat;
    if (chat.status !== "queued") state.position = null;
  }

  function lastSeq() {
    let last = 0;
    for (const seq of state.messages.keys()) last = Math.max(last, seq);
    return last;
  }

  function addMessages(messages) {
    let fresh = 0;
    for (const message of messages) {
      if (!state.messages.has(message.seq)) {
        state.messages.set(message.seq, message);
        if (message.sender.role !== "visitor") fresh += 1;
      }
      state.outbox = state.outbox.filter((item) => item.client_id !== message.client_id);
    }
    save("outbox", state.outbox);
    if (!state.open || document.hidden) state.unread += fresh;
  }

  // Fetch every message after the last one held, page by page.
  async function catchUp() {
    const socket = state.socket;
    if (!socket || !state.chat) return;
    const chatId = state.chat.id;
    for (let page = 0; page < 100; page += 1) {
      let reply;
      try {
        reply = await socket
          .timeout(ACK_TIMEOUT_MS)
          .emitWithAck("history", { chat_id: chatId, after_seq: lastSeq(), limit: 200 });
      } catch (error) {
        return; // The next session event retries.
      }
      if (!reply.ok || !state.chat || state.chat.id !== chatId) return;
      addMessages(reply.messages);
      render();
      if (!reply.has_more) break;
    }
    markRead();
  }

  // Sending: each message waits in the outbox (kept in localStorage) until the
  // server acknowledges it; retries reuse its client_id, so nothing is stored twice.

  function send(text) {
    const kind = !state.chat || state.chat.status === "ended" ? "join" : "message";
    if (kind === "join" && state.chat) {
      state.chat = null;
      state.messages.clear();
    }
    state.outbox.push({ kind, client_id: newClientId(), text });
    save("outbox", state.outbox);
    render();
    flushOutbox();
  }

  async function flushOutbox() {
    const socket = state.socket;
    if (state.flushing || !socket || !socket.connected) return;
    state.flushing = true;
    try {
      while (state.outbox.length > 0 && socket.connected) {
        const item = state.outbox[0];
        const reply = await deliver(socket, item);
        if (reply === null) break; // Timed out: retried on the next connect.
        state.outbox.shift();
        save("outbox", state.outbox);
        if (!reply.ok) {
          showNotice(reply.error.message);
          continue;
        }
        if (reply.chat) {
          setChat(reply.chat);
          state.position = reply.position;
          state.estimatedWait = reply.estimated_wait_s;
          state.agentsOnline = reply.agents_online;
        }
        if (reply.message) addMessages([reply.message]);
        render();
      }
    } finally {
      state.flushing = false;
    }
  }

  async function deliver(socket, item) {
    let event = "message";
    let payload = { chat_id: state.chat && state.chat.id, text: item.text, client_id: item.client_id };
    if (item.kind === "join" || !state.chat) {
      event = "join_queue";
      payload = { message: item.text, client_id: item.client_id, metadata: { page: location.href.slice(0, 500) } };
    }
    try {
      return await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
    } catch (error) {
      return null;
    }
  }

  function showNotice(text) {
    const note = document.createElement("div");
    note.className = "msg system";
    note.textContent = text;
    ui.log.append(note);
  }

  function markRead() {
    const socket = state.socket;
    if (!socket || !socket.connected || !state.chat || !state.open || document.hidden) return;
    let last = 0;
    for (const message of state.messages.values()) {
      if (message.sender.role !== "visitor") last = Math.max(last, message.seq);
    }
    if (last > 0) socket.emit("read", { chat_id: state.chat.id, seq: last });
  }

  let typingTimer = null;
  function noteTyping() {
    const socket = state.socket;
    if (!socket || !socket.connected || !state.chat || state.chat.status === "ended") return;
    if (typingTimer === null) socket.emit("typing", { chat_id: state.chat.id, typing: true });
    clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(typingTimer);
    typingTimer = null;
    const socket = state.socket;
    if (socket && socket.connected && state.chat) {
      socket.emit("typing", { chat_id: state.chat.id, typing: false });
    }
  }

  // Interaction.

  function open() {
    state.open = true;
    state.unread = 0;
    ui.panel.hidden = false;
    ui.launcher.setAttribute("aria-expanded", "true");
    ui.launcher.setAttribute("aria-label", "Close chat");
    render();
    ui.text.focus();
    connect().catch((error) => showNotice(error.message));
    markRead();
  }

  function close() {
    state.open = false;
    ui.panel.hidden = true;
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.setAttribute("aria-label", "Open chat");
    render();
    ui.launcher.focus();
  }

  function toggle() {
    if (state.open) close();
    else open();
  }

  function identify(person) {
    const identity = {};
    if (person && typeof person.name === "string") identity.name = person.name.slice(0, 100);
    if (person && typeof person.email === "string") identity.email = person.email.slice(0, 254);
    save("identity", identity);
    // The server applies name and email at the handshake.
    if (state.socket) state.socket.disconnect().connect();
  }

  async function endChat(reason) {
    const socket = state.socket;
    if (!socket || !socket.connected || !state.chat || state.chat.status === "ended") return;
    stopTyping();
    try {
      await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("end_chat", { chat_id: state.chat.id, reason });
    } catch (error) {
      showNotice("The chat could not be ended. Check the connection and try again.");
    }
  }

  async function reset() {
    // End the open chat first, so no agent keeps waiting on a visitor who is gone.
    await endChat("visitor_reset");
    stopTyping();
    if (state.socket) state.socket.disconnect();
    state.socket = null;
    for (const name of ["token", "identity", "outbox"]) save(name, null);
    Object.assign(state, {
      chat: null,
      connected: false,
      everConnected: false,
      outbox: [],
      unread: 0,
      agentReadSeq: 0,
      position: null,
      agentsOnline: null,
    });
    state.messages.clear();
    render();
    if (state.open) connect();
  }

  ui.launcher.addEventListener("click", toggle);
  ui.close.addEventListener("click", close);
  ui.end.addEventListener("click", () => endChat("visitor_ended"));
  ui.panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.text.value.trim();
    if (!text) return;
    ui.text.value = "";
    stopTyping();
    send(text);
  });
  ui.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  ui.text.addEventListener("input", noteTyping);
  ui.again.addEventListener("click", () => {
    state.chat = null;
    state.messages.clear();
    render();
    ui.text.focus();
  });
  document.addEventListener("visibilitychange", markRead);

  // Public API, replaying commands queued before the script loaded.

  const commands = { open, close, toggle, identify, reset };
  const queued = (window.SioChat && window.SioChat.q) || [];
  const api = function (name, ...args) {
    if (!Object.prototype.hasOwnProperty.call(commands, name)) {
      throw new Error("SioChat: unknown command " + JSON.stringify(name));
    }
    return commands[name](...args);
  };
  Object.assign(api, commands, { __widget: true, config });
  window.SioChat = api;

  function mount() {
    document.body.append(host);
    render();
    for (const args of queued) api(...args);
    // A visitor with a chat in progress reconnects at once, so a reload
    // keeps the conversation going even before the panel is opened.
    if (load("token", null)) connect().catch(() => {});
  }

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
