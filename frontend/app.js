// llmstream chat page: static, talks to the API and stream URLs from config.json.
// Model output is rendered by markdown.js, which only ever sets textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const store = {
  get(key, fallback) {
    try { return JSON.parse(localStorage.getItem(`llmstream.${key}`)) ?? fallback; }
    catch { return fallback; }
  },
  set(key, value) { localStorage.setItem(`llmstream.${key}`, JSON.stringify(value)); },
  drop(key) { localStorage.removeItem(`llmstream.${key}`); },
};

let config = null;
let sessionId = store.get("current", null);
let running = null; // {taskId, source?, abort?, bubble, text}
let leaving = false; // the page is unloading: a dropped stream is not the answer's end
for (const type of ["beforeunload", "pagehide"]) window.addEventListener(type, () => { leaving = true; });

async function loadConfig() {
  config = await (await fetch("config.json", { cache: "no-store" })).json();
  config.apiUrl = config.apiUrl.replace(/\/$/, "");
  config.streamUrl = config.streamUrl.replace(/\/$/, "");
}

function setStatus(text) { $("status").textContent = text; }

function timeLabel(date) {
  const t = document.createElement("time");
  t.dateTime = date.toISOString();
  t.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return t;
}

function bubble(role, text, when = new Date()) {
  const wrap = document.createElement("article");
  wrap.className = `msg ${role}`;
  wrap.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
  const body = document.createElement("div");
  body.className = "body";
  if (role === "user") body.textContent = text;
  else renderMarkdown(text, body);
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
function showText(state) {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    if (state.finished) return; // finish() drew the final text and its note
    renderMarkdown(state.text, state.bubble.querySelector(".body"));
    state.bubble.scrollIntoView({ block: "end" });
  });
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("message").disabled = false;
}

// ---------------------------------------------------------------- conversations
function conversations() { return store.get("conversations", []); }

function remember(id, title) {
  const list = conversations().filter((c) => c.id !== id);
  const old = conversations().find((c) => c.id === id);
  list.unshift({ id, title: old?.title || title.slice(0, 60), at: Date.now() });
  store.set("conversations", list.slice(0, 50));
  drawConversations();
}

function drawConversations() {
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of conversations()) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.textContent = c.title || "Conversation";
    b.className = c.id === sessionId ? "current" : "";
    if (c.id === sessionId) b.setAttribute("aria-current", "true");
    b.addEventListener("click", () => openSession(c.id));
    li.appendChild(b);
    ul.appendChild(li);
  }
}

async function openSession(id) {
  if (running) return;
  sessionId = id;
  store.set("current", id);
  drawConversations();
  $("log").replaceChildren();
  if (!id) { setStatus(""); return; }
  const res = await fetch(`${config.apiUrl}/sessions/${encodeURIComponent(id)}`);
  if (!res.ok) { setStatus(res.status === 404 ? "" : `could not load (${res.status})`); return; }
  const active = store.get("active", null);
  for (const turn of (await res.json()).turns) {
    bubble("user", turn.message, new Date(turn.created_at * 1000));
    if (active && active.taskId === turn.task_id) continue; // resumed below
    const b = bubble("assistant", turn.answer ?? "", new Date((turn.finished_at || turn.created_at) * 1000));
    if (turn.status !== "done") b.classList.add(turn.status);
    if (!turn.answer && turn.status !== "done") b.querySelector(".body").textContent = `[${turn.status}]`;
  }
  if (active && active.sessionId === id) follow(active.taskId, active.streamUrl, bubble("assistant", ""));
}

// ---------------------------------------------------------------- queue mode
function follow(taskId, streamUrl, wrap) {
  const state = { taskId, bubble: wrap, text: "", source: new EventSource(streamUrl) };
  running = state;
  busy(true);
  typing(wrap, true);
  setStatus("queued");
  state.source.onopen = () => { setLight("light-stream", "ok"); if (state.text) setStatus("streaming"); };
  state.source.onmessage = (e) => {
    const data = JSON.parse(e.data);
    if (data.chunk !== undefined) {
      state.text += data.chunk;
      setStatus("streaming");
      showText(state);
    } else if (data.type === "reset") {
      state.text = "";
      showText(state);
      setStatus(`retrying (attempt ${data.attempt})`);
    } else if (data.type) {
      finish(state, data);
    }
  };
  state.source.onerror = () => {
    if (leaving) return; // keep the task as active: the next load resumes it
    if (state.source.readyState === EventSource.CONNECTING) {
      setStatus("reconnecting…"); // EventSource resumes with Last-Event-ID by itself
      setLight("light-stream", "warn");
    } else {
      finish(state, { type: "error", message: "the stream was refused" });
    }
  };
}

