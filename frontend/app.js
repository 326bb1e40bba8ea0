// llmstream chat page: static, talks to the API and stream URLs from config.json, as the
// user signed in through auth.js (every API call carries their token).
// Model output is rendered by markdown.js, which only ever sets textContent.
"use strict";

const $ = (id) => document.getElementById(id);

// What the page remembers between reloads, per signed-in user and per tab (sessionStorage):
// the open conversation and the answer being followed. Another user in the same tab never
// sees it; signing out drops it.
const store = {
  user: null,
  key(key) { return `llmstream.user.${encodeURIComponent(this.user)}.${key}`; },
  get(key, fallback) {
    if (this.user === null) return fallback;
    try { return JSON.parse(sessionStorage.getItem(this.key(key))) ?? fallback; }
    catch { return fallback; }
  },
  set(key, value) { if (this.user !== null) sessionStorage.setItem(this.key(key), JSON.stringify(value)); },
  drop(key) { if (this.user !== null) sessionStorage.removeItem(this.key(key)); },
  forget(user) {
    const prefix = `llmstream.user.${encodeURIComponent(user)}.`;
    for (const key of Object.keys(sessionStorage)) if (key.startsWith(prefix)) sessionStorage.removeItem(key);
  },
};
// Before sign-in, the page kept its conversations in localStorage for everyone: gone.
for (const key of ["conversations", "current", "active"]) localStorage.removeItem(`llmstream.${key}`);

let config = null;
let epoch = 0; // bumped on sign-in and sign-out: answers that arrive later are dropped
let view = 0; // bumped when another conversation is opened
let sessionId = null;
let sessions = []; // GET /sessions: this user's conversations, most recently updated first
let running = null; // {taskId, sessionId, source?, abort?, bubble, parts, lastSeq}
let queueLight = "unknown"; // the last POST /chat's outcome (users who are not operators)
let operatorLights = true; // try /health/full while the user is in the admins group
let leaving = false; // the page is unloading: a dropped stream is not the answer's end
for (const type of ["beforeunload", "pagehide"]) window.addEventListener(type, () => { leaving = true; });

async function loadConfig() {
  config = await (await fetch("config.json", { cache: "no-store" })).json();
  config.apiUrl = config.apiUrl.replace(/\/$/, "");
  config.streamUrl = config.streamUrl.replace(/\/$/, "");
}

const api = (path) => `${config.apiUrl}${path}`;

function setStatus(text) { $("status").textContent = text; }

// An action that failed: say so, unless it failed because the user was signed out meanwhile.
function report(err) {
  if (!(err instanceof Auth.SignedOut)) setStatus(`error: ${err.message || err}`);
}

async function detailOf(res) {
  const body = await res.json().catch(() => ({}));
  const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
  return detail || res.statusText || `HTTP ${res.status}`;
}

