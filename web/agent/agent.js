/*
 * Agent dashboard: sign in, go ready or away, and hold several chats at once.
 * Text from visitors is always shown with textContent, never as HTML.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "sio-chat-agent:token";
  const ACK_TIMEOUT_MS = 10000;
  const TYPING_IDLE_MS = 3000;
  const BASE_TITLE = document.title;

  const $ = (id) => document.getElementById(id);
  const ui = {
    signin: $("signin"),
    signinForm: $("signin-form"),
    signinError: $("signin-error"),
    app: $("app"),
    agentName: $("agent-name"),
    statusToggle: $("status-toggle"),
    maxChats: $("max-chats"),
    queueInfo: $("queue-info"),
    signout: $("signout"),
    banner: $("banner"),
    chatList: $("chat-list"),
    noChats: $("no-chats"),
    panes: $("panes"),
    template: $("pane-template"),
  };

  const state = {
    socket: null,
    status: "away",
    queue: { queued: 0, oldestWait: null, receivedAt: 0 },
    chats: new Map(), // chat id -> view
    selected: null,
    newChats: 0,
    audio: null,
  };

  // Sign in and out.

  ui.signinForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    ui.signinError.textContent = "";
    const form = new FormData(ui.signinForm);
    let response;
    try {
      response = await fetch("/api/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ email: form.get("email"), password: form.get("password") }),
      });
    } catch (error) {
      ui.signinError.textContent = "The server cannot be reached. Try again.";
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      ui.signinError.textContent =
        response.status === 401 ? "Email or password is wrong." : (body.error && body.error.message) || "Sign-in failed.";
      return;
    }
    localStorage.setItem(TOKEN_KEY, body.token);
    unlockAudio();
    start();
  });

  ui.signout.addEventListener("click", async () => {
    const open = [...state.chats.values()].filter((view) => view.chat.status !== "ended");
    if (open.length > 0 && !confirm(open.length + " chats are still open. Sign out anyway?")) return;
    // Away first, so no new chat is assigned while the connection winds down.
    if (state.socket && state.socket.connected) {
      try {
        await state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("agent_away", {});
      } catch (error) {
        // Signing out goes on: the grace period requeues the chats anyway.
      }
    }
    localStorage.removeItem(TOKEN_KEY);
    if (state.socket) state.socket.disconnect();
    location.reload();
  });

  function showSignin(message) {
    if (state.socket) state.socket.disconnect();
    state.socket = null;
    ui.app.hidden = true;
    ui.signin.hidden = false;
    ui.signinError.textContent = message || "";
    $("email").focus();
  }

  // Socket.IO.

  function start() {
    const token = localStorage.getItem(TOKEN_KEY);
    if (!token) {
      showSignin();
      return;
    }
    ui.signin.hidden = true;
    ui.app.hidden = false;
    const socket = io({ auth: { role: "agent", token } });
    state.socket = socket;

    socket.on("connect", () => {
      ui.banner.hidden = true;
    });
    socket.on("disconnect", () => {
      ui.banner.hidden = false;
    });
    socket.on("connect_error", (error) => {
      if (error && error.data && error.data.code === "unauthorized") {
        localStorage.removeItem(TOKEN_KEY);
        showSignin("Your session has expired. Sign in again.");
      } else {
        ui.banner.hidden = false;
      }
    });
    socket.on("session", onSession);
    socket.on("queue_changed", ({ queued, oldest_wait_s }) => {
      state.queue = { queued, oldestWait: oldest_wait_s, receivedAt: Date.now() };
      renderQueue();
    });
    socket.on("chat_started", ({ chat, messages, has_more }) => {
      const view = upsertChat(chat);
      addMessages(view, messages);
      if (has_more) catchUp(view);
      state.newChats += 1;
      notify();
      if (!state.selected) select(chat.id);
      renderAll();
    });
    socket.on("message", (message) => {
      const view = state.chats.get(message.chat_id);
      if (!view) return;
      addMessages(view, [message]);
      if (message.sender.role === "visitor") {
        view.visitorTyping = false;
        notify();
      }
      markRead(view);
      renderAll();
    });
    socket.on("typing", ({ chat_id, role, typing }) => {
      const view = state.chats.get(chat_id);
      if (!view || role !== "visitor") return;
      view.visitorTyping = typing;
      renderPane(view);
    });
    socket.on("read", ({ chat_id, role, seq }) => {
      const view = state.chats.get(chat_id);
      if (!view || role !== "visitor") return;
      view.visitorReadSeq = Math.max(view.visitorReadSeq, seq);
      renderPane(view);
    });
    socket.on("chat_ended", ({ chat_id, ended_by, reason }) => {
      const view = state.chats.get(chat_id);
      if (!view) return;
      view.chat = { ...view.chat, status: "ended" };
      view.endNote = endNote(ended_by, reason);
      view.visitorTyping = false;
      renderAll();
    });
  }

  async function onSession(session) {
    ui.agentName.textContent = session.name;
    state.status = session.status;
    if (session.max_chats) ui.maxChats.value = String(session.max_chats);
    const assigned = new Set(session.chats.map((chat) => chat.id));
    for (const view of state.chats.values()) {
      if (!assigned.has(view.chat.id) && view.chat.status !== "ended") {
        // Requeued or ended while this page was disconnected.
        view.chat = { ...view.chat, status: "ended" };
        view.endNote = "This chat is no longer assigned to you.";
      }
    }
    for (const chat of session.chats) upsertChat(chat);
    renderAll();
    await Promise.all(session.chats.map((chat) => catchUp(state.chats.get(chat.id))));
    renderAll();
  }

  function endNote(endedBy, reason) {
    if (endedBy === "system" && reason === "visitor_left") return "The visitor left.";
    if (endedBy === "visitor") return "The visitor ended the chat.";
    if (endedBy === "agent") return "You ended the chat.";
    return "The chat has ended.";
  }

  // Chats and messages.

  function upsertChat(chat) {
    let view = state.chats.get(chat.id);
    if (!view) {
      view = {
        chat,
        messages: new Map(),
        readSeq: 0,
        visitorReadSeq: 0,
        visitorTyping: false,
        endNote: "",
        pane: createPane(chat.id),
        typingTimer: null,
      };
      state.chats.set(chat.id, view);
    } else {
      view.chat = chat;
    }
    return view;
  }

  function lastSeq(view) {
    let last = 0;
    for (const seq of view.messages.keys()) last = Math.max(last, seq);
    return last;
  }

  function addMessages(view, messages) {
    for (const message of messages) view.messages.set(message.seq, message);
  }

  function unreadCount(view) {
    let count = 0;
    for (const message of view.messages.values()) {
      if (message.sender.role === "visitor" && message.seq > view.readSeq) count += 1;
    }
    return count;
  }

  async function catchUp(view) {
    const socket = state.socket;
    if (!socket || !view) return;
    for (let page = 0; page < 100; page += 1) {
      let reply;
      try {
        reply = await socket
          .timeout(ACK_TIMEOUT_MS)
          .emitWithAck("history", { chat_id: view.chat.id, after_seq: lastSeq(view), limit: 200 });
      } catch (error) {
        return;
      }
      if (!reply.ok) return;
      addMessages(view, reply.messages);
      if (!reply.has_more) break;
    }
    renderAll();
  }

  function markRead(view) {
    const socket = state.socket;
    if (!socket || !socket.connected || document.hidden || state.selected !== view.chat.id) return;
    let last = 0;
    for (const message of view.messages.values()) {
      if (message.sender.role === "visitor") last = Math.max(last, message.seq);
    }
    if (last > view.readSeq) {
      view.readSeq = last;
      socket.emit("read", { chat_id: view.chat.id, seq: last });
    }
  }

  function select(chatId) {
    state.selected = chatId;
    state.newChats = 0;
    const view = state.chats.get(chatId);
    if (view) markRead(view);
    renderAll();
  }

  // Status and capacity.

  ui.statusToggle.addEventListener("click", async () => {
    unlockAudio();
    const socket = state.socket;
    if (!socket) return;
    const reply =
      state.status === "ready"
        ? await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("agent_away", {})
        : await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("agent_ready", { max_chats: capacity() });
    if (reply.ok) state.status = reply.status;
    renderStatus();
  });

  ui.maxChats.addEventListener("change", async () => {
    ui.maxChats.value = String(capacity());
    if (state.status === "ready" && state.socket) {
      await state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("agent_ready", { max_chats: capacity() });
    }
  });

  function capacity() {
    const value = Number.parseInt(ui.maxChats.value, 10);
    return Number.isFinite(value) ? Math.min(50, Math.max(1, value)) : 1;
  }

  // Rendering.

  function renderAll() {
    renderStatus();
    renderQueue();
    renderList();
    for (const view of state.chats.values()) renderPane(view);
    renderTitle();
  }

  function renderStatus() {
    const ready = state.status === "ready";
    ui.statusToggle.textContent = ready ? "Ready" : "Away";
    ui.statusToggle.setAttribute("aria-pressed", String(ready));
    ui.statusToggle.setAttribute("aria-label", ready ? "Status: ready. Switch to away" : "Status: away. Switch to ready");
  }

  function renderQueue() {
    const { queued, oldestWait, receivedAt } = state.queue;
    if (!queued) {
      ui.queueInfo.textContent = "Queue empty";
      return;
    }
    const wait = oldestWait === null ? null : oldestWait + (Date.now() - receivedAt) / 1000;
    ui.queueInfo.textContent =
      queued + " waiting" + (wait === null ? "" : " · longest " + formatDuration(wait));
  }

  function formatDuration(seconds) {
    const whole = Math.floor(seconds);
    if (whole < 60) return whole + " s";
    return Math.floor(whole / 60) + " min " + (whole % 60) + " s";
  }

  function renderList() {
    const items = [];
    for (const view of state.chats.values()) {
      const item = document.createElement("li");
      if (view.chat.status === "ended") item.className = "ended";
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-current", String(state.selected === view.chat.id));
      const name = document.createElement("span");
      name.textContent = view.chat.visitor.name + (view.chat.status === "ended" ? " (ended)" : "");
      button.append(name);
      const unread = unreadCount(view);
      if (unread > 0) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(unread);
        badge.setAttribute("aria-label", unread + " unread");
        button.append(badge);
      }
      button.addEventListener("click", () => {
        select(view.chat.id);
        view.pane.querySelector("textarea").focus();
      });
      item.append(button);
      items.push(item);
    }
    ui.chatList.replaceChildren(...items);
    ui.noChats.hidden = items.length > 0;
    ui.noChats.textContent =
      state.status === "ready" ? "No chats yet. New chats appear here." : "No chats yet. Mark yourself ready to take one.";
  }

  function renderTitle() {
    let unread = 0;
    for (const view of state.chats.values()) unread += unreadCount(view);
    const count = unread + state.newChats;
    document.title = count > 0 ? "(" + count + ") " + BASE_TITLE : BASE_TITLE;
  }

  function createPane(chatId) {
    const pane = ui.template.content.firstElementChild.cloneNode(true);
    pane.dataset.chatId = chatId;
    const textarea = pane.querySelector("textarea");
    const label = pane.querySelector("label");
    const fieldId = "reply-" + chatId;
    textarea.id = fieldId;
    label.htmlFor = fieldId;
    pane.addEventListener("focusin", () => {
      if (state.selected !== chatId) select(chatId);
    });
    pane.addEventListener("click", () => {
      if (state.selected !== chatId) select(chatId);
    });
    pane.querySelector(".composer").addEventListener("submit", (event) => {
      event.preventDefault();
      sendReply(chatId, textarea);
    });
    textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendReply(chatId, textarea);
      }
    });
    textarea.addEventListener("input", () => noteTyping(chatId));
    pane.querySelector(".end").addEventListener("click", () => endChat(chatId));
    pane.querySelector(".dismiss").addEventListener("click", () => dismiss(chatId));
    ui.panes.append(pane);
    return pane;
  }

  function renderPane(view) {
    const pane = view.pane;
    const chat = view.chat;
    const ended = chat.status === "ended";
    pane.classList.toggle("selected", state.selected === chat.id);
    pane.setAttribute("aria-label", "Chat with " + chat.visitor.name);
    pane.querySelector(".visitor").textContent = chat.visitor.name;
    pane.querySelector(".state").textContent = ended ? view.endNote || "Ended" : "Active";
    pane.querySelector("label").textContent = "Reply to " + chat.visitor.name;
    pane.querySelector(".typing").textContent = view.visitorTyping ? chat.visitor.name + " is typing…" : "";
    pane.querySelector(".end").hidden = ended;
    pane.querySelector(".dismiss").hidden = !ended;
    pane.querySelector(".composer").hidden = ended;

    const log = pane.querySelector(".log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const nodes = [];
    for (const message of [...view.messages.values()].sort((a, b) => a.seq - b.seq)) {
      const node = document.createElement("div");
      node.className = "msg " + message.sender.role;
      node.dataset.seq = String(message.seq);
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = message.text;
      const meta = document.createElement("span");
      meta.className = "meta";
      if (message.sender.role === "agent") {
        meta.textContent = message.seq <= view.visitorReadSeq ? "Read" : "Sent";
      } else {
        meta.textContent = message.sender.name;
      }
      node.append(text, meta);
      nodes.push(node);
    }
    if (ended) {
      const note = document.createElement("div");
      note.className = "msg system";
      note.textContent = view.endNote || "The chat has ended.";
      nodes.push(note);
    }
    log.replaceChildren(...nodes);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // Actions in a chat.

  async function sendReply(chatId, textarea) {
    const view = state.chats.get(chatId);
    const text = textarea.value.trim();
    if (!view || !text || !state.socket) return;
    textarea.value = "";
    stopTyping(view);
    const clientId = crypto.randomUUID();
    // Retry with the same client_id until the server acknowledges it, so a
    // reply written during a drop is stored once when the connection returns.
    for (let attempt = 0; attempt < 30; attempt += 1) {
      try {
        const reply = await state.socket
          .timeout(ACK_TIMEOUT_MS)
          .emitWithAck("message", { chat_id: chatId, text, client_id: clientId });
        if (reply.ok) addMessages(view, [reply.message]);
        else alertInPane(view, reply.error.message);
        renderAll();
        return;
      } catch (error) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
    alertInPane(view, "The reply could not be sent. Check the connection.");
  }

  function alertInPane(view, text) {
    const note = document.createElement("div");
    note.className = "msg system";
    note.setAttribute("role", "alert");
    note.textContent = text;
    view.pane.querySelector(".log").append(note);
  }

  function noteTyping(chatId) {
    const view = state.chats.get(chatId);
    if (!view || !state.socket || view.chat.status === "ended") return;
    if (view.typingTimer === null) state.socket.emit("typing", { chat_id: chatId, typing: true });
    clearTimeout(view.typingTimer);
    view.typingTimer = setTimeout(() => stopTyping(view), TYPING_IDLE_MS);
  }

  function stopTyping(view) {
    if (view.typingTimer === null) return;
    clearTimeout(view.typingTimer);
    view.typingTimer = null;
    if (state.socket) state.socket.emit("typing", { chat_id: view.chat.id, typing: false });
  }

  async function endChat(chatId) {
    const view = state.chats.get(chatId);
    if (!view || !state.socket) return;
    if (!confirm("End the chat with " + view.chat.visitor.name + "?")) return;
    stopTyping(view);
    const reply = await state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("end_chat", { chat_id: chatId });
    if (!reply.ok) alertInPane(view, reply.error.message);
  }

  function dismiss(chatId) {
    const view = state.chats.get(chatId);
    if (!view) return;
    view.pane.remove();
    state.chats.delete(chatId);
    if (state.selected === chatId) state.selected = null;
    renderAll();
  }

  // Signals: the tab title always, a short tone where the browser allows sound.

  function unlockAudio() {
    try {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!state.audio && Context) state.audio = new Context();
      if (state.audio && state.audio.state === "suspended") state.audio.resume();
    } catch (error) {
      state.audio = null;
    }
  }

  function notify() {
    renderTitle();
    const audio = state.audio;
    if (!audio || audio.state !== "running") return;
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.frequency.value = 880;
    gain.gain.value = 0.05;
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start();
    oscillator.stop(audio.currentTime + 0.15);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    const view = state.selected && state.chats.get(state.selected);
    if (view) markRead(view);
    state.newChats = 0;
    renderAll();
  });
  setInterval(renderQueue, 1000);

  start();
})();