function finish(state, data) {
  state.finished = true;
  state.source?.close();
  typing(state.bubble, false);
  renderMarkdown(state.text, state.bubble.querySelector(".body"));
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
  running = null;
  store.drop("active");
  busy(false);
}

async function sendQueued(message, priority) {
  bubble("user", message);
  const wrap = bubble("assistant", "");
  typing(wrap, true);
  setStatus("sending…");
  const res = await fetch(`${config.apiUrl}/chat`, {
    method: "POST",
    headers: { "content-type": "application/json", "idempotency-key": crypto.randomUUID() },
    body: JSON.stringify({ message, priority, session_id: sessionId || undefined }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.status !== 202) {
    typing(wrap, false);
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    wrap.querySelector(".body").textContent = `Error ${res.status}: ${detail || res.statusText}`;
    wrap.classList.add("error");
    setStatus("");
    return;
  }
  sessionId = body.session_id;
  store.set("current", sessionId);
  remember(sessionId, message);
  store.set("active", { taskId: body.task_id, streamUrl: body.stream_url, sessionId });
  follow(body.task_id, body.stream_url, wrap);
}

// ---------------------------------------------------------------- direct mode
async function sendDirect(message) {
  bubble("user", message);
  const wrap = bubble("assistant", "");
  const state = { bubble: wrap, text: "", abort: new AbortController() };
  running = state;
  busy(true);
  typing(wrap, true);
  setStatus("direct");
  try {
    const res = await fetch(`${config.streamUrl}/direct`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ message, session_id: sessionId || undefined }),
      signal: state.abort.signal,
    });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      state.text += value;
      showText(state);
    }
    finish(state, { type: "done" });
  } catch (err) {
    finish(state, state.abort.signal.aborted ? { type: "cancelled" } : { type: "error", message: String(err) });
  }
}

// ---------------------------------------------------------------- status lights
function setLight(id, state) { $(id).dataset.state = state; $(id).title = state; }

async function refreshLights() {
  try {
    const res = await fetch(`${config.apiUrl}/health/full`);
    const body = await res.json();
    setLight("light-api", body.model?.ok && Object.values(body.tables).every((t) => t.ok) ? "ok" : "warn");
    setLight("light-queue", Object.values(body.queues).every((q) => q.ok) ? "ok" : "down");
  } catch { setLight("light-api", "down"); setLight("light-queue", "unknown"); }
  try {
    const res = await fetch(`${config.streamUrl}/health`);
    if (!running) setLight("light-stream", res.ok ? "ok" : "down");
  } catch { setLight("light-stream", "down"); }
}

// ---------------------------------------------------------------- wiring
function submit() {
  const message = $("message").value.trim();
  if (!message || running) return;
  $("message").value = "";
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const priority = Number($("priority").value);
  (mode === "direct" ? sendDirect(message) : sendQueued(message, priority))
    .catch((err) => { setStatus(`error: ${err}`); busy(false); running = null; });
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
});
$("stop").addEventListener("click", async () => {
  if (!running) return;
  if (running.abort) { running.abort.abort(); return; }
  setStatus("stopping…");
  await fetch(`${config.apiUrl}/chat/${running.taskId}/cancel`, { method: "POST" });
});
$("new-chat").addEventListener("click", () => { if (!running) { store.drop("current"); openSession(null); } });
$("toggle-sidebar").addEventListener("click", () => {
  const open = document.body.classList.toggle("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", String(open));
});

loadConfig().then(async () => {
  drawConversations();
  refreshLights();
  setInterval(refreshLights, 5000);
  await openSession(sessionId);
  $("message").focus();
}).catch((err) => setStatus(`could not load config.json: ${err}`));
