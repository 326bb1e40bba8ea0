"""The chat page and the dashboard in a real headless Chromium (Debian's, via Playwright),
signed in through the page's own form against the local user pool."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from localcloud import fake_tools
from localcloud.fake_openai import Behaviour, expected_answer
from localcloud.up import Stack
from localcloud.users import LocalUser
from tests.conftest import ARTIFACTS, unique

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.processes]
SHOTS = ARTIFACTS / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# A worker's cold start (a new execution environment) on a busy machine can take 15 s.
FIRST_TOKEN_MS = 30_000
ANSWER_MS = 45_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: ./run.sh test installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def user(local_stack: Stack) -> LocalUser:
    """A user of their own for each test: a conversation list that starts empty."""
    return local_stack.ensure_user(unique("browser"))


@pytest.fixture(scope="module")
def operator(local_stack: Stack) -> LocalUser:
    return local_stack.ensure_user("browser-operator", admin=True)


@pytest.fixture
def page(browser: Browser, local_stack: Stack, user: LocalUser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    sign_in(pg, user)
    yield pg
    context.close()


def shot(pg: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"))


def fill_sign_in(pg: Page, name: str, password: str) -> None:
    expect(pg.get_by_role("heading", name="Sign in")).to_be_visible()
    pg.get_by_label("Username").fill(name)
    pg.get_by_label("Password", exact=True).fill(password)
    pg.get_by_role("button", name="Sign in").click()


def sign_in(pg: Page, user: LocalUser) -> None:
    """Through the form, as a person would."""
    fill_sign_in(pg, user.name, user.password)
    expect(pg.get_by_role("button", name="Sign out")).to_be_visible()
    expect(pg.locator("#account-name")).to_have_text(user.name)


def send(pg: Page, message: str) -> None:
    pg.get_by_label("Message").fill(message)
    pg.get_by_label("Message").press("Enter")


def answer(message: str, tokens: int) -> str:
    return expected_answer(
        [{"role": "user", "content": message}], behaviour=Behaviour(tokens=tokens)
    )


def conversations(pg: Page) -> list[str]:
    return pg.locator("#conversations button.open").all_inner_texts()


def test_send_and_see_the_streamed_answer(page: Page) -> None:
    message = "hello page [[fake tokens=80 tps=25]]"
    send(page, message)
    bubble = page.locator(".msg.assistant").last
    # While it streams: the typing indicator shows and text grows
    expect(bubble.locator(".typing")).to_be_visible()
    expect(bubble.locator(".body")).not_to_be_empty(timeout=FIRST_TOKEN_MS)
    expect(page.locator("#stop")).to_be_visible()
    shot(page, "chat-desktop-mid-answer")
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    assert bubble.locator(".body").inner_text().strip() == answer(message, 80)
    expect(bubble.locator("time")).to_have_count(1)
    expect(page.locator(".msg.user").last.locator("time")).to_have_count(1)
    expect(page.locator("#light-api")).to_have_attribute("data-state", "ok", timeout=10_000)
    expect(page.locator("#light-queue")).to_have_attribute("data-state", "ok")  # its 202
    expect(page.locator("#light-stream")).to_have_attribute("data-state", "ok")
    # The conversation is listed in the sidebar (GET /sessions), titled by its first message
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations button.open")).to_have_text(message)


def test_shift_enter_breaks_a_line_and_enter_sends(page: Page) -> None:
    box = page.get_by_label("Message")
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "first line\nsecond line"
    box.press("Enter")
    expect(page.locator(".msg.user .body").last).to_have_text("first line\nsecond line")


def test_stop_cancels_the_answer(page: Page) -> None:
    send(page, "a long one [[fake tokens=400 tps=20]]")
    bubble = page.locator(".msg.assistant").last
    expect(bubble.locator(".body")).not_to_be_empty(timeout=FIRST_TOKEN_MS)
    page.get_by_role("button", name="Stop").click()
    expect(bubble).to_have_class("msg assistant cancelled", timeout=5_000)
    expect(bubble).to_contain_text("Stopped.")
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def test_reload_mid_answer_resumes(page: Page) -> None:
    message = "survive a reload [[fake tokens=120 tps=20]]"
    send(page, message)
    expect(page.locator(".msg.assistant").last.locator(".body")).not_to_be_empty(
        timeout=FIRST_TOKEN_MS
    )
    page.reload()
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    assert bubble.locator(".body").inner_text().strip() == answer(message, 120)
    expect(page.locator(".msg.user .body").last).to_have_text(message)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string"}},
                "required": ["timezone"],
            },
        },
    },
]


def with_tools(route: Route) -> None:
    """The page's POST /chat, with function tools added (the page sends none: API clients
    do)."""
    if route.request.method != "POST":
        route.continue_()
        return
    body = json.loads(route.request.post_data or "{}")
    route.continue_(post_data=json.dumps({**body, "tools": TOOLS}))


# Every state of the call blocks the page draws: [[name, shown arguments], ...] each time
# they change.
RECORD_CALLS = """() => {
  window.drawnCalls = [];
  const record = () => {
    const calls = [...document.querySelectorAll("#log details.call")].map(
      (d) => [d.querySelector(".name").textContent, d.querySelector("code").textContent]);
    if (JSON.stringify(calls) !== JSON.stringify(window.drawnCalls.at(-1) ?? []))
      window.drawnCalls.push(calls);
  };
  new MutationObserver(record).observe(
    document.getElementById("log"), { subtree: true, childList: true, characterData: true });
}"""


def test_function_calls_show_as_collapsed_blocks(page: Page, local_stack: Stack) -> None:
    page.route(f"{local_stack.urls['api']}/chat", with_tools)
    page.evaluate(RECORD_CALLS)
    send(page, "weather and time, please [[fake calls=2 tps=10]]")
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    expected = [
        (t["function"]["name"], json.loads(fake_tools.arguments(t["function"]))) for t in TOOLS
    ]
    # While they streamed, the first block came alone and its arguments grew (raw text
    # until they parse), then the second followed it
    drawn = page.evaluate("window.drawnCalls")
    whole = fake_tools.arguments(TOOLS[0]["function"])
    assert any(
        len(d) == 1
        and d[0][0] == "get_weather"
        and 0 < len(d[0][1]) < len(whole)
        and whole.startswith(d[0][1])
        for d in drawn
    ), drawn
    assert [name for name, _ in drawn[-1]] == ["get_weather", "get_time"]

    def shows_the_calls() -> None:
        # Two blocks in the answer, in order, collapsed: the name, then the arguments parsed
        # and pretty-printed; an answer of calls alone has no text, and no error
        calls = bubble.locator(".body details.call")
        expect(calls).to_have_count(2, timeout=10_000)
        expect(calls.locator("summary")).to_have_text([f"⚙ {name}" for name, _ in expected])
        for i, (_, arguments) in enumerate(expected):
            block = calls.nth(i)
            assert block.evaluate("(d) => d.open") is False
            expect(block.locator("pre")).to_be_hidden()
            block.locator("summary").click()
            expect(block.locator("pre")).to_be_visible()
            shown = block.locator("pre").inner_text()
            assert json.loads(shown) == arguments
            assert shown == json.dumps(arguments, indent=2)
        expect(bubble.locator(".body > :not(details)")).to_have_count(0)
        expect(bubble.locator(".note")).to_have_count(0)

    shows_the_calls()
    shot(page, "chat-desktop-function-calls")
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa"]}})
    assert results.response["violations"] == [], results.generate_report()
    # The conversation again after a reload: the session's turn has no text, and the page
    # shows its calls from GET /chat/{task_id}
    page.reload()
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done")
    shows_the_calls()


# The signed stream URL the page keeps to resume after a reload, spoiled: its token no
# longer opens the task, as after it expired.
SPOIL_STREAM_URL = """() => {
  for (const key of Object.keys(sessionStorage).filter((k) => k.endsWith(".active"))) {
    const active = JSON.parse(sessionStorage.getItem(key));
    const url = new URL(active.streamUrl);
    url.searchParams.set("token", "1.spoiled");
    active.streamUrl = url.href;
    sessionStorage.setItem(key, JSON.stringify(active));
    return true;
  }
  return false;
}"""


def test_a_refused_stream_url_is_renewed(page: Page) -> None:
    message = "renew the link [[fake tokens=120 tps=20]]"
    send(page, message)
    expect(page.locator(".msg.assistant").last.locator(".body")).not_to_be_empty(
        timeout=FIRST_TOKEN_MS
    )
    assert page.evaluate(SPOIL_STREAM_URL)
    # WHEN the page reloads and its stream URL is refused
    with page.expect_response(lambda r: "/chat/" in r.url and r.request.method == "GET") as got:
        page.reload()
    # THEN it asked the API for a fresh one (GET /chat/{task_id}) and streamed the rest
    assert got.value.status == 200
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    assert bubble.locator(".body").inner_text().strip() == answer(message, 120)


def test_direct_mode(page: Page) -> None:
    page.get_by_label("Direct").check()
    send(page, "straight through [[fake tokens=30]]")
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    assert bubble.locator(".body").inner_text().strip() == answer(
        "straight through [[fake tokens=30]]", 30
    )


def test_the_page_works_under_its_content_security_policy(
    browser: Browser, local_stack: Stack, operator: LocalUser
) -> None:
    """The page is served with the distribution's policy (template.yaml, local endpoints in
    connect-src): signing in, a queued answer over EventSource, a direct one and the
    dashboard all run without the browser refusing anything."""
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    refused: list[str] = []
    pg.on("console", lambda m: refused.append(m.text) if "Security Policy" in m.text else None)
    response = pg.goto(local_stack.urls["frontend"])
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    sign_in(pg, operator)
    for mode, message in (("Queue", "under the policy"), ("Direct", "directly under it")):
        pg.get_by_label(mode).check()
        send(pg, f"{message} [[fake tokens=20]]")
        bubble = pg.locator(".msg.assistant").last
        expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    pg.get_by_role("link", name="Dashboard").click()
    expect(pg.locator("#recent tr").first).to_be_visible(timeout=10_000)
    context.close()
    assert refused == []


def test_a_spent_quota_shows_the_reason_and_when_to_retry(page: Page, local_stack: Stack) -> None:
    origin = local_stack.urls["frontend"]

    def spent(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        route.fulfill(
            status=429,
            headers={
                "Retry-After": "42",
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": "Retry-After",
            },
            json={"detail": "quota spent: 20 requests a minute"},
        )

    page.route(f"{local_stack.urls['api']}/chat", spent)
    send(page, "one too many")
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant error")
    expect(bubble.locator(".body")).to_have_text(
        "Not sent: quota spent: 20 requests a minute. Try again in 42 s."
    )
    expect(page.locator("#status")).to_have_text("limit reached: try again in 42 s")
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def stored_items(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every item of every table of the stack, read over the emulator's endpoint."""
    assert stack.template is not None
    ddb = stack.client("dynamodb")
    tables = {}
    for logical_id in stack.template.of_type("AWS::DynamoDB::Table"):
        name = stack.template.physical_name(logical_id)
        items = []
        for page in ddb.get_paginator("scan").paginate(TableName=name, ConsistentRead=True):
            items.extend(page["Items"])
        tables[logical_id] = items
    return tables


