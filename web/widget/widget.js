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
    flushTimer: null, // retries the outbox after a rate_limited reply
    connectLimited: false, // true after the server refused the handshake with rate_limited
    failedConnects: 0,
    agentReadSeq: 0,
    ownReadSeq: 0, // the highest seq this visitor marked read
    agentTyping: false,
    unread: 0,
    departments: [], // [{id, name}] from the session, empty with one general queue
    notices: [], // [{afterSeq, text}], system lines of the current chat kept locally
    waitingAgain: false, // true after the chat went back to the queue from an agent
    leaveOpen: false, // true while the "Leave a message" form is shown
    leaveSentTo: null, // email address of the message left last
    rating: load("rating", null), // {chat_id, agent_name} of an ended chat still to rate
    ratedChats: load("rated", []), // ids of chats already rated or declined
    ratingScore: 0,
    ratingResult: "", // the thanks, or the reason the rating was not stored
  };
  const RATED_KEEP = 50;

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
      select:focus-visible, input:focus-visible { outline: 3px solid #f59e0b; outline-offset: 2px; }
      .prechat { display: flex; align-items: center; gap: 8px; padding: 8px 10px 0;
                 font-size: 14px; color: #374151; }
      .prechat select { flex: 1; min-width: 0; }
      select, input, .leave textarea, .rating textarea {
        border: 1px solid #d1d5db; border-radius: 8px; padding: 7px 8px; font-size: 15px;
        background: #fff; color: #111827; width: 100%;
      }
      .offer { margin: 0 10px 8px; padding: 10px; border-radius: 8px; background: #eff6ff;
               font-size: 14px; display: flex; flex-wrap: wrap; align-items: center; gap: 8px; }
      .offer p { margin: 0; flex: 1 1 180px; }
      .leave, .rating { display: grid; gap: 6px; padding: 10px 12px; border-top: 1px solid #e5e7eb;
                        text-align: left; overflow-y: auto; max-height: 65%; font-size: 14px; }
      .leave h3, .rating h3 { margin: 0; font-size: 15px; }
      .leave textarea { resize: vertical; min-height: 70px; max-height: none; }
      .rating textarea { resize: vertical; min-height: 48px; max-height: none; }
      .row { display: flex; flex-wrap: wrap; gap: 8px; }
      .primary, .secondary, .offer button {
        border: none; border-radius: 8px; padding: 8px 14px; cursor: pointer; font-size: 14px;
        background: var(--accent); color: var(--accent-text);
      }
      .secondary { background: transparent; color: #374151; border: 1px solid #d1d5db; }
      .error { margin: 0; color: #b91c1c; font-size: 13px; }
      .error:empty { display: none; }
      .confirm { margin: 0; color: #065f46; }
      .stars { display: flex; gap: 4px; }
      .star { border: 1px solid #d1d5db; background: #fff; color: #9ca3af; border-radius: 8px;
              font-size: 22px; line-height: 1; width: 40px; height: 40px; cursor: pointer; }
      .star.on { color: #d97706; border-color: #d97706; }
      .ended .again { margin-top: 8px; }
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
      <div class="offer" hidden>
        <p>No agent can answer right now. Leave a message, and an agent will reply on this page.</p>
        <button class="offer-open" type="button">Leave a message</button>
      </div>
      <div class="prechat" hidden>
        <label for="sio-chat-department">Topic</label>
        <select id="sio-chat-department"></select>
      </div>
      <form class="composer">
        <label class="sr-only" for="sio-chat-text">Message</label>
        <textarea id="sio-chat-text" rows="1" maxlength="4000"
                  placeholder="Write a message…"></textarea>
        <button class="send" type="submit">Send</button>
      </form>
      <form class="leave" novalidate hidden aria-labelledby="sio-chat-leave-title">
        <h3 id="sio-chat-leave-title">Leave a message</h3>
        <label for="sio-chat-leave-email">Email (required)</label>
        <input id="sio-chat-leave-email" type="email" autocomplete="email" maxlength="254" required>
        <label for="sio-chat-leave-name">Name (optional)</label>
        <input id="sio-chat-leave-name" type="text" autocomplete="name" maxlength="100">
        <label for="sio-chat-leave-text">Message</label>
        <textarea id="sio-chat-leave-text" maxlength="4000" required></textarea>
        <p class="error leave-error" role="alert"></p>
        <div class="row">
          <button class="primary leave-send" type="submit">Send message</button>
          <button class="secondary leave-cancel" type="button">Cancel</button>
        </div>
      </form>
      <div class="ended" hidden>
        <p class="ended-text" tabindex="-1">This chat has ended.</p>
        <form class="rating" novalidate hidden aria-labelledby="sio-chat-rating-title">
          <h3 id="sio-chat-rating-title"></h3>
          <div class="stars" role="group" aria-label="Rating from 1 to 5 stars">
            <button class="star" type="button" data-score="1" aria-pressed="false"
                    aria-label="1 star of 5">★</button>
            <button class="star" type="button" data-score="2" aria-pressed="false"
                    aria-label="2 stars of 5">★</button>
            <button class="star" type="button" data-score="3" aria-pressed="false"
                    aria-label="3 stars of 5">★</button>
            <button class="star" type="button" data-score="4" aria-pressed="false"
                    aria-label="4 stars of 5">★</button>
            <button class="star" type="button" data-score="5" aria-pressed="false"
                    aria-label="5 stars of 5">★</button>
          </div>
          <label for="sio-chat-rating-comment">Comment (optional)</label>
          <textarea id="sio-chat-rating-comment" maxlength="1000"></textarea>
          <p class="error rating-error" role="alert"></p>
          <div class="row">
            <button class="primary rating-send" type="submit">Send rating</button>
            <button class="secondary rating-skip" type="button">No thanks</button>
          </div>
        </form>
        <p class="confirm rating-result" role="status" tabindex="-1" hidden></p>
        <button class="offer-open secondary ended-leave" type="button" hidden>Leave a message</button>
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
    text: $("#sio-chat-text"),
    ended: $(".ended"),
    endedText: $(".ended-text"),
    endedLeave: $(".ended-leave"),
    again: $(".again"),
    offer: $(".offer"),
    prechat: $(".prechat"),
    department: $("#sio-chat-department"),
    leave: $(".leave"),
    leaveEmail: $("#sio-chat-leave-email"),
    leaveName: $("#sio-chat-leave-name"),
    leaveText: $("#sio-chat-leave-text"),
    leaveError: $(".leave-error"),
    leaveSend: $(".leave-send"),
    leaveCancel: $(".leave-cancel"),
    rating: $(".rating"),
    ratingTitle: $("#sio-chat-rating-title"),
    stars: [...root.querySelectorAll(".star")],
    ratingComment: $("#sio-chat-rating-comment"),
    ratingError: $(".rating-error"),
    ratingSend: $(".rating-send"),
    ratingSkip: $(".rating-skip"),
    ratingResult: $(".rating-result"),
  };
  ui.title.textContent = config.title;
  ui.panel.setAttribute("aria-label", config.title);
  ui.greeting.textContent = config.greeting;

  // Rendering. Every piece of text from the server goes through textContent.

  function isClosed(chat) {
    return Boolean(chat && (chat.status === "ended" || chat.status === "missed"));
  }

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

    // A pending rating and then its thanks outlive a reload, after which the
    // session no longer has the chat.
    const closed = isClosed(chat) || (!chat && (rateableChat() !== null || state.ratingResult !== ""));
    const joining = !chat || isClosed(chat);
    ui.end.hidden = !chat || isClosed(chat);
    ui.leave.hidden = !state.leaveOpen;
    ui.composer.hidden = closed || state.leaveOpen;
    // The topic applies to a new chat: one started from the composer or the form.
    const choosingTopic = state.leaveOpen ? joining : joining && !closed;
    ui.prechat.hidden = state.departments.length === 0 || !choosingTopic;
    ui.offer.hidden = !offerLeaveMessage() || state.leaveOpen || closed;
    ui.ended.hidden = !closed || state.leaveOpen;
    renderEnded();

    ui.badge.hidden = state.unread === 0 || state.open;
    ui.badge.textContent = String(state.unread);
    renderLog();
  }

  // With no agent online, a visitor about to join or still queued may leave a
  // message instead. The composer stays, so waiting in the queue still works.
  function offerLeaveMessage() {
    if (!state.connected || state.agentsOnline !== 0) return false;
    return !state.chat || state.chat.status === "queued";
  }

  function renderEnded() {
    const chat = state.chat;
    if (chat && chat.status === "missed") {
      ui.endedText.textContent = state.leaveSentTo
        ? "Thank you! We got your message from " +
          state.leaveSentTo +
          ". An agent's reply will appear on this page."
        : "No agent was free to answer in time.";
    } else if (chat) {
      ui.endedText.textContent = "This chat has ended.";
    } else {
      ui.endedText.textContent = "Your last chat has ended.";
    }
    ui.endedLeave.hidden = !(chat && chat.status === "missed" && !state.leaveSentTo);
    const rateable = rateableChat();
    ui.rating.hidden = rateable === null;
    ui.ratingResult.textContent = state.ratingResult;
    ui.ratingResult.hidden = state.ratingResult === "";
    if (rateable !== null) {
      ui.ratingTitle.textContent = rateable.agent_name
        ? "How was your chat with " + rateable.agent_name + "?"
        : "How was your chat?";
    }
    for (const star of ui.stars) {
      const score = Number(star.dataset.score);
      star.classList.toggle("on", score <= state.ratingScore);
      star.setAttribute("aria-pressed", String(score === state.ratingScore));
    }
  }

  function statusLine() {
    const chat = state.chat;
    if (!state.connected && state.connectLimited) {
      return "The chat is busy, or too many chat windows are open. Trying again shortly.";
    }
    if (!state.connected && !state.everConnected) {
      // A few failed attempts usually mean the site's origin is not allowed
      // by the chat server, or the server is down.
      return state.failedConnects >= 3 ? "The chat server cannot be reached right now." : "Connecting…";
    }
    if (!chat) return "";
    if (chat.status === "active" && chat.agent) return "You are chatting with " + chat.agent.name + ".";
    if (chat.status === "queued") {
      let line = state.position ? "You are number " + state.position + " in the queue." : "You are in the queue.";
      if (state.waitingAgain) line = "Waiting for another agent… " + line;
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

  function systemLine(text) {
    const node = document.createElement("div");
    node.className = "msg system";
    node.textContent = text;
    return node;
  }

  function renderLog() {
    const nodes = [ui.greeting];
    const sorted = [...state.messages.values()].sort((a, b) => a.seq - b.seq);
    // A local system line (transfer, requeue) follows the message that was
    // the newest when it arrived.
    const notices = [...state.notices];
    for (const message of sorted) {
      while (notices.length > 0 && notices[0].afterSeq < message.seq) {
        nodes.push(systemLine(notices.shift().text));
      }
      nodes.push(messageNode(message, false));
    }
    for (const notice of notices) nodes.push(systemLine(notice.text));
    const stored = new Set(sorted.map((message) => message.client_id));
    for (const pending of state.outbox) {
      if (!stored.has(pending.client_id)) {
        nodes.push(messageNode({ text: pending.text, sender: { role: "visitor" } }, true));
      }
    }
    if (state.chat && state.chat.status === "ended") nodes.push(systemLine("Chat ended."));
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

  // Rating: requested once for each ended chat that had an agent. The pending
  // request and the ids already rated or declined are kept in localStorage, so
  // a reload shows the request again only until the visitor responds.

  function askForRating(chat) {
    if (state.ratedChats.includes(chat.id)) return;
    if (state.rating && state.rating.chat_id === chat.id) return;
    state.rating = { chat_id: chat.id, agent_name: chat.agent.name };
    state.ratingScore = 0;
    state.ratingResult = "";
    ui.ratingComment.value = "";
    ui.ratingError.textContent = "";
    save("rating", state.rating);
  }

  function rateableChat() {
    const pending = state.rating;
    if (!pending || state.ratedChats.includes(pending.chat_id)) return null;
    if (state.chat && state.chat.id !== pending.chat_id) return null;
    return pending;
  }

  function finishRating(chatId) {
    const others = state.ratedChats.filter((id) => id !== chatId);
    state.ratedChats = [...others, chatId].slice(-RATED_KEEP);
    save("rated", state.ratedChats);
    state.rating = null;
    save("rating", null);
  }

  function dropRating() {
    if (state.rating) finishRating(state.rating.chat_id);
  }

  function chooseScore(score) {
    state.ratingScore = score;
    ui.ratingError.textContent = "";
    render();
  }

  async function sendRating() {
    const pending = rateableChat();
    if (!pending) return;

    if (state.ratingScore < 1) {
      ui.ratingError.textContent = "Choose from 1 to 5 stars first.";
      ui.stars[0].focus();
      return;
    }
    const socket = state.socket;
    if (!socket || !socket.connected) {
      ui.ratingError.textContent = "You are offline. Send the rating again when the connection is back.";
      return;
    }

    const payload = { chat_id: pending.chat_id, score: state.ratingScore };
    const comment = ui.ratingComment.value.trim();
    if (comment) payload.comment = comment;
    ui.ratingSend.disabled = true;
    let reply;
    try {
      reply = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("rate_chat", payload);
    } catch (error) {
      ui.ratingError.textContent = "The rating could not be sent. Check the connection and try again.";
      return;
    } finally {
      ui.ratingSend.disabled = false;
    }

    const final = ["wrong_state", "not_found", "forbidden"];
    if (!reply.ok && !final.includes(reply.error.code)) {
      // After invalid_payload or internal_error the visitor can fix the input or retry.
      ui.ratingError.textContent = reply.error.message;
      return;
    }
    // The other codes (an already rated chat, say) mean that this chat cannot
    // be rated at all, so the form goes away and the reason stays on screen.
    finishRating(pending.chat_id);
    state.ratingResult = reply.ok ? "Thank you for rating this chat!" : reply.error.message;
    render();
    ui.ratingResult.focus();
  }

  // Leave a message: offered when no agent is online, or none took the chat in time.

  function openLeaveForm() {
    state.leaveOpen = true;
    ui.leaveError.textContent = "";
    const identity = load("identity", {});
    if (!ui.leaveEmail.value && identity.email) ui.leaveEmail.value = identity.email;
    if (!ui.leaveName.value && identity.name) ui.leaveName.value = identity.name;
    if (!ui.leaveText.value && state.chat && state.chat.status !== "queued") {
      // Start from the text the visitor wrote in the chat that no agent took.
      const written = [...state.messages.values()]
        .filter((message) => message.sender.role === "visitor")
        .sort((a, b) => a.seq - b.seq)
        .map((message) => message.text);
      ui.leaveText.value = written.join("\n").slice(0, 4000);
    }
    render();
    (ui.leaveEmail.value ? ui.leaveText : ui.leaveEmail).focus();
  }

  function closeLeaveForm() {
    state.leaveOpen = false;
    render();
    ui.text.focus();
  }

  async function sendLeaveMessage() {
    const email = ui.leaveEmail.value.trim();
    const name = ui.leaveName.value.trim();
    const text = ui.leaveText.value.trim();
    ui.leaveError.textContent = "";

    if (!email.includes("@")) {
      ui.leaveError.textContent = "Enter your email address, so that the team can contact you.";
      ui.leaveEmail.focus();
      return;
    }
    if (!text) {
      ui.leaveError.textContent = "Write your message first.";
      ui.leaveText.focus();
      return;
    }
    const socket = state.socket;
    if (!socket || !socket.connected) {
      ui.leaveError.textContent = "You are offline. Send the message again when the connection is back.";
      return;
    }

    const payload = { text, email };
    if (name) payload.name = name;
    const joining = !state.chat || isClosed(state.chat);
    if (joining && ui.department.value) payload.department = ui.department.value;
    ui.leaveSend.disabled = true;
    let reply;
    try {
      reply = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("leave_message", payload);
    } catch (error) {
      ui.leaveError.textContent = "The message could not be sent. Check the connection and try again.";
      return;
    } finally {
      ui.leaveSend.disabled = false;
    }

    if (!reply.ok) {
      ui.leaveError.textContent = reply.error.message;
      ui.leaveSend.focus();
      return;
    }
    setChat(reply.chat);
    state.leaveOpen = false;
    state.leaveSentTo = email;
    ui.leaveText.value = "";
    render();
    ui.endedText.focus();
    // Show the stored message. An agent's reply arrives later as `message`.
    await catchUp();
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
      state.connectLimited = false;
      state.connected = true;
      state.everConnected = true;
      render();
    });
    socket.on("disconnect", () => {
      state.connected = false;
      render();
    });
    socket.on("connect_error", (error) => {
      const code = error && error.data ? error.data.code : null;
      const hadToken = load("token", null) !== null;
      if (code === "unauthorized") {
        // The stored token is no longer valid: continue as a new visitor.
        save("token", null);
      }
      state.failedConnects += 1;
      state.connectLimited = code === "rate_limited";
      render();
      // socket.io-client does not reconnect after the server refused the
      // handshake, so retry here: at once as a new visitor, or after the
      // wait that a rate limit sends.
      if (socket.active) return;
      let delay = null;
      if (code === "unauthorized" && hadToken) delay = 0;
      else if (code === "rate_limited") delay = retryDelayMs(error.data.retry_after_s);
      else if (code === "internal_error") delay = retryDelayMs(5);
      if (delay === null) return;
      setTimeout(() => {
        if (state.socket === socket && !socket.connected) socket.connect();
      }, delay);
    });
    socket.on("session", onSession);
    socket.on("queue_update", (update) => {
      if (!state.chat || isClosed(state.chat)) {
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
      const sameChat = state.chat && state.chat.id === chat.id;
      setChat(chat);
      addMessages(messages);
      if (sameChat && state.waitingAgain && chat.agent) {
        addNotice("You are now chatting with " + chat.agent.name + ".");
      }
      state.waitingAgain = false;
      // An agent took the chat, so a message form opened meanwhile is moot.
      state.leaveOpen = false;
      if (has_more) catchUp();
      render();
    });
    socket.on("chat_requeued", ({ chat_id, department }) => {
      if (!state.chat || state.chat.id !== chat_id) return;
      const moved = department === undefined ? {} : { department };
      state.chat = { ...state.chat, ...moved, status: "queued", agent: null };
      state.agentTyping = false;
      state.waitingAgain = true;
      addNotice("Waiting for another agent…");
      render();
    });
    socket.on("chat_transferred", ({ chat_id, agent }) => {
      if (!state.chat || state.chat.id !== chat_id || !agent) return;
      state.chat = { ...state.chat, status: "active", agent };
      state.agentTyping = false;
      addNotice("You are now chatting with " + agent.name + ".");
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
    socket.on("chat_ended", ({ chat_id, reason }) => {
      if (!state.chat || chat_id !== state.chat.id) return;
      // The queue timeout closes the chat as missed, because no agent took it.
      const status = reason === "queue_timeout" ? "missed" : "ended";
      closeChat({ ...state.chat, status, end_reason: reason });
      render();
    });
  }

  async function onSession(session) {
    save("token", session.token);
    state.agentsOnline = session.agents_online ?? state.agentsOnline;
    if (Array.isArray(session.departments)) setDepartments(session.departments);
    if (session.chat) {
      setChat(session.chat);
      await catchUp();
    } else if (state.chat && !isClosed(state.chat)) {
      // The chat closed while this page was disconnected, so read how it closed.
      closeChat({ ...state.chat, status: "ended" });
      render();
      const stored = await fetchChat(state.chat.id, session.token);
      if (stored && state.chat && state.chat.id === stored.id && isClosed(stored)) {
        closeChat(stored);
      }
    } else if (!state.chat) {
      await recoverClosedChat(session.token);
    }
    render();
    flushOutbox();
  }

  // A chat that closed while no page of this visitor was open is known only by
  // the id kept in localStorage. Ask for its rating if it ended with an agent.
  async function recoverClosedChat(token) {
    const last = load("chat", null);
    if (!last || typeof last.id !== "string") return;
    const stored = await fetchChat(last.id, token);
    if (!stored) return; // Kept, so the next session tries again.
    save("chat", null);
    if (!state.chat && stored.status === "ended" && stored.agent) askForRating(stored);
  }

  function setChat(chat) {
    if (!state.chat || state.chat.id !== chat.id) {
      state.messages.clear();
      state.notices = [];
      state.leaveSentTo = null;
      state.waitingAgain = false;
      state.agentReadSeq = 0;
      state.ownReadSeq = 0;
      state.position = null;
    }
    state.chat = chat;
    // The marks stored on the server, so that a reloaded page shows what was read.
    if (chat.read) {
      state.agentReadSeq = Math.max(state.agentReadSeq, chat.read.agent || 0);
      state.ownReadSeq = Math.max(state.ownReadSeq, chat.read.visitor || 0);
    }
    if (chat.status !== "queued") state.position = null;
    // Kept so that a page loaded after the chat closed can still ask for a rating.
    if (!isClosed(chat)) save("chat", { id: chat.id });
  }

  function closeChat(chat) {
    save("chat", null);
    state.chat = chat;
    state.agentTyping = false;
    state.waitingAgain = false;
    state.position = null;
    if (chat.status === "ended" && chat.agent) askForRating(chat);
    else if (state.rating && state.rating.chat_id === chat.id) dropRating();
  }

  function addNotice(text) {
    state.notices.push({ afterSeq: lastSeq(), text });
  }

  function setDepartments(departments) {
    state.departments = departments.filter((item) => item && typeof item.id === "string");
    const chosen = ui.department.value;
    const options = [new Option("General", "")];
    for (const department of state.departments) {
      options.push(new Option(department.name || department.id, department.id));
    }
    ui.department.replaceChildren(...options);
    if (state.departments.some((item) => item.id === chosen)) ui.department.value = chosen;
  }

  // Fetch a chat's stored state with the visitor token, or null when that fails.
  async function fetchChat(chatId, token) {
    try {
      const url = config.server + "/api/chats/" + encodeURIComponent(chatId) + "/messages?limit=1";
      const response = await fetch(url, { headers: { Authorization: "Bearer " + token } });
      if (!response.ok) return null;
      const body = await response.json();
      return body && body.chat ? body.chat : null;
    } catch (error) {
      return null;
    }
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
        if (message.sender.role !== "visitor" && message.seq > state.ownReadSeq) fresh += 1;
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
    const kind = !state.chat || isClosed(state.chat) ? "join" : "message";
    if (kind === "join" && state.chat) {
      state.chat = null;
      state.messages.clear();
      state.notices = [];
    }
    const item = { kind, client_id: newClientId(), text };
    if (kind === "join" && ui.department.value) item.department = ui.department.value;
    state.outbox.push(item);
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
        if (!reply.ok && reply.error.code === "rate_limited") {
          // Nothing was stored, so the message stays first in the outbox.
          clearTimeout(state.flushTimer);
          state.flushTimer = setTimeout(flushOutbox, retryDelayMs(reply.error.retry_after_s));
          break;
        }
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

  // Milliseconds to wait before a retry that the server asked for in whole
  // seconds, kept between 1 s and 5 min.
  function retryDelayMs(seconds) {
    const wait = Number.isFinite(seconds) ? seconds : 1;
    return Math.min(300, Math.max(1, wait)) * 1000;
  }

  async function deliver(socket, item) {
    let event = "message";
    let payload = { chat_id: state.chat && state.chat.id, text: item.text, client_id: item.client_id };
    if (item.kind === "join" || !state.chat) {
      event = "join_queue";
      payload = { message: item.text, client_id: item.client_id, metadata: { page: location.href.slice(0, 500) } };
      if (item.department) payload.department = item.department;
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
    if (last > 0) {
      state.ownReadSeq = Math.max(state.ownReadSeq, last);
      socket.emit("read", { chat_id: state.chat.id, seq: last });
    }
  }

  let typingTimer = null;
  function noteTyping() {
    const socket = state.socket;
    if (!socket || !socket.connected || !state.chat || isClosed(state.chat)) return;
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
    if (!socket || !socket.connected || !state.chat || isClosed(state.chat)) return;
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
    for (const name of ["token", "identity", "outbox", "rating", "chat"]) save(name, null);
    Object.assign(state, {
      rating: null,
      ratingResult: "",
      leaveOpen: false,
      leaveSentTo: null,
      notices: [],
      waitingAgain: false,
      chat: null,
      connected: false,
      everConnected: false,
      outbox: [],
      unread: 0,
      agentReadSeq: 0,
      ownReadSeq: 0,
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
    // Starting over counts as declining a pending rating request.
    dropRating();
    state.ratingResult = "";
    state.chat = null;
    state.messages.clear();
    state.notices = [];
    state.leaveSentTo = null;
    render();
    ui.text.focus();
  });
  for (const button of root.querySelectorAll(".offer-open")) {
    button.addEventListener("click", openLeaveForm);
  }
  ui.leaveCancel.addEventListener("click", closeLeaveForm);
  ui.leave.addEventListener("submit", (event) => {
    event.preventDefault();
    sendLeaveMessage();
  });
  ui.stars.forEach((star, index) => {
    star.addEventListener("click", () => chooseScore(index + 1));
    star.addEventListener("keydown", (event) => {
      // Arrow keys move along the stars and choose, like a radio group.
      const step = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      const next = Math.min(ui.stars.length - 1, Math.max(0, index + step));
      chooseScore(next + 1);
      ui.stars[next].focus();
    });
  });
  ui.rating.addEventListener("submit", (event) => {
    event.preventDefault();
    sendRating();
  });
  ui.ratingSkip.addEventListener("click", () => {
    dropRating();
    render();
    ui.again.focus();
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