function retryAfterSeconds(res) {
  const value = res.headers.get("retry-after");
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

function duration(seconds) {
  if (seconds < 90) return `${seconds} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  const minutes = Math.floor((seconds % 3600) / 60);
  return `${Math.floor(seconds / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
}

function timeLabel(date) {
  const t = document.createElement("time");
  t.dateTime = date.toISOString();
  t.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return t;
}

// An answer as it streams: its text and the function calls it makes, in order; each part
// {kind: "text", text} or {kind: "call", id, name, args}, drawn into an element of its own
// (part.el) so a redraw keeps what the reader opened.
function answerOf(text = "", calls = []) {
  const parts = [];
  if (text) parts.push({ kind: "text", text });
  for (const c of calls) parts.push({ kind: "call", id: c.id ?? "", name: c.name ?? "", args: c.arguments ?? "" });
  return parts;
}

function addText(parts, text) {
  const last = parts.at(-1);
  if (last?.kind === "text") last.text += text;
  else if (text) parts.push({ kind: "text", text });
}

// The arguments of the current call (the last one begun), as the server counts them.
function addArgs(parts, delta) {
  const call = parts.findLast((p) => p.kind === "call");
  if (call) call.args += delta;
}

// The calls of a `done` event, whole: they settle the streamed ones (and any not seen).
function settleCalls(parts, calls) {
  for (const c of Array.isArray(calls) ? calls : []) {
    const call = parts.find((p) => p.kind === "call" && p.id === c.id);
    if (call) call.args = c.arguments ?? call.args;
    else parts.push(...answerOf("", [c]));
  }
}

// A call's arguments: pretty-printed when they are JSON (once they are whole), else as sent.
function prettyArgs(args) {
  try { return JSON.stringify(JSON.parse(args), null, 2); } catch { return args; }
}

function drawAnswer(parts, body) {
  body.replaceChildren(...parts.map((part) => {
    if (part.kind === "text") {
      if (!part.el) part.el = document.createElement("div");
      if (part.drawn !== part.text) renderMarkdown(part.text, part.el);
      part.drawn = part.text;
      return part.el;
    }
    if (!part.el) {
      part.el = document.createElement("details");
      part.el.className = "call";
      const summary = document.createElement("summary");
      const icon = document.createElement("span");
      icon.setAttribute("aria-hidden", "true");
      icon.textContent = "⚙";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = part.name;
      summary.append(icon, " ", name);
      if (part.id) summary.title = `function call ${part.id}`;
      const pre = document.createElement("pre");
      pre.appendChild(document.createElement("code"));
      part.el.append(summary, pre);
    }
    if (part.drawn !== part.args) part.el.querySelector("code").textContent = prettyArgs(part.args);
    part.drawn = part.args;
    return part.el;
  }));
}

function bubble(role, text, when = new Date()) {
  const wrap = document.createElement("article");
  wrap.className = `msg ${role}`;
  wrap.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
  const body = document.createElement("div");
  body.className = "body";
  if (role === "user") body.textContent = text;
  else drawAnswer(answerOf(text), body);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.appendChild(timeLabel(when));
  wrap.append(body, meta);
  $("log").appendChild(wrap);
  wrap.scrollIntoView({ block: "end" });
  return wrap;
}

function typing(wrap, on) {
  let dots = wrap.querySelector(".typing");
  if (on && !dots) {
    dots = document.createElement("span");
    dots.className = "typing";
    dots.setAttribute("aria-label", "Assistant is typing");
    dots.append(...[0, 1, 2].map(() => document.createElement("i")));
    wrap.querySelector(".body").after(dots);
  } else if (!on && dots) dots.remove();
}

let renderPending = false;
function showAnswer(state) {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    if (state.finished) return; // finish() drew the final answer and its note
    drawAnswer(state.parts, state.bubble.querySelector(".body"));
    state.bubble.scrollIntoView({ block: "end" });
  });
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("message").disabled = false;
}

// Stop following the current answer without a word (sign-out, a deleted conversation):
// the answer itself goes on or is cancelled by the server.
function abandon() {
  if (!running) return;
  running.finished = true;
  running.source?.close();
  running.abort?.abort();
  running = null;
  store.drop("active");
  busy(false);
}

// ---------------------------------------------------------------- conversations
async function loadConversations() {
  const e = epoch;
  const res = await authFetch(api("/sessions"));
  if (e !== epoch) return;
  if (!res.ok) { setStatus(`could not load the conversations: ${await detailOf(res)}`); return; }
  const body = await res.json();
  if (e !== epoch) return;
  sessions = body.sessions;
  drawConversations();
}

function drawConversations() {
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of sessions) {
    const title = c.title || "Conversation";
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = c.session_id === sessionId ? "open current" : "open";
    open.textContent = title;
    if (c.session_id === sessionId) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => openSession(c.session_id).catch(report));
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete ${title}`);
    del.addEventListener("click", () => deleteSession(c).catch(report));
    li.append(open, del);
    ul.appendChild(li);
  }
}

async function deleteSession(c) {
  if (!window.confirm(`Delete the conversation "${c.title || "Conversation"}"?`)) return;
  const e = epoch;
  const res = await authFetch(api(`/sessions/${encodeURIComponent(c.session_id)}`), { method: "DELETE" });
  if (e !== epoch) return;
  if (!res.ok && res.status !== 404) { setStatus(`could not delete: ${await detailOf(res)}`); return; }
  if (running?.sessionId === c.session_id) abandon(); // the server cancelled its answer
  sessions = sessions.filter((s) => s.session_id !== c.session_id);
  if (sessionId === c.session_id) await openSession(null);
  else drawConversations();
  setStatus("Conversation deleted.");
  loadConversations().catch(report);
}

async function openSession(id) {
  if (running) return;
  const e = epoch;
  const v = ++view;
  sessionId = id;
  if (id) store.set("current", id); else store.drop("current");
  drawConversations();
  $("log").replaceChildren();
  setStatus("");
  if (!id) return;
  const res = await authFetch(api(`/sessions/${encodeURIComponent(id)}`));
  if (e !== epoch || v !== view) return;
  if (!res.ok) {
    if (res.status === 404) { sessionId = null; store.drop("current"); drawConversations(); }
    else setStatus(`could not load the conversation: ${await detailOf(res)}`);
    return;
  }
  const turns = (await res.json()).turns;
  if (e !== epoch || v !== view) return;
  const active = store.get("active", null);
  for (const turn of turns) {
    // (a turn that only sends the results of the last answer's calls has no message)
    if (turn.message) bubble("user", turn.message, new Date(turn.created_at * 1000));
    if (active && active.taskId === turn.task_id) continue; // resumed below
    const b = bubble("assistant", "", new Date((turn.finished_at || turn.created_at) * 1000));
    const calls = Array.isArray(turn.calls) ? turn.calls : null;
    drawAnswer(answerOf(turn.answer ?? "", calls ?? []), b.querySelector(".body"));
    b.classList.add(turn.status);
    if (!turn.answer && turn.status !== "done") b.querySelector(".body").textContent = `[${turn.status}]`;
    else if (!turn.answer && !calls?.length) drawCalls(turn.task_id, b, e, v).catch(report);
  }
  if (active && active.sessionId === id) follow(active.taskId, id, active.streamUrl, bubble("assistant", ""));
}

// A done answer without text may have been function calls alone, which a session's turns
// do not carry: GET /chat/{task_id} has them (as long as the answer's chunk log is kept).
async function drawCalls(taskId, wrap, e, v) {
  const res = await authFetch(api(`/chat/${encodeURIComponent(taskId)}`));
  if (e !== epoch || v !== view || !res.ok) return;
  const task = await res.json();
  if (e !== epoch || v !== view) return;
  drawAnswer(answerOf(task.text ?? "", task.calls ?? []), wrap.querySelector(".body"));
}

// ---------------------------------------------------------------- queue mode
function follow(taskId, taskSession, streamUrl, wrap) {
  const state = { taskId, sessionId: taskSession, bubble: wrap, parts: [], lastSeq: 0, renewals: 0 };
  running = state;
  busy(true);
  typing(wrap, true);
  setStatus("queued");
  connect(state, streamUrl);
}

function connect(state, url) {
  const source = new EventSource(url);
  state.source = source;
  source.onopen = () => {
    state.renewals = 0;
    setLight("light-stream", "ok");
    if (state.parts.length) setStatus("streaming");
  };
  source.onmessage = (e) => {
    if (state.finished) return;
    if (/^\d+$/.test(e.lastEventId)) state.lastSeq = Number(e.lastEventId);
    const data = JSON.parse(e.data);
    if (data.chunk !== undefined) {
      addText(state.parts, data.chunk);
      setStatus("streaming");
      showAnswer(state);
    } else if (data.type === "call") {
      state.parts.push({ kind: "call", id: data.id ?? "", name: data.name ?? "", args: "" });
      setStatus("streaming");
      showAnswer(state);
    } else if (data.type === "args") {
      addArgs(state.parts, data.delta ?? "");
      showAnswer(state);
    } else if (data.type === "reset") {
      state.parts = []; // the text and the calls start over
      showAnswer(state);
      setStatus(`retrying (attempt ${data.attempt})`);
    } else if (data.type) {
      finish(state, data);
    }
  };
  // Named `status` events: the answer's worker went silent (it died); a new attempt follows
  // within the heartbeat window, starting with a reset.
  source.addEventListener("status", (e) => {
    if (state.finished) return;
    const data = JSON.parse(e.data);
    if (data.state === "worker_lost") setStatus("worker lost, retrying…");
  });
  source.onerror = () => {
    if (leaving || state.finished || state.source !== source) return; // keep it active: the next load resumes
    if (source.readyState === EventSource.CONNECTING) {
      setStatus("reconnecting…"); // EventSource resumes with Last-Event-ID by itself
      setLight("light-stream", "warn");
    } else {
      renew(state);
    }
  };
}

// The stream refused the connection (its signed URL expired, say): ask the API for a fresh
// one and go on after the last event seen. A second refusal in a row ends the answer.
async function renew(state) {
  state.source.close();
  if (state.renewals >= 1) {
    finish(state, { type: "error", message: "the stream was refused" });
    return;
  }
  state.renewals += 1;
  setStatus("reconnecting…");
  try {
    const res = await authFetch(api(`/chat/${encodeURIComponent(state.taskId)}`));
    if (state.finished) return;
    if (!res.ok) throw new Error(await detailOf(res));
    const body = await res.json();
    if (state.finished) return;
    if (!body.stream_url) throw new Error("no stream_url in the task's status");
    store.set("active", { taskId: state.taskId, streamUrl: body.stream_url, sessionId: state.sessionId });
    const url = new URL(body.stream_url);
    url.searchParams.set("after", String(state.lastSeq));
    connect(state, url.href);
  } catch (err) {
    if (!state.finished) finish(state, { type: "error", message: `the stream was refused (${err.message})` });
  }
}

function finish(state, data) {
  if (state.finished) return;
  state.finished = true;
  state.source?.close();
  typing(state.bubble, false);
  if (data.type === "done") settleCalls(state.parts, data.calls);
  drawAnswer(state.parts, state.bubble.querySelector(".body"));
  if (data.type === "error") {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = `Error: ${data.message}`;
    state.bubble.querySelector(".body").appendChild(note);
  } else if (data.type === "cancelled") {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = "Stopped.";
    state.bubble.querySelector(".body").appendChild(note);
  }
  state.bubble.classList.add(data.type);
  state.bubble.querySelector(".meta").replaceChildren(timeLabel(new Date()));
  setStatus(data.type === "done" ? "" : data.type);
  if (running === state) {
    running = null;
    store.drop("active");
    busy(false);
  }
}

function failed(wrap, text) {
  typing(wrap, false);
  wrap.querySelector(".body").textContent = text;
  wrap.classList.add("error");
}

// A request the API did not take: its reason in the bubble; a spent quota (429) says when
// to try again (Retry-After).
async function refused(res, wrap) {
  const detail = await detailOf(res);
  if (res.status === 429) {
    const wait = retryAfterSeconds(res);
    const when = wait === null ? "" : duration(wait);
    failed(wrap, `Not sent: ${detail.replace(/\.$/, "")}.${when && ` Try again in ${when}.`}`);
    setStatus(`limit reached${when && `: try again in ${when}`}`);
  } else {
    failed(wrap, `Error ${res.status}: ${detail}`);
    setStatus("");
  }
}

async function sendQueued(message, priority) {
  const e = epoch;
  bubble("user", message);
  const wrap = bubble("assistant", "");
  typing(wrap, true);
  setStatus("sending…");
  const res = await authFetch(api("/chat"), {
    method: "POST",
    headers: { "content-type": "application/json", "idempotency-key": crypto.randomUUID() },
    body: JSON.stringify({ message, priority, session_id: sessionId || undefined }),
  });
  if (e !== epoch) return;
  if (res.status === 202) queueLight = "ok";
  else if (res.status === 503) queueLight = "down";
  if (!operatorLights || !Auth.user()?.admin) setLight("light-queue", queueLight);
  if (res.status !== 202) {
    await refused(res, wrap);
    return;
  }
  const body = await res.json();
  if (e !== epoch) return;
  sessionId = body.session_id;
  store.set("current", sessionId);
  if (!sessions.some((s) => s.session_id === sessionId)) {
    sessions.unshift({ session_id: sessionId, title: message.split(/\s+/).join(" ").trim().slice(0, 80), turns: 1 });
  }
  drawConversations();
  store.set("active", { taskId: body.task_id, streamUrl: body.stream_url, sessionId });
  follow(body.task_id, sessionId, body.stream_url, wrap);
  loadConversations().catch(report); // the server's order and titles
}

// ---------------------------------------------------------------- direct mode
async function sendDirect(message) {
  bubble("user", message);
  const wrap = bubble("assistant", "");
  const state = { bubble: wrap, parts: [], abort: new AbortController() };
  running = state;
  busy(true);
  typing(wrap, true);
  setStatus("direct");
  try {
    const res = await authFetch(`${config.streamUrl}/direct`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ message, session_id: sessionId || undefined }),
      signal: state.abort.signal,
    });
    if (!res.ok) {
      state.finished = true;
      running = null;
      busy(false);
      await refused(res, wrap);
      return;
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      addText(state.parts, value);
      showAnswer(state);
    }
    finish(state, { type: "done" });
  } catch (err) {
    finish(state, state.abort.signal.aborted ? { type: "cancelled" } : { type: "error", message: String(err.message || err) });
  }
}

// ---------------------------------------------------------------- status lights
function setLight(id, state) { $(id).dataset.state = state; $(id).title = state; }

// API and Stream: the two apps' /health (no sign-in needed). Queue: for operators (the
// admins group) /health/full; for everyone else the outcome of their last POST /chat.
async function refreshLights() {
  const e = epoch;
  let apiState = "down";
  try { apiState = (await fetch(api("/health"), { cache: "no-store" })).ok ? "ok" : "down"; } catch { /* down */ }
  try {
    const res = await fetch(`${config.streamUrl}/health`, { cache: "no-store" });
    if (!running?.source) setLight("light-stream", res.ok ? "ok" : "down");
  } catch { setLight("light-stream", "down"); }
  const who = Auth.user();
  let queueState = who ? queueLight : "unknown";
  if (who?.admin && operatorLights && apiState === "ok") {
    try {
      const res = await authFetch(api("/health/full"));
      if (res.status === 403) operatorLights = false; // the API says otherwise: as for everyone
      else {
        const body = await res.json();
        if (!(body.model?.ok && Object.values(body.tables).every((t) => t.ok))) apiState = "warn";
        queueState = Object.values(body.queues).every((q) => q.ok) ? "ok" : "down";
      }
    } catch { queueState = "unknown"; }
  }
  if (e !== epoch) return; // signed out or in meanwhile: the next round is theirs
  setLight("light-api", apiState);
  setLight("light-queue", queueState);
}

// ---------------------------------------------------------------- what the user may ask for
// A priority above 0 is for the API's PriorityGroup (403 for anyone else): the page offers
// only the priorities GET /me says this user may send.
function offerPriorities(maxPriority) {
  const select = $("priority");
  for (const option of select.options) {
    const refused = Number(option.value) > maxPriority;
    option.hidden = refused;
    option.disabled = refused;
  }
  if (select.selectedOptions[0]?.disabled) select.value = "0";
}

async function loadAccount() {
  const e = epoch;
  const res = await authFetch(api("/me"));
  if (e !== epoch || !res.ok) return;
  offerPriorities((await res.json()).max_priority);
}

// ---------------------------------------------------------------- sign-in and sign-out
async function signedIn(user) {
  epoch += 1;
  store.user = user.name;
  queueLight = "unknown";
  operatorLights = true;
  sessionId = store.get("current", null);
  sessions = [];
  drawConversations();
  offerPriorities(0);
  refreshLights();
  ApiKeys.start(config);
  await Promise.all([loadConversations(), openSession(sessionId), loadAccount()]).catch(report);
  $("message").focus();
}

function signedOut(user) {
  epoch += 1;
  abandon();
  ApiKeys.stop();
  if (user) store.forget(user.name);
  store.user = null;
  sessionId = null;
  sessions = [];
  drawConversations();
  $("log").replaceChildren();
  $("message").value = "";
  setStatus("");
  queueLight = "unknown";
  setLight("light-queue", "unknown");
  offerPriorities(0);
  document.body.classList.remove("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}

// ---------------------------------------------------------------- wiring
function submit() {
  const message = $("message").value.trim();
  if (!message || running) return;
  $("message").value = "";
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const priority = Number($("priority").value);
  (mode === "direct" ? sendDirect(message) : sendQueued(message, priority))
    .catch((err) => {
      if (err instanceof Auth.SignedOut) return;
      report(err);
      busy(false);
      running = null;
    });
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
});
$("stop").addEventListener("click", async () => {
  if (!running) return;
  if (running.abort) { running.abort.abort(); return; }
  setStatus("stopping…");
  const res = await authFetch(api(`/chat/${encodeURIComponent(running.taskId)}/cancel`), { method: "POST" })
    .catch((err) => ({ ok: false, statusText: String(err.message || err) }));
  if (!res.ok && running) setStatus(`could not stop: ${res.statusText || res.status}`);
});
$("new-chat").addEventListener("click", () => { if (!running) openSession(null); });
$("toggle-sidebar").addEventListener("click", () => {
  const open = document.body.classList.toggle("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", String(open));
});

loadConfig().then(async () => {
  refreshLights();
  setInterval(() => refreshLights().catch(() => {}), 5000);
  await Auth.start(config.auth, { onSignIn: signedIn, onSignOut: signedOut });
}).catch((err) => {
  $("signin").hidden = false;
  $("signin-error").textContent = `could not load config.json: ${err}`;
});
