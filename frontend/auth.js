// Sign-in for the chat page and the dashboard: Cognito's JSON API (USER_PASSWORD_AUTH,
// unsigned), the same locally (the emulator's user pool) and in the cloud. Tokens live in
// sessionStorage only: a reload keeps you signed in, closing the tab forgets you. The JWT
// payload is read for display (name, groups) and nothing else: the API decides who may do what.
//
// A page includes this file (a plain script at the end of <body>), marks what only a
// signed-in user sees with `data-signed-in`, puts the placeholders <div id="account" hidden>
// (in its header) and <main id="signin" hidden> where they belong (this file fills them in
// at once, so both pages share one sign-in form), and calls
// Auth.start(config.auth, { onSignIn(user), onSignOut(user) }). Every API call goes through
// authFetch(url, options), which adds the Bearer header, refreshes the tokens shortly before
// they expire and once on a 401, and goes back to the sign-in form when that fails.
"use strict";

(function (global) {
  const KEY = "llmstream.auth";
  const REFRESH_EARLY_MS = 60_000; // refresh this long before the access token expires
  const COGNITO = "AWSCognitoIdentityProviderService";
  const el = (id) => document.getElementById(id);

  let settings = null; // config.auth: {region, clientId, endpoint}
  let hooks = {};
  let tokens = null; // {clientId, access, id, refresh, expiresAt (ms)}
  let generation = 0; // bumped on every sign-in and sign-out: late answers are dropped
  let refreshing = null; // the refresh in progress (one at a time)
  let refreshTimer = null;
  let challenge = null; // {session, username} while Cognito asks for a new password

  class SignedOut extends Error {} // the caller's user is not signed in (any more)
  class Stale extends Error {} // someone signed out or in while this was under way
  const EXPIRED = "Your sign-in has expired. Sign in again.";

  // ---------------------------------------------------------------- tokens
  function claims(jwt) {
    // For display only: the signature is not checked here (the API checks it).
    try {
      const b64 = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bin = atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "="));
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    } catch { return {}; }
  }

  function load() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(KEY));
      if (saved && saved.access && saved.clientId === settings.clientId) return saved;
    } catch { /* nothing usable */ }
    sessionStorage.removeItem(KEY);
    return null;
  }

  function accept(result, refreshToken) {
    const lifetime = Number(result.ExpiresIn) > 0 ? Number(result.ExpiresIn) * 1000
      : Math.max(0, (claims(result.AccessToken).exp || 0) * 1000 - Date.now());
    tokens = {
      clientId: settings.clientId,
      access: result.AccessToken,
      id: result.IdToken || null,
      refresh: result.RefreshToken || refreshToken || null,
      expiresAt: Date.now() + lifetime,
    };
    sessionStorage.setItem(KEY, JSON.stringify(tokens));
    schedule();
  }

  function schedule() {
    clearTimeout(refreshTimer);
    if (!tokens?.refresh) return;
    const wait = Math.max(5_000, tokens.expiresAt - Date.now() - REFRESH_EARLY_MS);
    refreshTimer = setTimeout(() => {
      refresh().catch((err) => {
        if (err instanceof Stale) return;
        if (err instanceof SignedOut || isRejection(err)) signOut(EXPIRED);
        else schedule(); // the sign-in service did not answer: try again later
      });
    }, Math.min(wait, 2 ** 31 - 1));
  }

  function user() {
    if (!tokens) return null;
    const access = claims(tokens.access);
    const id = tokens.id ? claims(tokens.id) : {};
    const groups = Array.isArray(access["cognito:groups"]) ? access["cognito:groups"].map(String) : [];
    const name = String(access.username || id["cognito:username"] || "");
    return { name, display: String(id.email || name), groups, admin: groups.includes("admins") };
  }

  // ---------------------------------------------------------------- Cognito
  class CognitoError extends Error {
    constructor(type, message, status) { super(message); this.type = type; this.status = status; }
  }

  async function cognito(action, body) {
    const res = await fetch(settings.endpoint, {
      method: "POST",
      headers: { "content-type": "application/x-amz-json-1.1", "x-amz-target": `${COGNITO}.${action}` },
      body: JSON.stringify(body),
      cache: "no-store",
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const type = String(data.__type || "").split("#").pop();
      throw new CognitoError(type, data.message || data.Message || `the sign-in service answered ${res.status}`, res.status);
    }
    return data;
  }

  // Cognito said no (as opposed to: Cognito could not be reached).
  function isRejection(err) { return err instanceof CognitoError && err.status >= 400 && err.status < 500; }

  // New tokens from the refresh token (one request at a time, shared by its callers).
  function refresh() {
    if (!refreshing) {
      const gen = generation;
      const pending = (async () => {
        if (!tokens?.refresh) throw new SignedOut("no refresh token");
        const data = await cognito("InitiateAuth", {
          AuthFlow: "REFRESH_TOKEN_AUTH",
          ClientId: settings.clientId,
          AuthParameters: { REFRESH_TOKEN: tokens.refresh },
        });
        if (gen !== generation) throw new Stale("signed out meanwhile");
        if (!data.AuthenticationResult) throw new CognitoError("", "no tokens in the answer", 400);
        accept(data.AuthenticationResult, tokens.refresh);
      })().finally(() => { if (refreshing === pending) refreshing = null; });
      refreshing = pending;
    }
    return refreshing;
  }

  // ---------------------------------------------------------------- API calls
  function withBearer(options) {
    const headers = new Headers(options.headers || {});
    headers.set("authorization", `Bearer ${tokens.access}`);
    return { ...options, headers };
  }

  // Renew the tokens for a call of generation `gen`: false if the sign-in service could not
  // be reached; SignedOut if that user is signed out (now, or meanwhile).
  async function renewFor(gen) {
    try {
      await refresh();
    } catch (err) {
      if (gen === generation && (err instanceof SignedOut || isRejection(err))) signOut(EXPIRED);
      if (gen !== generation) throw new SignedOut("signed out");
      return false;
    }
    if (gen !== generation) throw new SignedOut("signed out");
    return true;
  }

  async function authFetch(url, options = {}) {
    if (!tokens) throw new SignedOut("not signed in");
    const gen = generation;
    if (Date.now() > tokens.expiresAt - 5_000 && tokens.refresh) {
      await renewFor(gen); // expired while the tab slept (timers pause): renew before the call
    }
    const res = await fetch(url, withBearer(options));
    if (gen !== generation) throw new SignedOut("signed out");
    if (res.status !== 401) return res;
    // The token was refused: renew it once and try again; then back to the sign-in form.
    if (!(await renewFor(gen))) return res; // the sign-in service is unreachable: the caller sees the 401
    const again = await fetch(url, withBearer(options));
    if (gen !== generation) throw new SignedOut("signed out");
    if (again.status === 401) {
      signOut("The server did not accept your sign-in. Sign in again.");
      throw new SignedOut("token refused");
    }
    return again;
  }

  // ---------------------------------------------------------------- the page
  // The markup shared by the chat page and the dashboard; static, nothing from a user in it.
  const ACCOUNT = `
    <div id="account" class="account" hidden>
      <span class="visually-hidden">Signed in as</span>
      <span id="account-name" class="who"></span>
      <button type="button" id="sign-out">Sign out</button>
    </div>`;
  const SIGNIN = `
    <main id="signin" class="signin" aria-labelledby="signin-title" hidden>
      <form id="signin-form" class="signin-form">
        <h2 id="signin-title">Sign in</h2>
        <label class="field">Username
          <input id="signin-username" name="username" autocomplete="username" autocapitalize="none"
                 spellcheck="false" required>
        </label>
        <label class="field">Password
          <input id="signin-password" name="password" type="password" autocomplete="current-password"
                 required>
        </label>
        <div id="signin-new" hidden>
          <p id="signin-new-hint" class="hint">Your password was a temporary one: choose your own.</p>
          <label class="field">New password
            <input id="signin-new-password" name="new-password" type="password"
                   autocomplete="new-password" aria-describedby="signin-new-hint">
          </label>
        </div>
        <p id="signin-error" class="signin-error" role="alert"></p>
        <button type="submit" id="signin-submit" class="primary">Sign in</button>
      </form>
    </main>`;

  // Replace the page's placeholders while the script loads: the page's own scripts, which
  // come after this one, find the elements as if the page had them itself.
  el("account").outerHTML = ACCOUNT.trim();
  el("signin").outerHTML = SIGNIN.trim();

  function showSignedIn() {
    const who = user();
    for (const node of document.querySelectorAll("[data-signed-in]")) node.hidden = false;
    el("signin").hidden = true;
    el("account").hidden = false;
    el("account-name").textContent = who.display;
    resetForm();
    hooks.onSignIn?.(who);
  }

  function showSignedOut(message) {
    for (const node of document.querySelectorAll("[data-signed-in]")) node.hidden = true;
    el("account").hidden = true;
    el("account-name").textContent = "";
    el("signin").hidden = false;
    resetForm();
    el("signin-error").textContent = message || "";
    el("signin-username").focus();
  }

  function resetForm() {
    challenge = null;
    el("signin-form").reset();
    el("signin-new").hidden = true;
    el("signin-new-password").required = false;
    el("signin-username").readOnly = false;
    el("signin-password").readOnly = false;
    el("signin-error").textContent = "";
  }

  function signOut(message = "") {
    const who = user();
    generation += 1;
    tokens = null;
    refreshing = null;
    sessionStorage.removeItem(KEY);
    clearTimeout(refreshTimer);
    showSignedOut(message);
    hooks.onSignOut?.(who);
  }

  function explain(err) {
    if (err instanceof CognitoError) {
      if (err.type === "UserNotFoundException" || (err.type === "NotAuthorizedException" && /incorrect/i.test(err.message))) {
        return "Incorrect username or password.";
      }
      return err.message;
    }
    return `Could not reach the sign-in service (${err.message}).`;
  }

  async function submit(event) {
    event.preventDefault();
    const form = el("signin-form");
    const username = el("signin-username").value.trim();
    const button = el("signin-submit");
    el("signin-error").textContent = "";
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    const gen = generation;
    try {
      const data = challenge
        ? await cognito("RespondToAuthChallenge", {
          ChallengeName: "NEW_PASSWORD_REQUIRED",
          ClientId: settings.clientId,
          Session: challenge.session,
          ChallengeResponses: { USERNAME: challenge.username, NEW_PASSWORD: el("signin-new-password").value },
        })
        : await cognito("InitiateAuth", {
          AuthFlow: "USER_PASSWORD_AUTH",
          ClientId: settings.clientId,
          AuthParameters: { USERNAME: username, PASSWORD: el("signin-password").value },
        });
      if (gen !== generation) return;
      if (data.ChallengeName === "NEW_PASSWORD_REQUIRED") {
        // A user an admin created with a temporary password chooses their own.
        challenge = { session: data.Session, username };
        el("signin-username").readOnly = true;
        el("signin-password").readOnly = true;
        el("signin-new").hidden = false;
        el("signin-new-password").required = true;
        el("signin-new-password").focus();
        return;
      }
      if (data.ChallengeName) throw new Error(`the sign-in asks for ${data.ChallengeName}, which this page does not support`);
      if (!data.AuthenticationResult) throw new Error("no tokens in the answer");
      generation += 1;
      accept(data.AuthenticationResult);
      showSignedIn();
    } catch (err) {
      if (gen !== generation) return;
      if (challenge && err instanceof CognitoError && err.type !== "InvalidPasswordException") resetForm();
      el("signin-error").textContent = explain(err);
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  }

  async function start(authSettings, pageHooks = {}) {
    hooks = pageHooks;
    el("signin-form").addEventListener("submit", submit);
    el("sign-out").addEventListener("click", () => signOut());
    if (!authSettings?.clientId || !authSettings?.endpoint) {
      showSignedOut("This page's config.json has no sign-in settings (auth).");
      el("signin-submit").disabled = true;
      return;
    }
    settings = authSettings;
    tokens = load();
    if (tokens && Date.now() > tokens.expiresAt - 5_000) {
      try { await refresh(); } catch { tokens = null; sessionStorage.removeItem(KEY); }
    }
    if (tokens) { schedule(); showSignedIn(); } else showSignedOut("");
  }

  global.Auth = { start, fetch: authFetch, user, signOut, SignedOut };
  global.authFetch = authFetch;
})(window);