def holding(tables: dict[str, list[dict[str, Any]]], text: str) -> dict[str, int]:
    """How many items of each table hold ``text`` anywhere (message, answer, title, chunk)."""
    counts = {name: sum(text in json.dumps(i) for i in items) for name, items in tables.items()}
    return {name: count for name, count in counts.items() if count}


def test_delete_a_conversation(page: Page, local_stack: Stack) -> None:
    # GIVEN a conversation to keep, and one of two turns to delete (the fake model's answer
    # repeats the message's first words: its text holds the marker too)
    marker = unique("gone")
    page.get_by_role("button", name="New chat").click()
    send(page, "keep this one [[fake tokens=10]]")
    expect(page.locator(".msg.assistant").last).to_have_class(
        "msg assistant done", timeout=ANSWER_MS
    )
    page.get_by_role("button", name="New chat").click()
    for message in (f"delete this one {marker} [[fake tokens=10]]", f"and {marker} too"):
        send(page, message)
        expect(page.locator(".msg.assistant").last).to_have_class(
            "msg assistant done", timeout=ANSWER_MS
        )
    expect(page.locator("#conversations li")).to_have_count(2)
    before = stored_items(local_stack)
    held = holding(before, marker)
    # its turns' rows, their answers' chunks and its session row hold the marker
    assert {"RequestsTable", "ChunksTable", "SessionsTable"} <= set(held), held
    turns = [
        item["task_id"]["S"]
        for item in before["RequestsTable"]
        if marker in item.get("message", {}).get("S", "")
    ]
    [session] = [i for i in before["SessionsTable"] if marker in json.dumps(i)]
    assert len(turns) == 2
    # WHEN the open conversation is deleted (after the page asks to confirm), by the page
    # on its own origin: the API's CORS has to allow DELETE
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete delete this one").click()
    # THEN it is gone from the list and from the log, and stays gone after a reload
    expect(page.locator("#status")).to_have_text("Conversation deleted.")
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator(".msg")).to_have_count(0)
    # AND no table holds its text any more: each turn's row is a tombstone without it, its
    # chunk log is empty, its session row is gone
    after = stored_items(local_stack)
    assert holding(after, marker) == {}
    rows = {i["task_id"]["S"]: i for i in after["RequestsTable"] if i["task_id"]["S"] in turns}
    tombstones = {t: (r["deleted"]["BOOL"], "message" in r) for t, r in rows.items()}
    assert tombstones == dict.fromkeys(turns, (True, False))
    assert not [i for i in after["ChunksTable"] if i["task_id"]["S"] in turns]
    assert session not in after["SessionsTable"]
    page.reload()
    expect(page.locator("#conversations li")).to_have_count(1)
    assert conversations(page) == ["keep this one [[fake tokens=10]]"]


