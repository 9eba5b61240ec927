/*
 * Admin page: manage the team, supervise the queue and chats, read the audit log.
 * It shares the agent token with the dashboard. All text from the server is
 * shown with textContent, never as HTML.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "sio-chat-agent:token";
  const ACK_TIMEOUT_MS = 10000;
  const OVERVIEW_INTERVAL_MS = 3000;
  const AUDIT_PAGE_SIZE = 50;
  // Bounds the catch-up of a watched chat: 100 pages of 1000 messages.
  const HISTORY_PAGE_SIZE = 1000;
  const HISTORY_MAX_PAGES = 100;

  const ACTION_LABELS = {
    "agent.create": "Added agent",
    "agent.update": "Changed agent",
    "agent.password": "Reset password",
  };
  const SIGNED_OUT_MESSAGES = {
    disabled: "An admin disabled this account.",
    password_changed: "The password of this account changed. Sign in again.",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    signin: $("signin"),
    signinForm: $("signin-form"),
    signinError: $("signin-error"),
    notAdmin: $("not-admin"),
    notAdminText: $("not-admin-text"),
    switchAccount: $("switch-account"),
    app: $("app"),
    adminName: $("admin-name"),
    signout: $("signout"),
    banner: $("banner"),
    teamBody: $("team-table").tBodies[0],
    teamError: $("team-error"),
    teamRefresh: $("team-refresh"),
    addForm: $("add-form"),
    addError: $("add-error"),
    addStatus: $("add-status"),
    overviewUpdated: $("overview-updated"),
    overviewError: $("overview-error"),
    queueBody: $("queue-table").tBodies[0],
    queueEmpty: $("queue-empty"),
    loadBody: $("load-table").tBodies[0],
    chatsBody: $("chats-table").tBodies[0],
    chatsEmpty: $("chats-empty"),
    watch: $("watch"),
    watchTitle: $("watch-title"),
    watchState: $("watch-state"),
    watchError: $("watch-error"),
    watchLog: $("watch-log"),
    watchTyping: $("watch-typing"),
    watchClose: $("watch-close"),
    auditBody: $("audit-table").tBodies[0],
    auditError: $("audit-error"),
    auditEmpty: $("audit-empty"),
    auditOlder: $("audit-older"),
    auditRefresh: $("audit-refresh"),
    dialog: $("agent-dialog"),
    dialogTitle: $("agent-dialog-title"),
    dialogEmail: $("agent-dialog-email"),
    dialogError: $("agent-dialog-error"),
    dialogStatus: $("agent-dialog-status"),
    dialogClose: $("agent-dialog-close"),
    account: $("agent-account"),
    toggleDisabled: $("agent-toggle-disabled"),
    role: $("agent-role"),
    toggleAdmin: $("agent-toggle-admin"),
    maxChatsForm: $("max-chats-form"),
    maxChats: $("agent-max-chats"),
    departmentsForm: $("departments-form"),
    departmentsAll: $("departments-all"),
    departmentsList: $("departments-list"),
    departmentsNone: $("departments-none"),
    passwordForm: $("password-form"),
    password: $("agent-password"),
  };

  const state = {
    token: null,
    socket: null,
    me: null, // {id, name} from the socket's session
    agents: new Map(), // agent id -> agent, from GET /api/admin/agents
    agentsRequested: 0, // numbers the requests that return the agent list
    agentsApplied: 0, // number of the request whose list is shown
    departments: [], // [{id, name}] from GET /api/departments
    overviewTimer: null,
    overviewBusy: false,
    audit: [], // entries shown, newest first
    auditLoaded: false,
    editing: null, // id of the agent in the dialog
    watch: null, // {chatId, chat, messages: Map(seq -> Message), notes, ended, typing}
  };

  // Requests. A 401 means the token no longer works, so the page shows the
  // sign-in form. A 403 on an admin route means the account is not an admin.

  class RequestError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const token = state.token;
    const headers = { Authorization: "Bearer " + token };
    const options = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      throw new RequestError(0, "The server cannot be reached. Check the connection and try again.");
    }
    const data = await response.json().catch(() => ({}));
    if (response.ok) return data;
    const message = (data.error && data.error.message) || "The request failed with status " + response.status + ".";
    // A 401 or 403 for a token that was replaced while the request ran is ignored.
    if (token === state.token && response.status === 401) {
      forgetToken();
      showSignin("Your session has expired. Sign in again.");
    } else if (token === state.token && response.status === 403 && path.startsWith("/api/admin/")) {
      showNotAdmin();
    }
    throw new RequestError(response.status, message);
  }

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
      ui.signinError.textContent = sentence((body.error && body.error.message) || "sign-in failed");
      return;
    }
    localStorage.setItem(TOKEN_KEY, body.token);
    ui.signinForm.reset();
    if (!body.agent.is_admin) {
      state.token = body.token;
      showNotAdmin(body.agent.name);
      return;
    }
    start();
  });

  ui.signout.addEventListener("click", () => {
    forgetToken();
    showSignin();
  });

  ui.switchAccount.addEventListener("click", () => {
    forgetToken();
    showSignin();
  });

  // Turn a server message such as "email or password is wrong" into a sentence.
  function sentence(text) {
    const trimmed = text.trim();
    const ended = /[.!?]$/.test(trimmed) ? trimmed : trimmed + ".";
    return ended.charAt(0).toUpperCase() + ended.slice(1);
  }

  // The dashboard in another tab shares the token, so follow its sign-in and sign-out.
  window.addEventListener("storage", (event) => {
    if (event.key !== TOKEN_KEY && event.key !== null) return;
    const token = localStorage.getItem(TOKEN_KEY);
    if (token === state.token) return;
    if (token) {
      stop();
      start();
    } else {
      state.token = null;
      showSignin("This browser signed out in another tab. Sign in again.");
    }
  });

  function forgetToken() {
    localStorage.removeItem(TOKEN_KEY);
    state.token = null;
  }

  function stop() {
    clearInterval(state.overviewTimer);
    state.overviewTimer = null;
    closeWatch({ notify: false });
    if (ui.dialog.open) ui.dialog.close();
    if (state.socket) {
      state.socket.removeAllListeners();
      state.socket.disconnect();
    }
    state.socket = null;
    state.me = null;
    ui.banner.hidden = true;
  }

  function showSignin(message) {
    stop();
    ui.app.hidden = true;
    ui.notAdmin.hidden = true;
    ui.signin.hidden = false;
    ui.signinError.textContent = message || "";
    $("email").focus();
  }

  function showNotAdmin(name) {
    stop();
    ui.app.hidden = true;
    ui.signin.hidden = true;
    ui.notAdmin.hidden = false;
    const subject = name ? "The account " + name + " is" : "This account is";
    ui.notAdminText.textContent =
      subject + " not an admin, so it cannot manage the team. Ask an admin for the role, or sign in with an admin account.";
    ui.switchAccount.focus();
  }

  async function start() {
    state.token = localStorage.getItem(TOKEN_KEY);
    if (!state.token) {
      showSignin();
      return;
    }
    try {
      await loadTeam();
    } catch (error) {
      // 401 and 403 have switched the view already.
      if (error.status !== 401 && error.status !== 403) {
        showSignin(error.message);
      }
      return;
    }
    ui.signin.hidden = true;
    ui.notAdmin.hidden = true;
    ui.app.hidden = false;
    connect();
    loadDepartments();
    loadAudit();
    refreshOverview();
    state.overviewTimer = setInterval(refreshOverview, OVERVIEW_INTERVAL_MS);
  }

  // Socket.IO: needed for watching chats and to learn of a sign-out at once.
  // As an observer, the socket does not make the admin count as connected
  // for matching.

  function connect() {
    if (typeof io !== "function") {
      ui.banner.textContent = "The Socket.IO client did not load, so watching chats is unavailable. Reload the page.";
      ui.banner.hidden = false;
      return;
    }
    const socket = io({ auth: { role: "agent", token: state.token, observer: true } });
    state.socket = socket;

    socket.on("connect", () => {
      ui.banner.hidden = true;
      // A reconnected socket is in no chat room, so watch again.
      if (state.watch) sendWatch(state.watch.chatId);
    });
    socket.on("disconnect", () => {
      ui.banner.hidden = false;
    });
    socket.on("connect_error", (error) => {
      if (error && error.data && error.data.code === "unauthorized") {
        forgetToken();
        showSignin("Your session has expired. Sign in again.");
      } else {
        ui.banner.hidden = false;
      }
    });

    socket.on("session", (session) => {
      state.me = { id: session.agent_id, name: session.name };
      ui.adminName.textContent = "Signed in as " + session.name;
      renderTeam();
    });
    socket.on("signed_out", ({ reason }) => {
      forgetToken();
      showSignin(SIGNED_OUT_MESSAGES[reason] || "This account was signed out. Sign in again.");
    });
    // Sent when an admin changes this account, for example its admin role.
    socket.on("agent_updated", (agent) => {
      if (!agent.is_admin) {
        showNotAdmin(agent.name);
        return;
      }
      loadTeam().catch((error) => {
        ui.teamError.textContent = "The team could not be loaded: " + error.message;
      });
    });

    // Live events of the watched chat. The socket may also be in the rooms
    // of this admin's own chats, so events of other chats are ignored.
    socket.on("message", (message) => {
      const watch = state.watch;
      if (!watch || message.chat_id !== watch.chatId) return;
      watch.messages.set(message.seq, message);
      watch.typing = null;
      renderWatch();
    });
    socket.on("typing", ({ chat_id, role, typing }) => {
      const watch = state.watch;
      if (!watch || chat_id !== watch.chatId) return;
      watch.typing = typing ? role : null;
      renderWatch();
    });
    socket.on("chat_ended", ({ chat_id, ended_by, reason }) => {
      const watch = state.watch;
      if (!watch || chat_id !== watch.chatId) return;
      watch.ended = endNote(ended_by, reason);
      watch.typing = null;
      renderWatch();
    });
  }

  function endNote(endedBy, reason) {
    if (endedBy === "system" && reason === "visitor_left") return "The chat ended: the visitor left.";
    if (endedBy === "system" && reason === "inactive") return "The chat ended: the visitor was inactive.";
    if (endedBy === "visitor") return "The visitor ended the chat.";
    if (endedBy === "agent") return "The agent ended the chat.";
    return "The chat has ended.";
  }

  // Team.

  async function loadTeam() {
    const ticket = ++state.agentsRequested;
    const body = await api("GET", "/api/admin/agents");
    setAgents(body.agents, ticket);
    ui.teamError.textContent = "";
    renderTeam();
    renderDialog();
    renderAudit();
  }

  // Keep the agent list of the newest request, so an overview that was
  // requested before a change cannot undo the change on screen.
  function setAgents(agents, ticket) {
    if (ticket < state.agentsApplied) return;
    state.agentsApplied = ticket;
    state.agents = new Map(agents.map((agent) => [agent.id, agent]));
  }

  async function loadDepartments() {
    try {
      const body = await api("GET", "/api/departments");
      state.departments = body.departments;
    } catch (error) {
      ui.teamError.textContent = "The departments could not be loaded: " + error.message;
    }
    renderTeam();
    renderDialog();
  }

  function departmentName(id) {
    if (id === null || id === undefined) return "General";
    const department = state.departments.find((item) => item.id === id);
    return department ? department.name : id;
  }

  function servingText(serving) {
    if (serving === null || serving === undefined) return "All";
    if (serving.length === 0) return "None";
    return serving.map(departmentName).join(", ");
  }

  function agentName(id) {
    const agent = state.agents.get(id);
    return agent ? agent.name : id;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function badgeCell(text, on) {
    const td = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "badge " + (on ? "on" : "off");
    badge.textContent = text;
    td.append(badge);
    return td;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }

  // Give each cell its column's header as data-label, which the narrow
  // layout shows in front of the cell.
  function labelCells(table) {
    const headers = [...table.tHead.rows[0].cells].map((th) => th.textContent.trim());
    for (const tr of table.tBodies[0].rows) {
      [...tr.cells].forEach((td, index) => {
        td.dataset.label = headers[index] || "";
      });
    }
  }

  function actionsCell(button) {
    const td = document.createElement("td");
    td.className = "actions";
    td.append(button);
    return td;
  }

  function sortedAgents() {
    return [...state.agents.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  function renderTeam() {
    const focused = document.activeElement && document.activeElement.dataset.manageAgent;
    const rows = sortedAgents().map((agent) => {
      const you = state.me && state.me.id === agent.id ? " (you)" : "";
      const manage = document.createElement("button");
      manage.type = "button";
      manage.className = "secondary";
      manage.textContent = "Manage";
      manage.dataset.manageAgent = agent.id;
      manage.setAttribute("aria-label", "Manage " + agent.name);
      manage.addEventListener("click", () => openDialog(agent.id));
      const tr = row([
        cell(agent.name + you),
        cell(agent.email),
        cell(agent.is_admin ? "Yes" : "No"),
        badgeCell(agent.disabled ? "Disabled" : "Active", !agent.disabled),
        cell(agent.status),
        cell(agent.online ? "Yes" : "No"),
        cell(agent.load + " / " + agent.max_chats),
        cell(servingText(agent.serving)),
        actionsCell(manage),
      ]);
      tr.dataset.agentId = agent.id;
      if (agent.disabled) tr.className = "disabled";
      return tr;
    });
    ui.teamBody.replaceChildren(...rows);
    labelCells(ui.teamBody.parentElement);
    if (focused) refocus(ui.teamBody, "manage-agent", focused);
  }

  ui.teamRefresh.addEventListener("click", () => {
    loadTeam().catch((error) => {
      ui.teamError.textContent = "The team could not be loaded: " + error.message;
    });
  });

  ui.addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    ui.addError.textContent = "";
    ui.addStatus.textContent = "";
    const form = new FormData(ui.addForm);
    const agent = {
      email: String(form.get("email")).trim(),
      name: String(form.get("name")).trim(),
      password: String(form.get("password")),
      is_admin: form.get("is_admin") === "on",
    };
    if (!agent.email || !agent.name) {
      ui.addError.textContent = "Enter an email and a name.";
      return;
    }
    if (agent.password.length < 10) {
      ui.addError.textContent = "The password must have at least 10 characters.";
      return;
    }
    try {
      const body = await api("POST", "/api/admin/agents", agent);
      ui.addForm.reset();
      ui.addStatus.textContent = "Added " + body.agent.name + " (" + body.agent.email + ").";
    } catch (error) {
      ui.addError.textContent = "The agent could not be added: " + error.message;
      return;
    }
    await afterChange();
  });

  // Reload the team and the audit log after a change. Errors appear in their own sections.
  async function afterChange() {
    try {
      await loadTeam();
    } catch (error) {
      ui.teamError.textContent = "The team could not be loaded: " + error.message;
    }
    await loadAudit();
  }

  // The dialog that changes one agent.

  function openDialog(agentId) {
    state.editing = agentId;
    ui.dialogError.textContent = "";
    ui.dialogStatus.textContent = "";
    ui.password.value = "";
    const agent = state.agents.get(agentId);
    if (agent) ui.maxChats.value = String(agent.max_chats);
    renderDialog({ resetForms: true });
    ui.dialog.showModal();
    ui.toggleDisabled.focus();
  }

  ui.dialogClose.addEventListener("click", () => ui.dialog.close());
  ui.dialog.addEventListener("close", () => {
    const agentId = state.editing;
    state.editing = null;
    // Changes redraw the table, so the button that opened the dialog may be gone.
    if (agentId) refocus(ui.teamBody, "manage-agent", agentId);
  });

  function renderDialog(options) {
    const agent = state.editing && state.agents.get(state.editing);
    if (!agent) return;
    ui.dialogTitle.textContent = "Manage " + agent.name;
    ui.dialogEmail.textContent = agent.email;
    ui.account.textContent = agent.disabled ? "Account disabled" : "Account active";
    ui.toggleDisabled.textContent = agent.disabled ? "Enable account" : "Disable account";
    ui.toggleDisabled.className = agent.disabled ? "" : "danger";
    ui.role.textContent = agent.is_admin ? "Admin" : "Not an admin";
    ui.toggleAdmin.textContent = agent.is_admin ? "Remove admin role" : "Make admin";
    ui.toggleAdmin.className = agent.is_admin ? "danger" : "";

    const hasDepartments = state.departments.length > 0;
    ui.departmentsForm.hidden = !hasDepartments;
    ui.departmentsNone.hidden = hasDepartments;
    if (options && options.resetForms) {
      const serving = agent.serving;
      ui.departmentsAll.checked = serving === null;
      const boxes = state.departments.map((department) => {
        const label = document.createElement("label");
        label.className = "check";
        const box = document.createElement("input");
        box.type = "checkbox";
        box.value = department.id;
        box.checked = serving !== null && serving.includes(department.id);
        label.append(box, " " + department.name);
        return label;
      });
      ui.departmentsList.replaceChildren(...boxes);
      syncDepartmentBoxes();
    }
  }

  function syncDepartmentBoxes() {
    for (const box of ui.departmentsList.querySelectorAll("input")) box.disabled = ui.departmentsAll.checked;
  }
  ui.departmentsAll.addEventListener("change", syncDepartmentBoxes);

  // Send one change of the agent in the dialog and show the outcome there.
  async function changeAgent(method, path, body, done) {
    const agentId = state.editing;
    if (!agentId) return;
    const name = agentName(agentId);
    ui.dialogError.textContent = "";
    ui.dialogStatus.textContent = "";
    try {
      await api(method, path.replace("{id}", encodeURIComponent(agentId)), body);
    } catch (error) {
      if (ui.dialog.open) ui.dialogError.textContent = "The change to " + name + " failed: " + error.message;
      return;
    }
    ui.dialogStatus.textContent = done;
    await afterChange();
  }

  ui.toggleDisabled.addEventListener("click", () => {
    const agent = state.agents.get(state.editing);
    if (!agent) return;
    const disabled = !agent.disabled;
    changeAgent("PATCH", "/api/admin/agents/{id}", { disabled }, disabled ? "Account disabled." : "Account enabled.");
  });

  ui.toggleAdmin.addEventListener("click", () => {
    const agent = state.agents.get(state.editing);
    if (!agent) return;
    const isAdmin = !agent.is_admin;
    changeAgent("PATCH", "/api/admin/agents/{id}", { is_admin: isAdmin }, isAdmin ? "Admin role given." : "Admin role removed.");
  });

  ui.maxChatsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = Number(ui.maxChats.value);
    if (!Number.isInteger(value) || value < 1 || value > 50) {
      ui.dialogStatus.textContent = "";
      ui.dialogError.textContent = "Max chats must be a whole number from 1 to 50.";
      return;
    }
    changeAgent("PATCH", "/api/admin/agents/{id}", { max_chats: value }, "Max chats set to " + value + ".");
  });

  ui.departmentsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    let departments = null;
    if (!ui.departmentsAll.checked) {
      departments = [...ui.departmentsList.querySelectorAll("input:checked")].map((box) => box.value);
      if (departments.length === 0) {
        ui.dialogStatus.textContent = "";
        ui.dialogError.textContent = "Pick at least one department, or All departments.";
        return;
      }
    }
    const done = departments === null ? "Serves all departments." : "Serves " + servingText(departments) + ".";
    changeAgent("PATCH", "/api/admin/agents/{id}", { departments }, done);
  });

  ui.passwordForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const password = ui.password.value;
    if (password.length < 10) {
      ui.dialogStatus.textContent = "";
      ui.dialogError.textContent = "The password must have at least 10 characters.";
      return;
    }
    ui.password.value = "";
    changeAgent("POST", "/api/admin/agents/{id}/password", { password }, "Password reset. The agent's sessions were signed out.");
  });

  // Supervision.

  async function refreshOverview() {
    if (state.overviewBusy || !state.token || document.hidden) return;
    state.overviewBusy = true;
    try {
      const ticket = ++state.agentsRequested;
      const body = await api("GET", "/api/admin/overview");
      ui.overviewError.textContent = "";
      setAgents(body.agents, ticket);
      renderOverview(body);
      ui.overviewUpdated.textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (state.token) ui.overviewError.textContent = "The overview could not be loaded: " + error.message;
    } finally {
      state.overviewBusy = false;
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.overviewTimer !== null) refreshOverview();
  });

  function renderOverview(overview) {
    ui.queueBody.replaceChildren(
      ...overview.queue.map((entry) => {
        const tr = row([
          cell(String(entry.position)),
          cell(departmentName(entry.department)),
          cell(formatDuration(entry.waited_s)),
        ]);
        tr.dataset.chatId = entry.chat_id;
        return tr;
      }),
    );
    ui.queueEmpty.hidden = overview.queue.length > 0;

    const agents = [...overview.agents].sort((a, b) => a.name.localeCompare(b.name));
    ui.loadBody.replaceChildren(
      ...agents.map((agent) =>
        row([
          cell(agent.name + (agent.disabled ? " (disabled)" : "")),
          cell(agent.status),
          cell(agent.online ? "Yes" : "No"),
          cell(agent.load + " / " + agent.max_chats),
        ]),
      ),
    );

    // The overview lists every agent as GET /api/admin/agents does, so it
    // keeps the team table current too.
    renderTeam();
    renderDialog();

    const focused = document.activeElement && document.activeElement.dataset.watchChat;
    ui.chatsBody.replaceChildren(
      ...overview.chats.map((chat) => {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = "Watch";
        button.dataset.watchChat = chat.id;
        button.setAttribute("aria-label", "Watch the chat with " + chat.visitor.name);
        button.addEventListener("click", () => openWatch(chat));
        const tr = row([
          cell(chat.visitor.name),
          cell(chat.agent ? chat.agent.name : "—"),
          cell(departmentName(chat.department)),
          timeCell(chat.created_at),
          actionsCell(button),
        ]);
        tr.dataset.chatId = chat.id;
        return tr;
      }),
    );
    labelCells(ui.chatsBody.parentElement);
    ui.chatsEmpty.hidden = overview.chats.length > 0;
    if (focused) refocus(ui.chatsBody, "watch-chat", focused);
  }

  // Move focus to the redrawn copy of a button that had it.
  function refocus(container, attribute, value) {
    const button = container.querySelector("button[data-" + attribute + '="' + CSS.escape(value) + '"]');
    if (button) button.focus();
  }

  function formatDuration(seconds) {
    const whole = Math.floor(seconds);
    if (whole < 60) return whole + " s";
    if (whole < 3600) return Math.floor(whole / 60) + " min " + (whole % 60) + " s";
    return Math.floor(whole / 3600) + " h " + Math.floor((whole % 3600) / 60) + " min";
  }

  function timeCell(iso) {
    const td = document.createElement("td");
    const time = document.createElement("time");
    time.dateTime = iso;
    const date = new Date(iso);
    time.textContent = Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
    td.append(time);
    return td;
  }

  // Watching one chat, read-only.

  function openWatch(chat) {
    if (state.watch && state.watch.chatId !== chat.id) closeWatch({ notify: true });
    state.watch = { chatId: chat.id, chat, messages: new Map(), notes: [], ended: "", typing: null };
    ui.watchError.textContent = "";
    ui.watch.hidden = false;
    renderWatch();
    ui.watch.focus();
    sendWatch(chat.id);
  }

  async function sendWatch(chatId) {
    const socket = state.socket;
    if (!socket || !socket.connected) {
      // The "connect" handler sends watch_chat once the socket is up.
      ui.watchError.textContent = socket ? "Connecting to the server…" : "";
      return;
    }

    let reply;
    try {
      reply = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("watch_chat", { chat_id: chatId });
    } catch (error) {
      if (state.watch && state.watch.chatId === chatId) {
        ui.watchError.textContent = "The watch request timed out. Close the view and try again.";
      }
      return;
    }
    const watch = state.watch;
    if (!watch || watch.chatId !== chatId) return;
    if (!reply.ok) {
      ui.watchError.textContent = "The chat cannot be watched: " + reply.error.message;
      return;
    }

    ui.watchError.textContent = "";
    watch.chat = reply.chat;
    watch.notes = reply.notes;
    for (const message of reply.messages) watch.messages.set(message.seq, message);
    if (reply.chat.status !== "active" && reply.chat.status !== "queued" && !watch.ended) {
      watch.ended = "The chat has ended.";
    }
    renderWatch();
    if (reply.has_more) await fetchRest(watch);
  }

  // Load the messages that did not fit in the watch_chat reply, over HTTP.
  async function fetchRest(watch) {
    for (let page = 0; page < HISTORY_MAX_PAGES; page += 1) {
      let after = 0;
      for (const seq of watch.messages.keys()) after = Math.max(after, seq);
      const path =
        "/api/chats/" + encodeURIComponent(watch.chatId) + "/messages?after_seq=" + after + "&limit=" + HISTORY_PAGE_SIZE;
      let body;
      try {
        body = await api("GET", path);
      } catch (error) {
        if (state.watch === watch) ui.watchError.textContent = "Older messages could not be loaded: " + error.message;
        return;
      }
      if (state.watch !== watch) return;
      for (const message of body.messages) watch.messages.set(message.seq, message);
      renderWatch();
      if (!body.has_more) return;
    }
  }

  function closeWatch({ notify }) {
    const watch = state.watch;
    if (!watch) return;
    state.watch = null;
    ui.watch.hidden = true;
    ui.watchLog.replaceChildren();
    if (notify && state.socket && state.socket.connected) {
      state.socket.emit("unwatch_chat", { chat_id: watch.chatId });
    }
  }

  ui.watchClose.addEventListener("click", () => {
    const chatId = state.watch && state.watch.chatId;
    closeWatch({ notify: true });
    if (chatId) refocus(ui.chatsBody, "watch-chat", chatId);
    // The chat may have ended and left the table with its button.
    if (!ui.chatsBody.contains(document.activeElement)) $("chats-title").focus();
  });

  ui.watch.addEventListener("keydown", (event) => {
    if (event.key === "Escape") ui.watchClose.click();
  });

  function renderWatch() {
    const watch = state.watch;
    if (!watch) return;
    const chat = watch.chat;
    const agent = chat.agent ? chat.agent.name : "no agent";
    ui.watchTitle.textContent = "Watching " + chat.visitor.name + " with " + agent;
    ui.watchState.textContent =
      "Read-only · " + departmentName(chat.department) + (watch.ended ? " · ended" : " · live");

    const log = ui.watchLog;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const items = [];
    for (const message of watch.messages.values()) {
      items.push({ at: message.created_at, order: message.seq, node: messageNode(message) });
    }
    for (const note of watch.notes) {
      items.push({ at: note.created_at, order: Infinity, node: noteNode(note) });
    }
    // The server writes times as YYYY-MM-DDTHH:MM:SS.mmmZ, so they sort as strings.
    items.sort((a, b) => {
      if (a.at !== b.at) return a.at < b.at ? -1 : 1;
      return a.order - b.order;
    });
    const nodes = items.map((item) => item.node);
    if (watch.ended) {
      const end = document.createElement("div");
      end.className = "msg system";
      end.textContent = watch.ended;
      nodes.push(end);
    }
    log.replaceChildren(...nodes);
    if (atBottom) log.scrollTop = log.scrollHeight;
    let typist = "";
    if (watch.typing === "visitor") typist = chat.visitor.name;
    else if (watch.typing === "agent") typist = agent;
    ui.watchTyping.textContent = typist ? typist + " is typing…" : "";
  }

  function messageNode(message) {
    const node = document.createElement("div");
    node.className = "msg " + (message.sender.role === "agent" ? "agent" : "visitor");
    node.dataset.seq = String(message.seq);
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = message.sender.name + " · " + shortTime(message.created_at);
    node.append(text, meta);
    return node;
  }

  function noteNode(note) {
    const node = document.createElement("div");
    node.className = "msg note";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = note.text;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = "Internal note by " + note.author.name + " · " + shortTime(note.created_at);
    node.append(text, meta);
    return node;
  }

  function shortTime(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString();
  }

  // Audit log.

  async function loadAudit(beforeId) {
    let path = "/api/admin/audit?limit=" + AUDIT_PAGE_SIZE;
    if (beforeId !== undefined) path += "&before_id=" + beforeId;
    let body;
    try {
      body = await api("GET", path);
    } catch (error) {
      if (state.token) ui.auditError.textContent = "The audit log could not be loaded: " + error.message;
      return;
    }
    ui.auditError.textContent = "";
    state.audit = beforeId === undefined ? body.entries : state.audit.concat(body.entries);
    state.auditLoaded = true;
    ui.auditOlder.hidden = body.entries.length < AUDIT_PAGE_SIZE;
    renderAudit();
  }

  ui.auditRefresh.addEventListener("click", () => loadAudit());
  ui.auditOlder.addEventListener("click", () => {
    const last = state.audit[state.audit.length - 1];
    if (last) loadAudit(last.id);
  });

  function renderAudit() {
    ui.auditBody.replaceChildren(
      ...state.audit.map((entry) => {
        const tr = row([
          timeCell(entry.at),
          cell(entry.actor_id === null ? "command line" : agentName(entry.actor_id)),
          cell(ACTION_LABELS[entry.action] || entry.action),
          cell(entry.target_id === null ? "—" : agentName(entry.target_id)),
          cell(formatDetails(entry.details)),
        ]);
        tr.dataset.auditId = String(entry.id);
        tr.dataset.action = entry.action;
        return tr;
      }),
    );
    labelCells(ui.auditBody.parentElement);
    ui.auditEmpty.hidden = !state.auditLoaded || state.audit.length > 0;
  }

  function formatDetails(details) {
    if (!details) return "";
    return Object.entries(details)
      .map(([key, value]) => key.replace(/_/g, " ") + ": " + formatValue(key, value))
      .join(", ");
  }

  function formatValue(key, value) {
    if (key === "departments") return servingText(value);
    if (value === true) return "yes";
    if (value === false) return "no";
    if (value === null) return "none";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  start();
})();
