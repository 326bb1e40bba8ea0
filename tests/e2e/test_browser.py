"""The chat page and the dashboard in a real headless Chromium (Debian's, via Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from localcloud.fake_openai import Behaviour, expected_answer
from localcloud.up import Stack
from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
SHOTS = ARTIFACTS / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


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
def page(browser: Browser, local_stack: Stack) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    yield pg
    context.close()


def shot(pg: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"))


def send(pg: Page, message: str) -> None:
    pg.get_by_label("Message").fill(message)
    pg.get_by_label("Message").press("Enter")


def answer(message: str, tokens: int) -> str:
    return expected_answer(
        [{"role": "user", "content": message}], behaviour=Behaviour(tokens=tokens)
    )


def test_send_and_see_the_streamed_answer(page: Page) -> None:
    message = "hello page [[fake tokens=80 tps=25]]"
    send(page, message)
    bubble = page.locator(".msg.assistant").last
    # While it streams: the typing indicator shows and text grows
    expect(bubble.locator(".typing")).to_be_visible()
    expect(bubble.locator(".body")).not_to_be_empty(timeout=10_000)
    expect(page.locator("#stop")).to_be_visible()
    shot(page, "chat-desktop-mid-answer")
    expect(bubble).to_have_class("msg assistant done", timeout=20_000)
    assert bubble.locator(".body").inner_text().strip() == answer(message, 80)
    expect(bubble.locator("time")).to_have_count(1)
    expect(page.locator(".msg.user").last.locator("time")).to_have_count(1)
    expect(page.locator("#light-api")).to_have_attribute("data-state", "ok", timeout=10_000)
    expect(page.locator("#light-queue")).to_have_attribute("data-state", "ok")
    expect(page.locator("#light-stream")).to_have_attribute("data-state", "ok")
    # The conversation is listed in the sidebar
    expect(page.locator("#conversations button")).to_have_count(1)


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
    expect(bubble.locator(".body")).not_to_be_empty(timeout=10_000)
    page.get_by_role("button", name="Stop").click()
    expect(bubble).to_have_class("msg assistant cancelled", timeout=5_000)
    expect(bubble).to_contain_text("Stopped.")
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def test_reload_mid_answer_resumes(page: Page) -> None:
    message = "survive a reload [[fake tokens=120 tps=20]]"
    send(page, message)
    expect(page.locator(".msg.assistant").last.locator(".body")).not_to_be_empty(timeout=10_000)
    page.reload()
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done", timeout=30_000)
    assert bubble.locator(".body").inner_text().strip() == answer(message, 120)
    expect(page.locator(".msg.user .body").last).to_have_text(message)


def test_direct_mode(page: Page) -> None:
    page.get_by_label("Direct").check()
    send(page, "straight through [[fake tokens=30]]")
    bubble = page.locator(".msg.assistant").last
    expect(bubble).to_have_class("msg assistant done", timeout=20_000)
    assert bubble.locator(".body").inner_text().strip() == answer(
        "straight through [[fake tokens=30]]", 30
    )


def test_phone_width(browser: Browser, local_stack: Stack) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    send(pg, "small screen [[fake tokens=60 tps=20]]")
    bubble = pg.locator(".msg.assistant").last
    expect(bubble.locator(".body")).not_to_be_empty(timeout=10_000)
    shot(pg, "chat-phone-mid-answer")
    # Nothing wider than the screen; the sidebar opens from its button
    assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    expect(pg.locator("#sidebar")).to_be_hidden()
    pg.get_by_role("button", name="Conversations").click()
    expect(pg.locator("#sidebar")).to_be_visible()
    expect(bubble).to_have_class("msg assistant done", timeout=20_000)
    context.close()


def test_controls_have_labels_and_a_sensible_focus_order(page: Page) -> None:
    for role, name in (
        ("textbox", "Message"),
        ("button", "Send"),
        ("combobox", "Priority"),
        ("radio", "Queue"),
        ("radio", "Direct"),
        ("button", "New chat"),
    ):
        expect(page.get_by_role(role, name=name)).to_have_count(1)
    page.get_by_label("Message").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"


@pytest.mark.parametrize("path", ["/", "/dashboard.html"])
def test_pages_pass_an_accessibility_check(browser: Browser, local_stack: Stack, path: str) -> None:
    """axe-core (WCAG 2 A/AA rules: labels, names, contrast, landmarks ...) finds nothing."""
    from axe_playwright_python.sync_playwright import Axe

    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"] + path)
    pg.wait_for_load_state("networkidle")
    results = Axe().run(pg, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa"]}})
    violations = results.response["violations"]
    assert violations == [], results.generate_report()
    context.close()


def test_dashboard_shows_a_queued_task(browser: Browser, local_stack: Stack) -> None:
    api = local_stack.urls["api"]
    # GIVEN more low-priority work than the low queue's local workers
    slow = {"message": "background [[fake tokens=400 tps=20]]", "priority": -9}
    tasks = [httpx.post(f"{api}/chat", json=slow).json()["task_id"] for _ in range(6)]
    try:
        for viewport, name in ((DESKTOP, "dashboard-desktop"), (PHONE, "dashboard-phone")):
            context = browser.new_context(viewport=viewport)
            pg = context.new_page()
            pg.goto(f"{local_stack.urls['frontend']}/dashboard.html")
            expect(pg.locator("#recent tr[data-status='queued']").first).to_be_visible(
                timeout=10_000
            )
            expect(pg.locator("#q-low")).not_to_have_text("0")
            expect(pg.locator("#running")).not_to_have_text("0")
            pg.wait_for_timeout(4500)  # a few samples on the charts
            shot(pg, name)
            context.close()
    finally:
        for task_id in tasks:
            httpx.post(f"{api}/chat/{task_id}/cancel")


def test_a_dropped_stream_shows_reconnecting_and_resumes(
    browser: Browser, local_stack: Stack
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.goto(local_stack.urls["frontend"])
    message = "drop the connection [[fake tokens=160 tps=20]]"
    send(pg, message)
    bubble = pg.locator(".msg.assistant").last
    expect(bubble.locator(".body")).not_to_be_empty(timeout=10_000)
    # WHEN the stream server dies mid-answer (every open connection is cut)
    local_stack.kill("stream")
    try:
        expect(pg.locator("#status")).to_have_text("reconnecting…", timeout=10_000)
        expect(pg.locator("#light-stream")).to_have_attribute("data-state", "warn")
    finally:
        local_stack.revive("stream")
    # THEN the page resumes from its Last-Event-ID: the whole answer, nothing repeated
    expect(bubble).to_have_class("msg assistant done", timeout=40_000)
    assert bubble.locator(".body").inner_text().strip() == answer(message, 160)
    context.close()