def test_api_keys_panel_creates_lists_and_revokes_a_key(
    page: Page, local_stack: Stack, user: LocalUser
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Security Policy" in m.text else None)
    stream = local_stack.urls["stream"]
    # GIVEN the panel, opened from the top bar: no keys yet, and where keys work
    page.get_by_role("button", name="API keys").click()
    panel = page.get_by_role("dialog", name="API keys")
    expect(panel).to_be_visible()
    expect(panel.locator("#keys-base-url")).to_have_text(f"{stream}/v1")
    expect(panel.locator("#keys-empty")).to_be_visible()
    # WHEN a key is created THEN it is shown once, with the warning, and listed
    panel.get_by_label("Name", exact=True).fill("my laptop")
    panel.get_by_role("button", name="Create key").click()
    field = panel.get_by_label("Your new API key")
    expect(field).to_have_value(re.compile(r"^lls_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$"))
    expect(panel).to_contain_text("it will not be shown again")
    key = field.input_value()
    rows = panel.locator("#keys-list tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td").nth(0)).to_have_text("my laptop")
    expect(rows.first.locator("td").nth(1)).to_have_text(f"{key[:12]}…")
    expect(rows.first.locator("td").nth(3)).to_have_text("never")
    # AND the copy button puts it on the clipboard
    page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=local_stack.urls["frontend"]
    )
    panel.get_by_role("button", name="Copy").click()
    expect(panel.locator("#keys-copied")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == key
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa"]}})
    assert results.response["violations"] == [], results.generate_report()
    # AND it opens the user's stream (the stream function checks it itself)
    task = httpx.post(
        f"{local_stack.urls['api']}/chat", json={"message": "by key"}, headers=user.headers
    ).json()
    with_key = {"Authorization": f"Bearer {key}"}
    with httpx.stream("GET", f"{stream}/stream/{task['task_id']}", headers=with_key) as opened:
        assert opened.status_code == 200
    # WHEN the panel closes THEN the key leaves the page; the list says it was used
    panel.get_by_role("button", name="Close").click()
    expect(panel).to_be_hidden()
    page.get_by_role("button", name="API keys").click()
    expect(panel.locator("#keys-new")).to_be_hidden()
    expect(field).to_have_value("")
    expect(rows.first.locator("td").nth(3)).not_to_have_text("never")
    assert key not in page.content()
    shot(page, "api-keys-panel")
    # WHEN it is revoked (after the page asks) THEN it is gone, and refused at once
    page.once("dialog", lambda dialog: dialog.accept())
    panel.get_by_role("button", name="Revoke my laptop").click()
    expect(rows).to_have_count(0)
    expect(panel.locator("#keys-empty")).to_be_visible()
    expect(panel.locator("#keys-status")).to_have_text('Key "my laptop" revoked.')
    assert httpx.get(f"{stream}/stream/{task['task_id']}", headers=with_key).status_code == 401
    assert refused == []


def test_the_high_priority_is_offered_to_those_allowed_it_alone(
    browser: Browser, local_stack: Stack, user: LocalUser, operator: LocalUser
) -> None:
    # A priority above 0 is the PriorityGroup's (admins here): the page asks GET /me
    for who, offered in ((user, ["Normal", "Low"]), (operator, ["High", "Normal", "Low"])):
        context = browser.new_context(viewport=DESKTOP)
        pg = context.new_page()
        pg.goto(local_stack.urls["frontend"])
        sign_in(pg, who)
        expect(pg.locator("#priority option:not([disabled])")).to_have_text(offered)
        expect(pg.get_by_label("Priority")).to_have_value("0")
        context.close()


def test_each_user_sees_only_their_own_conversations(browser: Browser, local_stack: Stack) -> None:
    alice = local_stack.ensure_user(unique("alice"))
    bob = local_stack.ensure_user(unique("bob"))
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    # Signed out: the sign-in form instead of the chat
    expect(pg.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(pg.get_by_label("Message")).to_be_hidden()
    expect(pg.get_by_label("Username")).to_be_focused()
    shot(pg, "signin-desktop")
    # A wrong password is refused, and the form says so
    fill_sign_in(pg, alice.name, "Not-the-password-1")
    expect(pg.get_by_role("alert")).to_have_text("Incorrect username or password.")
    expect(pg.get_by_label("Message")).to_be_hidden()

    # Alice signs in, chats, reloads: still signed in, her conversation and answer there
    sign_in(pg, alice)
    secret = "alice's secret plan [[fake tokens=30]]"
    send(pg, secret)
    bubble = pg.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    pg.reload()
    expect(pg.locator("#account-name")).to_have_text(alice.name)
    expect(pg.locator("#conversations li")).to_have_count(1)
    assert conversations(pg) == [secret]
    bubble = pg.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done")
    assert bubble.locator(".body").inner_text().strip() == answer(secret, 30)
    expect(pg.locator(".msg.user .body")).to_have_text([secret])

    # She signs out: the form is back, nothing of hers is on the page or in the tab's storage
    pg.get_by_role("button", name="Sign out").click()
    expect(pg.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(pg.get_by_label("Message")).to_be_hidden()
    expect(pg.locator("#conversations li")).to_have_count(0)
    expect(pg.locator(".msg")).to_have_count(0)
    assert [
        k for k in pg.evaluate("Object.keys(sessionStorage)") if k.startswith("llmstream")
    ] == []
    assert [k for k in pg.evaluate("Object.keys(localStorage)") if k.startswith("llmstream")] == []

    # Bob signs in in the same tab: his (empty) list, an empty log, never Alice's
    with pg.expect_response(lambda r: r.url.endswith("/sessions")) as listed:
        sign_in(pg, bob)
    assert listed.value.json() == {"sessions": []}
    expect(pg.locator("#conversations li")).to_have_count(0)
    expect(pg.locator(".msg")).to_have_count(0)
    send(pg, "bob's question [[fake tokens=10]]")
    expect(pg.locator(".msg.assistant").last).to_have_class("msg assistant done", timeout=ANSWER_MS)
    pg.reload()
    expect(pg.locator("#account-name")).to_have_text(bob.name)
    expect(pg.locator("#conversations li")).to_have_count(1)
    assert conversations(pg) == ["bob's question [[fake tokens=10]]"]
    expect(pg.locator(".msg.user .body")).to_have_text(["bob's question [[fake tokens=10]]"])
    assert "alice" not in pg.locator("body").inner_text().lower()
    context.close()


def set_tokens(pg: Page, **changes: object) -> None:
    """Change the signed-in tab's stored tokens (auth.js keeps them in sessionStorage)."""
    pg.evaluate(
        """(changes) => {
          const tokens = JSON.parse(sessionStorage.getItem("llmstream.auth"));
          sessionStorage.setItem("llmstream.auth", JSON.stringify({ ...tokens, ...changes }));
        }""",
        changes,
    )


def is_refresh(request: Request) -> bool:
    """A token refresh: Cognito's InitiateAuth with the REFRESH_TOKEN_AUTH flow."""
    target = request.headers.get("x-amz-target", "")
    return target.endswith(".InitiateAuth") and "REFRESH_TOKEN_AUTH" in (request.post_data or "")


def access_token(pg: Page) -> str:
    return str(pg.evaluate("JSON.parse(sessionStorage.getItem('llmstream.auth')).access"))


def test_tokens_are_refreshed_and_a_refused_refresh_signs_out(page: Page) -> None:
    name = page.locator("#account-name").inner_text()
    # Shortly before the access token expires, the page renews it
    before = access_token(page)
    set_tokens(page, expiresAt=int(time.time() * 1000) + 62_000)
    with page.expect_request(is_refresh, timeout=15_000):
        page.reload()
    page.wait_for_function(
        "(old) => JSON.parse(sessionStorage.getItem('llmstream.auth')).access !== old", arg=before
    )
    expect(page.locator("#account-name")).to_have_text(name)
    # An access token the API refuses (401) is renewed once, and the call made again
    set_tokens(page, access="not.a.token")
    with page.expect_request(is_refresh):
        page.reload()
    expect(page.locator("#account-name")).to_have_text(name)
    send(page, "still me [[fake tokens=10]]")
    expect(page.locator(".msg.assistant").last).to_have_class(
        "msg assistant done", timeout=ANSWER_MS
    )
    # When the renewal is refused too, the page goes back to the sign-in form
    set_tokens(page, access="not.a.token", refresh="revoked")
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text("Your sign-in has expired. Sign in again.")
    expect(page.locator(".msg")).to_have_count(0)


def test_a_temporary_password_is_replaced_at_first_sign_in(
    browser: Browser, local_stack: Stack
) -> None:
    # GIVEN a user an administrator created with a temporary password
    name = unique("newcomer")
    pool = local_stack.pool
    assert pool is not None
    pool.cognito.admin_create_user(
        UserPoolId=pool.pool_id,
        Username=name,
        TemporaryPassword="Temporary-pass-123",
        MessageAction="SUPPRESS",
    )
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    # WHEN they sign in with it, the form asks for a password of their own
    fill_sign_in(pg, name, "Temporary-pass-123")
    expect(pg.get_by_label("New password")).to_be_focused()
    pg.get_by_label("New password").fill("Chosen-pass-4567")
    pg.get_by_role("button", name="Sign in").click()
    # THEN they are signed in, and the new password is the one that works from then on
    expect(pg.locator("#account-name")).to_have_text(name)
    pg.get_by_role("button", name="Sign out").click()
    fill_sign_in(pg, name, "Temporary-pass-123")
    expect(pg.get_by_role("alert")).to_have_text("Incorrect username or password.")
    fill_sign_in(pg, name, "Chosen-pass-4567")
    expect(pg.locator("#account-name")).to_have_text(name)
    context.close()


def test_phone_width(browser: Browser, local_stack: Stack, user: LocalUser) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    expect(pg.get_by_role("heading", name="Sign in")).to_be_visible()
    assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(pg, "signin-phone")
    sign_in(pg, user)
    send(pg, "small screen [[fake tokens=60 tps=20]]")
    bubble = pg.locator(".msg.assistant").last
    expect(bubble.locator(".body")).not_to_be_empty(timeout=FIRST_TOKEN_MS)
    shot(pg, "chat-phone-mid-answer")
    # Nothing wider than the screen; the sidebar opens from its button
    assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    expect(pg.locator("#sidebar")).to_be_hidden()
    pg.get_by_role("button", name="Conversations").click()
    expect(pg.locator("#sidebar")).to_be_visible()
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    context.close()


def test_controls_have_labels_and_a_sensible_focus_order(page: Page) -> None:
    for role, name in (
        ("textbox", "Message"),
        ("button", "Send"),
        ("combobox", "Priority"),
        ("radio", "Queue"),
        ("radio", "Direct"),
        ("button", "New chat"),
        ("button", "Sign out"),
    ):
        expect(page.get_by_role(role, name=name)).to_have_count(1)
    page.get_by_label("Message").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"


@pytest.mark.parametrize("signed_in", [False, True], ids=["signed-out", "signed-in"])
@pytest.mark.parametrize("path", ["/", "/dashboard.html"])
def test_pages_pass_an_accessibility_check(
    browser: Browser, local_stack: Stack, operator: LocalUser, path: str, signed_in: bool
) -> None:
    """axe-core (WCAG 2 A/AA rules: labels, names, contrast, landmarks ...) finds nothing,
    on the sign-in form and on the signed-in page."""
    from axe_playwright_python.sync_playwright import Axe

    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"] + path)
    if signed_in:
        sign_in(pg, operator)
        if path == "/":  # a conversation in the list and an answer in the log
            send(pg, "check me [[fake tokens=20]]")
            expect(pg.locator(".msg.assistant").last).to_have_class(
                "msg assistant done", timeout=ANSWER_MS
            )
    else:
        expect(pg.get_by_role("heading", name="Sign in")).to_be_visible()
    pg.wait_for_load_state("networkidle")
    results = Axe().run(pg, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa"]}})
    violations = results.response["violations"]
    assert violations == [], results.generate_report()
    context.close()


def test_dashboard_shows_a_queued_task(
    browser: Browser, local_stack: Stack, operator: LocalUser, user: LocalUser
) -> None:
    api = local_stack.urls["api"]
    # GIVEN more low-priority work than the low queue's local workers
    slow = {"message": "background [[fake tokens=400 tps=20]]", "priority": -9}
    tasks = [
        httpx.post(f"{api}/chat", json=slow, headers=user.headers).json()["task_id"]
        for _ in range(6)
    ]
    try:
        for viewport, name in ((DESKTOP, "dashboard-desktop"), (PHONE, "dashboard-phone")):
            context = browser.new_context(viewport=viewport)
            pg = context.new_page()
            pg.goto(f"{local_stack.urls['frontend']}/dashboard.html")
            sign_in(pg, operator)
            expect(pg.locator("#recent tr[data-status='queued']").first).to_be_visible(
                timeout=10_000
            )
            expect(pg.locator("#q-low")).not_to_have_text("0")
            # (the workers' first invocations start cold)
            expect(pg.locator("#running")).not_to_have_text("0", timeout=FIRST_TOKEN_MS)
            pg.wait_for_timeout(4500)  # a few samples on the charts
            shot(pg, name)
            context.close()
    finally:
        for task_id in tasks:
            httpx.post(f"{api}/chat/{task_id}/cancel", headers=user.headers)


def test_the_dashboard_is_for_operators(
    browser: Browser, local_stack: Stack, user: LocalUser
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(f"{local_stack.urls['frontend']}/dashboard.html")
    with pg.expect_response(lambda r: r.url.endswith("/stats")) as stats:
        sign_in(pg, user)
    assert stats.value.status == 403
    expect(pg.get_by_text("The dashboard is for operators (the admins group).")).to_be_visible()
    expect(pg.locator("#stats")).to_be_hidden()
    context.close()


def test_a_dropped_stream_shows_reconnecting_and_resumes(
    browser: Browser, local_stack: Stack, user: LocalUser
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    sign_in(pg, user)
    message = "drop the connection [[fake tokens=160 tps=20]]"
    send(pg, message)
    bubble = pg.locator(".msg.assistant").last
    expect(bubble.locator(".body")).not_to_be_empty(timeout=FIRST_TOKEN_MS)
    # WHEN the stream server dies mid-answer (every open connection is cut)
    local_stack.kill("stream")
    try:
        expect(pg.locator("#status")).to_have_text("reconnecting…", timeout=10_000)
        expect(pg.locator("#light-stream")).to_have_attribute("data-state", "warn")
    finally:
        local_stack.revive("stream")
    # THEN the page resumes from its Last-Event-ID: the whole answer, nothing repeated
    expect(bubble).to_have_class("msg assistant done", timeout=ANSWER_MS)
    assert bubble.locator(".body").inner_text().strip() == answer(message, 160)
    context.close()
