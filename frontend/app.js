// Minimal chat page: POST /chat, then follow stream_url with EventSource.
// Model output is only ever inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let config = null;
let sessionId = null;

async function loadConfig() {
  if (!config) config = await (await fetch("config.json")).json();
  return config;
}

function bubble(role, text) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  el.textContent = text;
  $("log").appendChild(el);
  return el;
}

async function send(message) {
  const { apiUrl } = await loadConfig();
  bubble("user", message);
  const answer = bubble("assistant", "");
  $("status").textContent = "queued";
  const res = await fetch(`${apiUrl}/chat`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ message, session_id: sessionId || undefined }),
  });
  const body = await res.json();
  if (res.status !== 202) {
    answer.textContent = `error: ${JSON.stringify(body.detail)}`;
    $("status").textContent = "";
    return;
  }
  sessionId = body.session_id;
  const source = new EventSource(body.stream_url);
  source.onmessage = (e) => {
    const data = JSON.parse(e.data);
    if (data.chunk !== undefined) {
      answer.textContent += data.chunk;
      $("status").textContent = "streaming";
    } else if (data.type === "reset") {
      answer.textContent = "";
    } else if (data.type) {
      if (data.type === "error") answer.textContent += `\n[error: ${data.message}]`;
      answer.classList.add("done");
      $("status").textContent = data.type;
      source.close();
    }
  };
  source.onerror = () => { $("status").textContent = "reconnecting"; };
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  $("message").value = "";
  send(text).catch((err) => { $("status").textContent = `error: ${err}`; });
});
