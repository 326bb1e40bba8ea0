"""Chaos on a running local stack: answers streaming to live viewers while worker execution
environments are killed with SIGKILL. Used by the e2e chaos test (which asserts on the
outcome) and by `./run.sh bench --chaos` (which reports the recovery times).

Every answer has a viewer that follows its stream from seq 0 as the page does and records
when each event arrived. A kill is recorded with its time and the task its environment
ran, so recovery is measured where the user sees it: death -> the viewer told "worker
lost", death -> the new attempt's `reset` at the viewer, death -> the terminal event."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

from llmstream.settings import Settings
from localcloud.up import Stack

TERMINAL = ("done", "error", "cancelled")


def environments(stack: Stack) -> list[dict[str, Any]]:
    """The local worker's execution environments, as its poller last wrote them."""
    path = stack.opts.dir / "poller-WorkerFunction.envs.json"
    if not path.exists():
        return []
    envs: list[dict[str, Any]] = json.loads(path.read_text())["environments"]
    return envs


def running_tasks(stack: Stack, busy_for: float) -> dict[int, str | None]:
    """Environments running an invocation for at least ``busy_for`` seconds (past the
    handler's first heartbeat: a death before it waits for the queue's own timeout), each
    with the task id of the message it runs."""
    now = time.time()
    out: dict[int, str | None] = {}
    for e in environments(stack):
        if e["busy_since"] is not None and now - e["busy_since"] >= busy_for:
            try:
                out[e["pid"]] = json.loads(e["messages"][0])["task_id"]
            except (IndexError, ValueError, KeyError):
                out[e["pid"]] = None
    return out


def heartbeat_seconds(stack: Stack) -> int:
    """The worker's heartbeat window on ``stack`` (its setting, else the default)."""
    value = stack.env["WorkerFunction"].get("WORKER_HEARTBEAT_SECONDS")
    return int(value or Settings.model_fields["worker_heartbeat_seconds"].default)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def status_of(stack: Stack, task_id: str, headers: dict[str, str]) -> dict[str, Any]:
    got: dict[str, Any] = httpx.get(
        f"{stack.urls['api']}/chat/{task_id}", headers=headers, timeout=10
    ).json()
    return got


def wait_final(
    stack: Stack, task_id: str, headers: dict[str, str], limit: float = 90
) -> dict[str, Any]:
    """The task's status once it is terminal; AssertionError if it is not within ``limit``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = status_of(stack, task_id, headers)
        if status["status"] in TERMINAL:
            return status
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} hung: {status_of(stack, task_id, headers)}")


@dataclass
class Seen:
    """One SSE event at the viewer: its id, event name, parsed data, arrival (epoch s)."""

    id: str
    event: str
    data: dict[str, Any]
    at: float


def read_events(url: str, limit: float = 120) -> list[Seen]:
    """Follow a stream from its start to its terminal event (or ``limit`` seconds)."""
    out: list[Seen] = []
    deadline = time.monotonic() + limit
    with (
        httpx.Client(timeout=httpx.Timeout(30, read=limit)) as client,
        connect_sse(client, "GET", url) as source,
    ):
        for sse in source.iter_sse():
            if not sse.data:
                continue  # a keep-alive
            data = json.loads(sse.data)
            out.append(Seen(sse.id, sse.event, data, time.time()))
            if sse.event != "status" and data.get("type") in TERMINAL:
                break
            if time.monotonic() > deadline:
                break
    return out


def whole(events: list[Seen], status: dict[str, Any]) -> tuple[bool, int]:
    """Dense seqs from 1, one terminal event matching the status, and the text after the
    last reset equal to the status's text. Returns (whole, resets)."""
    log = [e for e in events if e.event != "status"]  # named notices carry no seq
    seqs = [int(e.id) for e in log]
    resets = [i for i, e in enumerate(log) if e.data.get("type") == "reset"]
    after = log[resets[-1] + 1 :] if resets else log
    text = "".join(e.data.get("chunk", "") for e in after)
    ok = (
        bool(log)
        and seqs == list(range(1, len(seqs) + 1))
        and log[-1].data.get("type") == status["status"]
        and text == status["text"]
    )
    return ok, len(resets)


@dataclass
class Kill:
    pid: int
    task_id: str | None
    at: float  # epoch seconds


@dataclass
class Viewer:
    task_id: str
    stream_url: str
    headers: dict[str, str]
    events: list[Seen] = field(default_factory=list)
    problem: str | None = None


