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
    adminLink: $("admin-link"),
    statusToggle: $("status-toggle"),
    maxChats: $("max-chats"),
    queueInfo: $("queue-info"),
    signout: $("signout"),
    banner: $("banner"),
    chatList: $("chat-list"),
    noChats: $("no-chats"),
    panes: $("panes"),
    template: $("pane-template"),
    departments: $("departments"),
    departmentBoxes: $("department-boxes"),
    statusError: $("status-error"),
    notice: $("notice"),
    viewButtons: {
      chats: $("view-chats"),
      missed: $("view-missed"),
      history: $("view-history"),
      canned: $("view-canned"),
    },
    missed: $("missed"),
    missedCount: $("missed-count"),
    missedRefresh: $("missed-refresh"),
    missedError: $("missed-error"),
    missedEmpty: $("missed-empty"),
    missedList: $("missed-list"),
    history: $("history"),
    historyRefresh: $("history-refresh"),
    historyError: $("history-error"),
    historyEmpty: $("history-empty"),
    historyList: $("history-list"),
    historyMore: $("history-more"),
    canned: $("canned"),
    cannedForm: $("canned-form"),
    cannedShortcut: $("canned-shortcut"),
    cannedText: $("canned-text"),
    cannedError: $("canned-error"),
    cannedSubmit: $("canned-submit"),
    cannedCancel: $("canned-cancel"),
    cannedEmpty: $("canned-empty"),
    cannedList: $("canned-list"),
  };
  const SHORTCUT_PATTERN = /^[a-z0-9][a-z0-9_-]{0,31}$/;
  const MAX_SUGGESTIONS = 6;
  const MISSED_POLL_MS = 60000;
  const CANNED_REFRESH_MS = 30000;

  const state = {
    socket: null,
    status: "away",
    queue: { queued: 0, oldestWait: null, receivedAt: 0, byDepartment: [] },
    chats: new Map(), // chat id -> view
    selected: null,
    newChats: 0,
    audio: null,
    agentId: null,
    departments: [], // [{id, name}] configured on the server
    view: "chats", // which section the main area shows: chats, missed, history or canned
    canned: [], // canned responses, sorted by shortcut
    editingCanned: null, // the canned response the form is editing, or null when adding
    cannedLoadedAt: 0, // Date.now() of the last canned response load
    missed: [], // [{chat, messages}] for the Missed list
    history: [], // this agent's ended chats shown in History, newest first
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
      const code = error && error.data ? error.data.code : null;
      if (code === "unauthorized") {
        localStorage.removeItem(TOKEN_KEY);
        showSignin("Your session has expired. Sign in again.");
        return;
      }
      ui.banner.hidden = false;
      // socket.io-client does not reconnect after the server refused the
      // handshake, so retry after the wait that a rate limit sends.
      if (socket.active || (code !== "rate_limited" && code !== "internal_error")) return;
      const delay = retryDelayMs(code === "rate_limited" ? error.data.retry_after_s : 5);
      setTimeout(() => {
        if (state.socket === socket && !socket.connected) socket.connect();
      }, delay);
    });
    loadCanned();
    loadMissed(false);
    socket.on("session", onSession);
    socket.on("queue_changed", ({ queued, oldest_wait_s, departments }) => {
      state.queue = {
        queued,
        oldestWait: oldest_wait_s,
        receivedAt: Date.now(),
        byDepartment: Array.isArray(departments) ? departments : [],
      };
      renderQueue();
    });
    socket.on("chat_started", ({ chat, messages, has_more, notes, transferred_from }) => {
      const view = upsertChat(chat);
      addMessages(view, messages);
      addNotes(view, notes || []);
      if (transferred_from) view.transferredFrom = transferred_from;
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
    // An administrator changed this account, or signed it out.
    socket.on("agent_updated", (agent) => {
      ui.agentName.textContent = agent.name;
      ui.adminLink.hidden = !agent.is_admin;
      if (agent.max_chats) ui.maxChats.value = String(agent.max_chats);
      if (agent.serving !== undefined) checkServing(agent.serving);
      if (agent.status === "ready" || agent.status === "away") state.status = agent.status;
      renderStatus();
    });
    socket.on("signed_out", ({ reason }) => {
      localStorage.removeItem(TOKEN_KEY);
      showSignin(
        reason === "disabled"
          ? "An administrator disabled this account."
          : "The password of this account changed. Sign in again.",
      );
    });
    // Notes written in this agent's other tabs.
    socket.on("note", (note) => {
      const view = state.chats.get(note.chat_id);
      if (!view) return;
      addNotes(view, [note]);
      renderPane(view);
    });
    socket.on("chat_removed", ({ chat_id, reason, to }) => {
      const view = state.chats.get(chat_id);
      if (!view) return;
      removeChat(view, removedNote(view, reason, to));
    });
    socket.on("chat_rated", ({ chat_id, rating }) => {
      const view = state.chats.get(chat_id);
      if (!view) {
        showNotice("A visitor rated an earlier chat " + rating.score + " of 5.");
        return;
      }
      view.chat = { ...view.chat, rating };
      renderPane(view);
      showNotice(view.chat.visitor.name + " rated the chat " + rating.score + " of 5.");
    });
  }

  function removedNote(view, reason, to) {
    const name = view.chat.visitor.name;
    if (reason === "no_reply") {
      return "The chat with " + name + " went back to the queue: it had no reply in time.";
    }
    if (reason === "agent_left") {
      return "The chat with " + name + " went back to the queue: you were offline too long.";
    }
    if (to && to.name) return "The chat with " + name + " was transferred to " + to.name + ".";
    return "The chat with " + name + " went back to the queue for another agent.";
  }

  async function onSession(session) {
    ui.agentName.textContent = session.name;
    ui.adminLink.hidden = !session.is_admin;
    state.agentId = session.agent_id;
    state.status = session.status;
    if (session.max_chats) ui.maxChats.value = String(session.max_chats);
    setDepartments(session.departments || [], session.serving);
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
    await Promise.all(
      session.chats.map(async (chat) => {
        const view = state.chats.get(chat.id);
        await Promise.all([catchUp(view), loadNotes(view)]);
      }),
    );
    renderAll();
  }

  function endNote(endedBy, reason) {
    if (endedBy === "system" && reason === "visitor_left") return "The visitor left.";
    if (endedBy === "system" && reason === "inactive") return "The visitor was idle, so the chat ended.";
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
        notes: new Map(), // note id -> Note
        transferredFrom: null, // {id, name} of the agent who transferred the chat here
        suggestions: [], // canned responses that match the "/shortcut" being typed
        suggestionIndex: 0,
        outgoing: Promise.resolve(), // the last reply or note in flight
        pane: createPane(chat.id),
        typingTimer: null,
      };
      state.chats.set(chat.id, view);
    } else {
      view.chat = chat;
    }
    // The marks stored on the server, so that a reloaded page shows what was read.
    if (chat.read) {
      view.readSeq = Math.max(view.readSeq, chat.read.agent || 0);
      view.visitorReadSeq = Math.max(view.visitorReadSeq, chat.read.visitor || 0);
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

  function addNotes(view, notes) {
    for (const note of notes) view.notes.set(note.id, note);
  }

  async function loadNotes(view) {
    if (!view || !state.socket) return;
    try {
      const reply = await state.socket
        .timeout(ACK_TIMEOUT_MS)
        .emitWithAck("list_notes", { chat_id: view.chat.id });
      if (reply.ok) addNotes(view, reply.notes);
    } catch (error) {
      // The next session event loads them again.
    }
  }

  // Remove a chat that is no longer assigned to this agent (transferred or requeued).
  function removeChat(view, notice) {
    const chatId = view.chat.id;
    if (state.chats.get(chatId) !== view) return;
    const hadFocus = view.pane.contains(document.activeElement);
    stopTyping(view);
    view.pane.remove();
    state.chats.delete(chatId);
    if (state.selected === chatId) state.selected = null;
    showNotice(notice);
    renderAll();
    // Keyboard users keep their place: the notice takes the focus the pane had.
    if (hadFocus) ui.notice.focus();
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = false;
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
        : await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("agent_ready", readyPayload());
    showStatusReply(reply);
    if (reply.ok) state.status = reply.status;
    renderStatus();
  });

  ui.maxChats.addEventListener("change", async () => {
    ui.maxChats.value = String(capacity());
    await updateReady();
  });

  ui.departmentBoxes.addEventListener("change", updateReady);

  // Send the new capacity and departments at once while ready. When away,
  // they go with the next agent_ready.
  async function updateReady() {
    if (state.status !== "ready" || !state.socket) return;
    const reply = await state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("agent_ready", readyPayload());
    showStatusReply(reply);
  }

  function showStatusReply(reply) {
    ui.statusError.textContent = reply.ok ? "" : reply.error.message;
    if (reply.ok && reply.serving !== undefined) checkServing(reply.serving);
  }

  function readyPayload() {
    const payload = { max_chats: capacity() };
    // An empty list (no box checked) means every department.
    if (state.departments.length > 0) payload.departments = chosenDepartments();
    return payload;
  }

  function capacity() {
    const value = Number.parseInt(ui.maxChats.value, 10);
    return Number.isFinite(value) ? Math.min(50, Math.max(1, value)) : 1;
  }

  function setDepartments(departments, serving) {
    state.departments = departments;
    const boxes = departments.map((department) => {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = department.id;
      label.append(box, " " + (department.name || department.id));
      return label;
    });
    ui.departmentBoxes.replaceChildren(...boxes);
    ui.departments.hidden = departments.length === 0;
    checkServing(serving);
  }

  function checkServing(serving) {
    const served = new Set(serving || []);
    for (const box of ui.departmentBoxes.querySelectorAll("input")) box.checked = served.has(box.value);
  }

  function chosenDepartments() {
    return [...ui.departmentBoxes.querySelectorAll("input:checked")].map((box) => box.value);
  }

  function departmentName(id) {
    const department = state.departments.find((item) => item.id === id);
    return department ? department.name || department.id : id;
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
      queued + " waiting" + (wait === null ? "" : " · longest " + formatDuration(wait)) + queueBreakdown();
  }

  // Return the waiting chats per department, such as " (Sales 2, General 1)",
  // or "" on a server with only the general queue.
  function queueBreakdown() {
    const counts = state.queue.byDepartment || [];
    if (state.departments.length === 0 || counts.length === 0) return "";
    const parts = counts.map(
      (entry) => (entry.department ? departmentName(entry.department) : "General") + " " + entry.queued,
    );
    return " (" + parts.join(", ") + ")";
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
        showView("chats");
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
    const fieldId = "reply-" + chatId;
    textarea.id = fieldId;
    pane.querySelector(".reply-label").htmlFor = fieldId;
    const target = pane.querySelector(".transfer-target");
    target.id = "transfer-" + chatId;
    pane.querySelector(".transfer-label").htmlFor = target.id;
    const suggestions = pane.querySelector(".suggestions");
    suggestions.id = "suggestions-" + chatId;
    textarea.setAttribute("aria-controls", suggestions.id);

    pane.addEventListener("focusin", () => {
      if (state.selected !== chatId) select(chatId);
    });
    pane.addEventListener("click", () => {
      if (state.selected !== chatId) select(chatId);
    });

    pane.querySelector(".composer").addEventListener("submit", (event) => {
      event.preventDefault();
      sendFromComposer(chatId, textarea);
    });
    textarea.addEventListener("keydown", (event) => {
      if (handleSuggestionKey(chatId, event)) return;
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendFromComposer(chatId, textarea);
      }
    });
    textarea.addEventListener("input", () => {
      noteTyping(chatId);
      updateSuggestions(chatId);
    });
    textarea.addEventListener("blur", () => {
      // Let a click on a suggestion land before the list is hidden.
      setTimeout(() => hideSuggestions(chatId), 200);
    });
    pane.querySelector(".note-toggle").addEventListener("change", () => {
      const view = state.chats.get(chatId);
      if (view) renderPane(view);
      textarea.focus();
    });

    pane.querySelector(".transfer").addEventListener("click", () => toggleTransfer(chatId));
    pane.querySelector(".transfer-cancel").addEventListener("click", () => closeTransfer(chatId));
    pane.querySelector(".transfer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      transferChat(chatId);
    });
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
    const origin = pane.querySelector(".origin");
    origin.hidden = !view.transferredFrom;
    origin.textContent = view.transferredFrom ? "Transferred from " + view.transferredFrom.name : "";
    const rating = pane.querySelector(".rating");
    rating.hidden = !chat.rating;
    rating.textContent = chat.rating ? ratingText(chat.rating) : "";
    pane.querySelector(".typing").textContent = view.visitorTyping ? chat.visitor.name + " is typing…" : "";
    pane.querySelector(".transfer").hidden = ended;
    if (ended) pane.querySelector(".transfer-form").hidden = true;
    pane.querySelector(".end").hidden = ended;
    pane.querySelector(".dismiss").hidden = !ended;
    renderComposer(view);

    const log = pane.querySelector(".log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const nodes = timeline(view).map((entry) =>
      entry.note ? noteNode(entry.note) : messageNode(view, entry.message),
    );
    if (ended) {
      const note = document.createElement("div");
      note.className = "msg system";
      note.textContent = view.endNote || "The chat has ended.";
      nodes.push(note);
    }
    log.replaceChildren(...nodes);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // The server accepts notes in any status, so an ended chat keeps a
  // composer for notes only.
  function renderComposer(view) {
    const pane = view.pane;
    const ended = view.chat.status === "ended";
    const toggle = pane.querySelector(".note-toggle");
    if (ended) toggle.checked = true;
    toggle.disabled = ended;
    const noting = toggle.checked;
    pane.querySelector(".composer").classList.toggle("noting", noting);
    pane.querySelector(".send").textContent = noting ? "Add note" : "Send";
    const name = view.chat.visitor.name;
    pane.querySelector(".reply-label").textContent = noting
      ? "Internal note about the chat with " + name
      : "Reply to " + name;
    pane.querySelector("textarea").placeholder = noting
      ? "Internal note: only agents see it…"
      : "Write a reply… (/ for canned responses)";
  }

  // Merge messages and notes into one list, oldest first. Messages keep seq order.
  function timeline(view) {
    const entries = [];
    for (const message of view.messages.values()) {
      entries.push({ at: message.created_at || "", seq: message.seq, message });
    }
    for (const note of view.notes.values()) {
      entries.push({ at: note.created_at || "", seq: Infinity, note });
    }
    entries.sort((a, b) => {
      if (a.message && b.message) return a.seq - b.seq;
      if (a.at !== b.at) return a.at < b.at ? -1 : 1;
      return a.seq - b.seq;
    });
    return entries;
  }

  function messageNode(view, message) {
    const node = document.createElement("div");
    node.className = "msg " + message.sender.role;
    node.dataset.seq = String(message.seq);
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    const meta = document.createElement("span");
    meta.className = "meta";
    if (message.sender.role === "agent") {
      const read = message.seq <= view.visitorReadSeq ? "Read" : "Sent";
      // After a transfer the log also contains the previous agent's replies.
      const mine = !message.sender.id || message.sender.id === state.agentId;
      meta.textContent = mine ? read : message.sender.name + " · " + read;
    } else {
      meta.textContent = message.sender.name;
    }
    node.append(text, meta);
    return node;
  }

  function noteNode(note) {
    const node = document.createElement("div");
    node.className = "msg note";
    node.dataset.noteId = note.id;
    const label = document.createElement("span");
    label.className = "note-label";
    label.textContent = "Internal note";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = note.text;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = note.author ? note.author.name : "";
    node.append(label, text, meta);
    return node;
  }

  function ratingText(rating) {
    const stars = "★".repeat(rating.score) + "☆".repeat(Math.max(0, 5 - rating.score));
    let text = "Rated " + stars + " " + rating.score + " of 5";
    if (rating.comment) text += ": “" + rating.comment + "”";
    return text;
  }

  // Actions in a chat.

  function sendFromComposer(chatId, textarea) {
    const view = state.chats.get(chatId);
    if (!view) return;
    hideSuggestions(chatId);
    if (view.pane.querySelector(".note-toggle").checked) sendNote(chatId, textarea);
    else sendReply(chatId, textarea);
  }

  async function sendReply(chatId, textarea) {
    const view = state.chats.get(chatId);
    const text = textarea.value.trim();
    if (!view || !text || !state.socket) return;
    textarea.value = "";
    stopTyping(view);
    const payload = { chat_id: chatId, text, client_id: crypto.randomUUID() };
    const reply = await inOrder(view, () => emitUntilAcknowledged("message", payload));
    if (reply === null) alertInPane(view, "The reply could not be sent. Check the connection.");
    else if (reply.ok) addMessages(view, [reply.message]);
    else alertInPane(view, reply.error.message);
    renderAll();
  }

  // Send an internal note, which the server relays only to agents.
  async function sendNote(chatId, textarea) {
    const view = state.chats.get(chatId);
    const text = textarea.value.trim();
    if (!view || !text || !state.socket) return;
    textarea.value = "";
    const payload = { chat_id: chatId, text, client_id: crypto.randomUUID() };
    const reply = await inOrder(view, () => emitUntilAcknowledged("note", payload));
    if (reply === null) alertInPane(view, "The note could not be saved. Check the connection.");
    else if (reply.ok) addNotes(view, [reply.note]);
    else alertInPane(view, reply.error.message);
    renderAll();
  }

  // Run `send` after the chat's previous reply or note is acknowledged, so a
  // retry after a timeout or a rate limit cannot overtake a later message.
  function inOrder(view, send) {
    const result = view.outgoing.then(send);
    view.outgoing = result.catch(() => null);
    return result;
  }

  // Emit until the server acknowledges, up to 30 attempts, and return the
  // reply, or null when every attempt timed out. The payload keeps its
  // client_id, so text written during a drop is stored once when the
  // connection returns. A rate_limited reply waits the time the server sends.
  async function emitUntilAcknowledged(event, payload) {
    for (let attempt = 0; attempt < 30; attempt += 1) {
      let reply;
      try {
        reply = await state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
      } catch (error) {
        await sleep(1000);
        continue;
      }
      if (reply.ok || reply.error.code !== "rate_limited") return reply;
      await sleep(retryDelayMs(reply.error.retry_after_s));
    }
    return null;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // Milliseconds to wait before a retry that the server asked for in whole
  // seconds, kept between 1 s and 5 min.
  function retryDelayMs(seconds) {
    const wait = Number.isFinite(seconds) ? seconds : 1;
    return Math.min(300, Math.max(1, wait)) * 1000;
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

  // Transfer to another agent or to a department's queue.

  function toggleTransfer(chatId) {
    const view = state.chats.get(chatId);
    if (!view) return;
    if (view.pane.querySelector(".transfer-form").hidden) openTransfer(view);
    else closeTransfer(chatId);
  }

  async function openTransfer(view) {
    const form = view.pane.querySelector(".transfer-form");
    const select = form.querySelector(".transfer-target");
    const error = form.querySelector(".transfer-error");
    form.hidden = false;
    view.pane.querySelector(".transfer").setAttribute("aria-expanded", "true");
    error.textContent = "";
    select.replaceChildren(new Option("Loading agents…", ""));
    select.focus();
    let agents = [];
    try {
      agents = (await api("GET", "/api/agents")).agents || [];
    } catch (failure) {
      error.textContent = "The agent list could not be loaded: " + failure.message;
    }
    fillTransferTargets(view, select, agents);
  }

  function fillTransferTargets(view, select, agents) {
    const options = [new Option("Choose an agent or a department", "")];

    const people = document.createElement("optgroup");
    people.label = "Agents";
    // Agents who can take the chat come first, then the others, by name.
    const others = agents
      .filter((agent) => agent.id !== state.agentId)
      .map((agent) => ({ ...agent, problem: agentProblem(view, agent) }))
      .sort((a, b) => Number(a.problem !== "") - Number(b.problem !== "") || a.name.localeCompare(b.name));
    for (const agent of others) {
      const problem = agent.problem;
      const load = agent.load + " of " + agent.max_chats + " chats";
      const option = new Option(agent.name + " (" + (problem || agent.status + ", " + load) + ")", "agent:" + agent.id);
      option.disabled = Boolean(problem);
      people.append(option);
    }
    if (others.length === 0) {
      const none = new Option("No other agents", "");
      none.disabled = true;
      people.append(none);
    }
    options.push(people);

    // "department:" with no id stands for the general queue, sent as null.
    const queues = document.createElement("optgroup");
    queues.label = "Queues";
    queues.append(new Option("General queue", "department:"));
    for (const department of state.departments) {
      queues.append(new Option(department.name || department.id, "department:" + department.id));
    }
    options.push(queues);
    select.replaceChildren(...options);
  }

  // Return why an agent cannot take this chat now, or "" when it can. The
  // server checks again, so a stale list only costs an error message.
  function agentProblem(view, agent) {
    if (!agent.online) return "offline";
    if (agent.status !== "ready") return agent.status === "away" ? "away" : agent.status;
    if (agent.load >= agent.max_chats) return "full, " + agent.load + " of " + agent.max_chats + " chats";
    const department = view.chat.department;
    if (department && Array.isArray(agent.serving) && !agent.serving.includes(department)) {
      return "does not serve " + departmentName(department);
    }
    return "";
  }

  function closeTransfer(chatId) {
    const view = state.chats.get(chatId);
    if (!view) return;
    view.pane.querySelector(".transfer-form").hidden = true;
    const button = view.pane.querySelector(".transfer");
    button.setAttribute("aria-expanded", "false");
    button.focus();
  }

  async function transferChat(chatId) {
    const view = state.chats.get(chatId);
    if (!view || !state.socket) return;
    const form = view.pane.querySelector(".transfer-form");
    const error = form.querySelector(".transfer-error");
    const [kind, ...rest] = form.querySelector(".transfer-target").value.split(":");
    const id = rest.join(":");
    if (kind !== "department" && !id) {
      error.textContent = "Choose an agent or a department first.";
      return;
    }

    const payload = { chat_id: chatId };
    if (kind === "agent") payload.agent_id = id;
    else payload.department = id || null;
    const button = form.querySelector(".transfer-send");
    button.disabled = true;
    error.textContent = "";
    let reply;
    try {
      reply = await state.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("transfer_chat", payload);
    } catch (failure) {
      error.textContent = "The server did not answer. Check the connection and try again.";
      return;
    } finally {
      button.disabled = false;
    }

    if (!reply.ok) {
      error.textContent = reply.error.message;
      return;
    }
    const to = reply.chat && reply.chat.agent && kind === "agent" ? reply.chat.agent : null;
    removeChat(view, removedNote(view, "transferred", to));
    // The disabled button lost the focus, so move it here by hand.
    ui.notice.focus();
  }

  // Canned responses: "/shortcut" and Tab in a composer insert the stored text.

  async function loadCanned() {
    state.cannedLoadedAt = Date.now();
    try {
      state.canned = (await api("GET", "/api/canned-responses")).canned_responses || [];
      ui.cannedError.textContent = "";
    } catch (failure) {
      ui.cannedError.textContent = "Canned responses could not be loaded: " + failure.message;
    }
    renderCanned();
  }

  // Return the "/word" right before the caret, or null.
  function shortcutAtCaret(textarea) {
    const before = textarea.value.slice(0, textarea.selectionStart);
    const match = /(?:^|\s)\/([a-z0-9_-]*)$/.exec(before);
    return match ? { prefix: match[1], end: before.length } : null;
  }

  function updateSuggestions(chatId) {
    const view = state.chats.get(chatId);
    if (!view) return;
    const textarea = view.pane.querySelector("textarea");
    const typed = shortcutAtCaret(textarea);
    if (typed && Date.now() - state.cannedLoadedAt > CANNED_REFRESH_MS) {
      // Pick up responses other agents added since the last load.
      loadCanned().then(() => {
        if (document.activeElement === textarea) updateSuggestions(chatId);
      });
    }
    view.suggestions = typed
      ? state.canned.filter((item) => item.shortcut.startsWith(typed.prefix)).slice(0, MAX_SUGGESTIONS)
      : [];
    view.suggestionIndex = 0;
    renderSuggestions(view);
  }

  function hideSuggestions(chatId) {
    const view = state.chats.get(chatId);
    if (!view || view.suggestions.length === 0) return;
    view.suggestions = [];
    renderSuggestions(view);
  }

  function renderSuggestions(view) {
    const list = view.pane.querySelector(".suggestions");
    const textarea = view.pane.querySelector("textarea");
    const items = view.suggestions.map((item, index) => {
      const entry = document.createElement("li");
      entry.id = list.id + "-" + index;
      entry.setAttribute("role", "option");
      entry.setAttribute("aria-selected", String(index === view.suggestionIndex));
      const shortcut = document.createElement("strong");
      shortcut.textContent = "/" + item.shortcut;
      const preview = document.createElement("span");
      preview.textContent = item.text;
      entry.append(shortcut, " ", preview);
      entry.addEventListener("mousedown", (event) => {
        event.preventDefault(); // Keep the focus in the textarea.
        insertCanned(view, item);
      });
      return entry;
    });
    list.replaceChildren(...items);
    list.hidden = items.length === 0;
    if (items.length > 0) {
      textarea.setAttribute("aria-activedescendant", items[view.suggestionIndex].id);
    } else {
      textarea.removeAttribute("aria-activedescendant");
    }
  }

  // Handle a key while suggestions are shown: Tab inserts the highlighted
  // response, arrows move, Escape closes the list. Return true when handled.
  function handleSuggestionKey(chatId, event) {
    const view = state.chats.get(chatId);
    if (!view || view.suggestions.length === 0) return false;
    if (event.key === "Tab" && !event.shiftKey) {
      event.preventDefault();
      insertCanned(view, view.suggestions[view.suggestionIndex]);
      return true;
    }
    const step = { ArrowDown: 1, ArrowUp: -1 }[event.key];
    if (step) {
      event.preventDefault();
      const count = view.suggestions.length;
      view.suggestionIndex = (view.suggestionIndex + step + count) % count;
      renderSuggestions(view);
      return true;
    }
    if (event.key === "Escape") {
      event.preventDefault();
      hideSuggestions(chatId);
      return true;
    }
    return false;
  }

  function insertCanned(view, item) {
    const textarea = view.pane.querySelector("textarea");
    const typed = shortcutAtCaret(textarea);
    if (!typed) return;
    const start = typed.end - typed.prefix.length - 1;
    textarea.value = textarea.value.slice(0, start) + item.text + textarea.value.slice(typed.end);
    const caret = start + item.text.length;
    textarea.setSelectionRange(caret, caret);
    view.suggestions = [];
    renderSuggestions(view);
    textarea.focus();
    noteTyping(view.chat.id);
  }

  function renderCanned() {
    const items = state.canned.map((item) => {
      const entry = document.createElement("li");
      const shortcut = document.createElement("strong");
      shortcut.className = "shortcut";
      shortcut.textContent = "/" + item.shortcut;
      const text = document.createElement("p");
      text.className = "canned-text";
      text.textContent = item.text;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "plain";
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", "Delete /" + item.shortcut);
      remove.addEventListener("click", () => deleteCanned(item));
      const edit = document.createElement("button");
      edit.type = "button";
      edit.className = "plain";
      edit.textContent = "Edit";
      edit.setAttribute("aria-label", "Edit /" + item.shortcut);
      edit.addEventListener("click", () => editCanned(item));
      const buttons = document.createElement("span");
      buttons.className = "item-buttons";
      buttons.append(edit, remove);
      entry.append(shortcut, buttons, text);
      return entry;
    });
    ui.cannedList.replaceChildren(...items);
    ui.cannedEmpty.hidden = items.length > 0;
  }

  ui.cannedForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const shortcut = ui.cannedShortcut.value.trim().replace(/^\//, "");
    const text = ui.cannedText.value.trim();
    ui.cannedError.textContent = "";

    if (!SHORTCUT_PATTERN.test(shortcut)) {
      ui.cannedError.textContent =
        "The shortcut must start with a lowercase letter or digit and hold only a-z, 0-9, - and _ (up to 32).";
      ui.cannedShortcut.focus();
      return;
    }
    if (!text) {
      ui.cannedError.textContent = "Write the text to insert.";
      ui.cannedText.focus();
      return;
    }

    const editing = state.editingCanned;
    try {
      if (editing) {
        await api("PUT", "/api/canned-responses/" + encodeURIComponent(editing.id), { shortcut, text });
      } else {
        await api("POST", "/api/canned-responses", { shortcut, text });
      }
    } catch (failure) {
      ui.cannedError.textContent = failure.message;
      return;
    }
    resetCannedForm();
    await loadCanned();
    ui.cannedShortcut.focus();
  });

  ui.cannedCancel.addEventListener("click", () => {
    resetCannedForm();
    ui.cannedShortcut.focus();
  });

  function editCanned(item) {
    state.editingCanned = item;
    ui.cannedShortcut.value = item.shortcut;
    ui.cannedText.value = item.text;
    ui.cannedError.textContent = "";
    ui.cannedSubmit.textContent = "Save changes";
    ui.cannedCancel.hidden = false;
    ui.cannedText.focus();
  }

  function resetCannedForm() {
    state.editingCanned = null;
    ui.cannedShortcut.value = "";
    ui.cannedText.value = "";
    ui.cannedError.textContent = "";
    ui.cannedSubmit.textContent = "Add canned response";
    ui.cannedCancel.hidden = true;
  }

  async function deleteCanned(item) {
    if (state.editingCanned && state.editingCanned.id === item.id) resetCannedForm();
    ui.cannedError.textContent = "";
    try {
      await api("DELETE", "/api/canned-responses/" + encodeURIComponent(item.id));
    } catch (failure) {
      ui.cannedError.textContent = failure.message;
    }
    await loadCanned();
    ui.cannedShortcut.focus();
  }

  // Missed chats: the reply route stores the reply and hands it to the server's mailer.

  async function loadMissed(withMessages) {
    let chats;
    try {
      chats = (await api("GET", "/api/chats?status=missed&limit=100")).chats || [];
    } catch (failure) {
      ui.missedError.textContent = "Missed chats could not be loaded: " + failure.message;
      return;
    }
    ui.missedError.textContent = "";
    ui.missedCount.textContent = String(chats.length);
    ui.missedCount.hidden = chats.length === 0;
    ui.missedCount.setAttribute("aria-label", chats.length + " missed");
    if (!withMessages) return;
    state.missed = await Promise.all(
      chats.map(async (chat) => {
        try {
          const path = "/api/chats/" + encodeURIComponent(chat.id) + "/messages?limit=200";
          return { chat, messages: (await api("GET", path)).messages || [] };
        } catch (failure) {
          return { chat, messages: [], error: failure.message };
        }
      }),
    );
    renderMissed();
  }

  function renderMissed() {
    const items = state.missed.map((entry) => missedItem(entry));
    ui.missedList.replaceChildren(...items);
    ui.missedEmpty.hidden = items.length > 0;
  }

  // A list item for a chat: the visitor's name over a line of details.
  function chatCard(chat, className) {
    const item = document.createElement("li");
    item.className = className;
    item.dataset.chatId = chat.id;
    const title = document.createElement("h3");
    title.textContent = chat.visitor.name;
    const meta = document.createElement("p");
    meta.className = "muted missed-meta";
    item.append(title, meta);
    return { item, meta };
  }

  function missedItem({ chat, messages, error }) {
    const { item, meta } = chatCard(chat, "missed-item");
    const email = chat.visitor.email;
    meta.textContent =
      (email || "No email given") +
      " · " +
      localTime(chat.created_at) +
      (chat.department ? " · " + departmentName(chat.department) : "") +
      (chat.agent ? " · answered by " + chat.agent.name : "");

    const thread = document.createElement("div");
    thread.className = "thread";
    for (const message of messages) thread.append(threadLine(message));
    if (error) thread.append(errorLine("The messages could not be loaded: " + error));
    item.append(thread, missedReplyForm(chat, thread));
    return item;
  }

  function threadLine(message) {
    const line = document.createElement("p");
    line.className = "msg " + message.sender.role;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    const sender = document.createElement("span");
    sender.className = "meta";
    sender.textContent = message.sender.name;
    line.append(text, sender);
    return line;
  }

  function errorLine(text) {
    const line = document.createElement("p");
    line.className = "error";
    line.setAttribute("role", "alert");
    line.textContent = text;
    return line;
  }

  function missedReplyForm(chat, thread) {
    const form = document.createElement("form");
    form.className = "missed-reply";
    const fieldId = "missed-reply-" + chat.id;
    const label = document.createElement("label");
    label.htmlFor = fieldId;
    label.textContent = chat.visitor.email ? "Reply to " + chat.visitor.email : "Reply";
    const textarea = document.createElement("textarea");
    textarea.id = fieldId;
    textarea.rows = 3;
    textarea.maxLength = 4000;
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Send reply";
    const result = document.createElement("p");
    result.className = "reply-result";
    result.setAttribute("role", "status");
    form.append(label, textarea, button, result);
    // A resent reply with the same text reuses its client_id, so a reply
    // whose response was lost is stored and mailed once.
    let pending = null;

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = textarea.value.trim();
      if (!text) {
        result.textContent = "Write a reply first.";
        return;
      }

      if (!pending || pending.text !== text) pending = { text, client_id: crypto.randomUUID() };
      button.disabled = true;
      let body;
      try {
        body = await api("POST", "/api/chats/" + encodeURIComponent(chat.id) + "/reply", pending);
      } catch (failure) {
        result.textContent = "The reply was not sent: " + failure.message;
        return;
      } finally {
        button.disabled = false;
      }

      pending = null;
      textarea.value = "";
      thread.append(threadLine(body.message));
      result.textContent = body.email_sent
        ? "Reply saved and emailed to " + (chat.visitor.email || "the visitor") + "."
        : "Reply saved, but no email was sent.";
    });
    return form;
  }

  ui.missedRefresh.addEventListener("click", () => loadMissed(true));

  function localTime(text) {
    const when = new Date(text);
    return Number.isNaN(when.getTime()) ? text : when.toLocaleString();
  }

  // History: this agent's ended chats, a page at a time, each transcript
  // loaded when it is first opened.

  const HISTORY_PAGE = 25;

  async function loadHistory(older) {
    const known = older ? state.history : [];
    let path =
      "/api/chats?status=ended&limit=" + HISTORY_PAGE + "&agent_id=" + encodeURIComponent(state.agentId);
    if (known.length > 0) path += "&before=" + encodeURIComponent(known[known.length - 1].created_at);
    // Disabled while a page loads, so that a double click does not add it twice.
    ui.historyMore.disabled = true;
    let chats;
    try {
      chats = (await api("GET", path)).chats || [];
    } catch (failure) {
      ui.historyError.textContent = "Failed to load ended chats: " + failure.message + ". Try Refresh.";
      return;
    } finally {
      ui.historyMore.disabled = false;
    }
    ui.historyError.textContent = "";
    state.history = [...known, ...chats];
    ui.historyList.replaceChildren(...state.history.map((chat) => historyItem(chat)));
    ui.historyEmpty.hidden = state.history.length > 0;
    // A full page means that older chats may follow.
    ui.historyMore.hidden = chats.length < HISTORY_PAGE;
  }

  function historyItem(chat) {
    const { item, meta } = chatCard(chat, "missed-item history-item");
    const parts = [localTime(chat.ended_at || chat.created_at), endNote(chat.ended_by, chat.end_reason)];
    if (chat.department) parts.push(departmentName(chat.department));
    if (chat.rating) parts.push("Rated " + chat.rating.score + " of 5");
    meta.textContent = parts.join(" · ");
    if (chat.rating && chat.rating.comment) {
      const comment = document.createElement("p");
      comment.className = "rating-comment";
      comment.textContent = "“" + chat.rating.comment + "”";
      item.append(comment);
    }

    const transcript = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Transcript, " + chat.last_seq + (chat.last_seq === 1 ? " message" : " messages");
    const thread = document.createElement("div");
    thread.className = "thread";
    transcript.append(summary, thread);
    transcript.addEventListener("toggle", () => {
      if (transcript.open && !thread.dataset.loaded) loadTranscript(chat, thread);
    });
    item.append(transcript);
    return item;
  }

  async function loadTranscript(chat, thread) {
    thread.dataset.loaded = "true";
    const lines = [];
    let afterSeq = 0;
    try {
      for (;;) {
        const path =
          "/api/chats/" + encodeURIComponent(chat.id) + "/messages?limit=1000&after_seq=" + afterSeq;
        const page = await api("GET", path);
        const messages = page.messages || [];
        lines.push(...messages.map((message) => threadLine(message)));
        if (!page.has_more || messages.length === 0) break;
        afterSeq = messages[messages.length - 1].seq;
      }
    } catch (failure) {
      // The next time the transcript opens, it loads again.
      delete thread.dataset.loaded;
      const message = "Failed to load the transcript: " + failure.message + ". Close and open it to retry.";
      thread.replaceChildren(...lines, errorLine(message));
      return;
    }
    thread.replaceChildren(...lines);
  }

  ui.historyRefresh.addEventListener("click", () => loadHistory(false));
  ui.historyMore.addEventListener("click", () => loadHistory(true));

  // Main area: the chat windows, the Missed list, the History or the canned responses.

  function showView(name) {
    state.view = name;
    ui.panes.hidden = name !== "chats";
    ui.missed.hidden = name !== "missed";
    ui.history.hidden = name !== "history";
    ui.canned.hidden = name !== "canned";
    for (const [key, button] of Object.entries(ui.viewButtons)) {
      button.setAttribute("aria-pressed", String(key === name));
    }
  }

  ui.viewButtons.chats.addEventListener("click", () => showView("chats"));
  ui.viewButtons.missed.addEventListener("click", () => {
    showView("missed");
    loadMissed(true);
  });
  ui.viewButtons.history.addEventListener("click", () => {
    showView("history");
    loadHistory(false);
  });
  ui.viewButtons.canned.addEventListener("click", () => {
    showView("canned");
    loadCanned();
    ui.cannedShortcut.focus();
  });

  // Call a REST route with the agent token. A failure throws an Error with
  // the server's message.
  async function api(method, path, body) {
    const options = { method, headers: { Authorization: "Bearer " + localStorage.getItem(TOKEN_KEY) } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      throw new Error("the server cannot be reached");
    }
    if (response.status === 204) return {};
    const data = await response.json().catch(() => ({}));
    if (response.status === 401) {
      localStorage.removeItem(TOKEN_KEY);
      showSignin("Your session has expired. Sign in again.");
    }
    if (!response.ok) {
      const error = new Error((data.error && data.error.message) || "HTTP status " + response.status);
      error.code = data.error && data.error.code;
      throw error;
    }
    return data;
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
  // Only the count: reloading an open Missed list would wipe a reply being typed.
  setInterval(() => {
    if (state.socket) loadMissed(false);
  }, MISSED_POLL_MS);

  start();
})();
