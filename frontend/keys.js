// The "API keys" panel of the chat page: the signed-in user's personal API keys (GET /keys),
// a new one (POST /keys: the key is shown this once, with a copy button), and revoke
// (DELETE /keys/{id}). Keys work on the stream URL: OpenAI clients with base_url
// <stream url>/v1, and /stream/{task_id}. Every call goes through authFetch (auth.js), as
// the user signed in: the api takes sign-in tokens only. Everything from the API is set as
// textContent.
"use strict";

(function (global) {
  const $ = (id) => document.getElementById(id);
  let urls = null; // {api, stream}, without a trailing slash
  let epoch = 0; // bumped on sign-in and sign-out: answers that arrive later are dropped

  function status(text) { $("keys-status").textContent = text; }

  async function detail(res) {
    const body = await res.json().catch(() => ({}));
    const d = Array.isArray(body.detail) ? body.detail.map((x) => x.msg).join("; ") : body.detail;
    return d || res.statusText || `HTTP ${res.status}`;
  }

  function report(err) {
    if (!(err instanceof Auth.SignedOut)) status(`error: ${err.message || err}`);
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const t = document.createElement("time");
    const date = new Date(seconds * 1000);
    t.dateTime = date.toISOString();
    t.textContent = date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    return t;
  }

  function cell(row, content) {
    const td = document.createElement("td");
    td.append(content);
    row.appendChild(td);
    return td;
  }

  function draw(keys) {
    const body = $("keys-list");
    body.replaceChildren();
    for (const key of keys) {
      const row = document.createElement("tr");
      row.dataset.keyId = key.id;
      cell(row, key.name);
      const prefix = document.createElement("code");
      prefix.textContent = `${key.prefix}…`;
      cell(row, prefix);
      cell(row, when(key.created_at));
      cell(row, when(key.last_used_at));
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "revoke";
      revoke.textContent = "Revoke";
      revoke.setAttribute("aria-label", `Revoke ${key.name}`);
      revoke.addEventListener("click", () => remove(key).catch(report));
      cell(row, revoke);
      body.appendChild(row);
    }
    $("keys-table").hidden = keys.length === 0;
    $("keys-empty").hidden = keys.length !== 0;
  }

  async function load() {
    const e = epoch;
    const res = await authFetch(`${urls.api}/keys`);
    if (e !== epoch) return;
    if (!res.ok) { status(`could not load your keys: ${await detail(res)}`); return; }
    const body = await res.json();
    if (e === epoch) draw(body.keys);
  }

  function forget() {
    // The key is shown once: it leaves the page when the panel closes.
    $("keys-secret").value = "";
    $("keys-new").hidden = true;
    $("keys-copied").textContent = "";
  }

  async function create(event) {
    event.preventDefault();
    const e = epoch;
    const name = $("keys-name").value.trim();
    if (!name) return;
    forget();
    status("creating…");
    const res = await authFetch(`${urls.api}/keys`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name }),
    });
    if (e !== epoch) return;
    if (res.status !== 201) { status(`could not create the key: ${await detail(res)}`); return; }
    const made = await res.json();
    if (e !== epoch) return;
    $("keys-form").reset();
    $("keys-secret").value = made.key;
    $("keys-new").hidden = false;
    $("keys-secret").select();
    status(`Key "${made.name}" created.`);
    await load();
  }

  async function copy() {
    const field = $("keys-secret");
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
      $("keys-copied").textContent = "Copied.";
    } catch {
      $("keys-copied").textContent = "Selected: copy it with Ctrl+C (⌘C).";
    }
  }

  async function remove(key) {
    if (!window.confirm(`Revoke the key "${key.name}" (${key.prefix}…)? Programs using it stop working at once.`)) return;
    const e = epoch;
    const res = await authFetch(`${urls.api}/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
    if (e !== epoch) return;
    if (!res.ok && res.status !== 404) { status(`could not revoke: ${await detail(res)}`); return; }
    status(`Key "${key.name}" revoked.`);
    await load();
  }

  function open() {
    status("");
    $("keys-dialog").showModal();
    $("keys-name").focus();
    load().catch(report);
  }

  function close() {
    forget();
    if ($("keys-dialog").open) $("keys-dialog").close();
  }

  // The page's config (config.json) once a user is signed in; nothing before that.
  function start(config) {
    epoch += 1;
    urls = { api: config.apiUrl.replace(/\/$/, ""), stream: config.streamUrl.replace(/\/$/, "") };
    $("keys-base-url").textContent = `${urls.stream}/v1`;
    $("keys-list").replaceChildren();
    status("");
  }

  function stop() {
    epoch += 1;
    close();
    $("keys-list").replaceChildren();
    $("keys-form").reset();
  }

  $("open-keys").addEventListener("click", open);
  $("keys-close").addEventListener("click", close);
  $("keys-dialog").addEventListener("close", forget); // Esc closes it too
  $("keys-form").addEventListener("submit", (e) => create(e).catch(report));
  $("keys-copy").addEventListener("click", () => copy());

  global.ApiKeys = { start, stop };
})(window);