@dataclass
class Chaos:
    """``answers`` answers at once (``tokens`` at ``tps`` each), asked by ``users`` in turn;
    every ``every`` seconds one running environment is killed, for ``duration`` seconds
    (and on, up to ``longest``, until ``min_kills`` deaths: on a loaded machine answers
    start late). One death per answer: a third death of one answer is the queue's
    maxReceiveCount, which dead-letters it as designed for a poison answer."""

    answers: int = 30
    tokens: int = 240
    tps: int = 40
    every: float = 2.0
    duration: float = 20.0
    min_kills: int = 5
    longest: float = 60.0
    seed: int = 7
    settle: float = 90.0  # how long an answer may take to end after the killing stops

    def run(self, stack: Stack, users: list[dict[str, str]]) -> dict[str, Any]:
        api = stack.urls["api"]

        def post(i: int) -> Viewer:
            headers = users[i % len(users)]
            resp = httpx.post(
                f"{api}/chat",
                json={"message": f"chaos {i} [[fake tokens={self.tokens} tps={self.tps}]]"},
                headers=headers,
                timeout=30,
            )
            if resp.status_code != 202:
                raise AssertionError(f"POST /chat answered {resp.status_code}: {resp.text}")
            body = resp.json()
            return Viewer(body["task_id"], body["stream_url"], headers)

        with ThreadPoolExecutor(10) as pool:
            viewers = list(pool.map(post, range(self.answers)))

        def watch(v: Viewer) -> None:
            try:
                v.events = read_events(v.stream_url, limit=self.longest + self.settle)
            except (httpx.HTTPError, ValueError) as e:
                v.problem = f"{type(e).__name__}: {e}"

        watchers = [threading.Thread(target=watch, args=(v,), daemon=True) for v in viewers]
        for t in watchers:
            t.start()
        kills = self._kill(stack)
        for t in watchers:
            t.join(self.settle + self.longest)
        return self._report(stack, viewers, kills)

    def _kill(self, stack: Stack) -> list[Kill]:
        kills: list[Kill] = []
        rng = random.Random(self.seed)
        began = time.monotonic()
        while time.monotonic() - began < self.duration or (
            len(kills) < self.min_kills and time.monotonic() - began < self.longest
        ):
            time.sleep(self.every)
            hit = {k.task_id for k in kills}
            running = {
                pid: task
                for pid, task in running_tasks(stack, busy_for=1.0).items()
                if task not in hit
            }
            if running:
                victim = rng.choice(sorted(running))
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(Kill(victim, running[victim], time.time()))
                except ProcessLookupError:
                    pass
        return kills

    def _report(self, stack: Stack, viewers: list[Viewer], kills: list[Kill]) -> dict[str, Any]:
        outcomes = {"done": 0, "lost": 0, "duplicated": 0, "hung": 0, "retried": 0}
        problems: list[dict[str, Any]] = []
        finals: dict[str, dict[str, Any]] = {}
        for v in viewers:
            try:
                final = wait_final(stack, v.task_id, v.headers, limit=self.settle)
            except AssertionError:
                outcomes["hung"] += 1
                problems.append({"hung": status_of(stack, v.task_id, v.headers)})
                continue
            finals[v.task_id] = final
            if final["status"] != "done":
                outcomes["lost"] += 1
                problems.append({"lost": final})
                continue
            outcomes["done"] += 1
            outcomes["retried"] += final["attempt"] > 1
            ok, _ = whole(v.events, final)
            if not ok:
                outcomes["duplicated"] += 1
                problems.append({"not whole": v.task_id, "viewer": v.problem})
        by_task = {v.task_id: v for v in viewers}
        told, reset, done = [], [], []
        for k in kills:
            victim = by_task.get(k.task_id or "")
            if victim is None:
                continue
            after = [e for e in victim.events if e.at > k.at]
            lost = next((e.at for e in after if e.event == "status"), None)
            first_reset = next((e.at for e in after if e.data.get("type") == "reset"), None)
            end = next((e.at for e in after if e.data.get("type") in TERMINAL), None)
            if lost is not None:
                told.append(lost - k.at)
            if first_reset is not None:
                reset.append(first_reset - k.at)
            if end is not None:
                done.append(end - k.at)

        # beside them, what an answer takes when nothing happens to it: its viewer's first
        # event to its last
        killed = {k.task_id for k in kills}
        undisturbed = [
            v.events[-1].at - v.events[0].at
            for v in viewers
            if v.task_id not in killed and v.events
        ]

        def p(values: list[float]) -> dict[str, float | None]:
            return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}

        return {
            "answers": len(viewers),
            "kills": len(kills),
            **outcomes,
            "problems": problems,
            "heartbeat_seconds": heartbeat_seconds(stack),
            "recovery_seconds": {
                "death_to_worker_lost_seen": p(told),
                "death_to_reset_seen": p(reset),
                "death_to_done_seen": p(done),
                "undisturbed_answer": p(undisturbed),
            },
            "recoveries_measured": {"told": len(told), "reset": len(reset), "done": len(done)},
        }
