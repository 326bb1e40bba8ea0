"""The benchmark's clients: a 4-second answer streamed straight from the fake model (the
baseline) or through the pipeline (POST /chat, then its SSE stream, resumed like
EventSource), each checked whole and timed token by token."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import httpx
from httpx_sse import connect_sse
from openai import OpenAI

from localcloud.fake_openai import Behaviour, answer_tokens, request_key

# A 4-second answer: 160 tokens at 40 tokens/s after 200 ms to the first token.
TOKENS, TPS, TTFT_MS = 160, 40.0, 200.0
FAKE = Behaviour(tokens=TOKENS, tps=TPS, ttft_ms=TTFT_MS)


@dataclass
class Answer:
    ok: bool
    ttft: float  # request sent -> first text at the client (s)
    delays: list[float] = field(default_factory=list)  # token emitted -> client read (s)
    stream_seconds: float = 0.0  # first text -> last text at the client
    problem: str | None = None
    # pipeline only
    task_id: str | None = None
    post_ms: float | None = None
    sent_at: float = 0.0  # wall clock, when the POST went out
    first_at: float = 0.0  # wall clock, when the first text arrived
    sse_seconds: float = 0.0  # the SSE response, open to close
    bytes_in: int = 0  # what the client received (POST answer + SSE)


def _delays(message: str, arrivals: list[tuple[float, int]], fake_url: str) -> list[float]:
    """Per token: when the client had it minus when the fake model emitted it."""
    messages = [{"role": "user", "content": message}]
    tokens, _ = answer_tokens(messages, None, FAKE)
    emitted = httpx.get(f"{fake_url}/fake/emissions/{request_key(messages)}").json()["times"]
    ends, total = [], 0
    for token in tokens:
        total += len(token)
        ends.append(total)
    out, i = [], 0
    for arrived, length in arrivals:
        while i < len(ends) and ends[i] <= length and i < len(emitted):
            out.append(arrived - emitted[i])
            i += 1
    return out


def _expected(message: str) -> str:
    return "".join(answer_tokens([{"role": "user", "content": message}], None, FAKE)[0])


def baseline(fake_url: str, n: int) -> Answer:
    message = f"bench baseline {n} {uuid.uuid4().hex[:8]}"
    client = OpenAI(base_url=f"{fake_url}/v1", api_key="sk-bench", max_retries=0)
    started, arrivals, text, first = time.perf_counter(), [], "", None
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": message}], stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                text += choice.delta.content
                arrivals.append((time.time(), len(text)))
    whole = text == _expected(message)
    return Answer(
        ok=whole,
        ttft=(first or started) - started,
        delays=_delays(message, arrivals, fake_url),
        stream_seconds=arrivals[-1][0] - arrivals[0][0] if arrivals else 0.0,
        problem=None if whole else "text differs",
    )


def pipeline(api: str, fake_url: str, n: int, user: dict[str, str]) -> Answer:
    """Answer ``n``, asked by the user whose Authorization header is ``user``."""
    try:
        return _pipeline(api, fake_url, n, user)
    except httpx.HTTPError as e:  # one answer's failure is a figure, not the run's end
        return Answer(ok=False, ttft=0.0, problem=f"{type(e).__name__}: {e}"[:200])


def _pipeline(api: str, fake_url: str, n: int, user: dict[str, str]) -> Answer:
    message = f"bench pipeline {n} {uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=180) as client:
        sent_at, started = time.time(), time.perf_counter()
        resp = client.post(f"{api}/chat", json={"message": message}, headers=user)
        post_ms = (time.perf_counter() - started) * 1000
        if resp.status_code != 202:
            return Answer(
                ok=False, ttft=0.0, problem=f"POST /chat {resp.status_code}: {resp.text}"[:200]
            )
        body = resp.json()
        bytes_in = len(resp.content)
        arrivals, text, first, first_at, final = [], "", None, 0.0, None
        ids: list[int] = []
        opened = time.perf_counter()
        # As EventSource does: a response that ends before the terminal event is resumed
        # with Last-Event-ID (the stream ends one when its store does not answer). The
        # stream_url carries its own short-lived token: no Authorization header.
        for _ in range(_RECONNECTS + 1):
            headers = {"Last-Event-ID": str(ids[-1])} if ids else {}
            with connect_sse(client, "GET", body["stream_url"], headers=headers) as source:
                for sse in source.iter_sse():
                    if not sse.data:  # a keep-alive comment (httpx-sse hands it over)
                        bytes_in += 8
                        continue
                    bytes_in += len(sse.id) + len(sse.data) + 12  # "id: ", "data: ", newlines
                    if sse.event != "message":  # `event: status` (worker lost): no seq
                        continue
                    ids.append(int(sse.id))
                    data = json.loads(sse.data)
                    if data.get("type") == "reset":  # a new attempt starts the text over
                        text, arrivals = "", []
                        continue
                    if "chunk" in data:
                        if first is None:
                            first, first_at = time.perf_counter(), time.time()
                        text += data["chunk"]
                        arrivals.append((time.time(), len(text)))
                    else:
                        final = data.get("type")
            if final is not None:
                break
        sse_seconds = time.perf_counter() - opened
    whole = text == _expected(message) and ids == list(range(1, len(ids) + 1)) and final == "done"
    return Answer(
        ok=whole,
        ttft=(first or started) - started,
        delays=_delays(message, arrivals, fake_url),
        stream_seconds=arrivals[-1][0] - arrivals[0][0] if arrivals else 0.0,
        problem=None if whole else f"final={final} seqs_dense={ids == sorted(set(ids))}",
        task_id=body["task_id"],
        post_ms=post_ms,
        sent_at=sent_at,
        first_at=first_at,
        sse_seconds=sse_seconds,
        bytes_in=bytes_in,
    )


_RECONNECTS = 3


def warm_up(api: str, fake: str, k: int, user: dict[str, str]) -> None:
    """A short answer each way (not measured): connections, caches, imports, the issuer's
    keys."""
    # two seconds long, so concurrent warm-ups overlap and each takes an environment
    message = f"warm up {k} [[fake tokens=40 tps=20]]"
    client = OpenAI(base_url=f"{fake}/v1", api_key="sk-bench", max_retries=0)
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": message}], stream=True
    ):
        pass
    with httpx.Client(timeout=60) as http:
        resp = http.post(f"{api}/chat", json={"message": message}, headers=user)
        resp.raise_for_status()
        body = resp.json()
        with connect_sse(http, "GET", body["stream_url"]) as source:
            for _ in source.iter_sse():
                pass


def finished_answer(api: str, user: dict[str, str]) -> dict[str, str]:
    """A short answer, followed to its end: its POST /chat body (task id, stream URL)."""
    with httpx.Client(timeout=60) as http:
        resp = http.post(f"{api}/chat", json={"message": "cold [[fake tokens=3]]"}, headers=user)
        resp.raise_for_status()
        body: dict[str, str] = resp.json()
        with connect_sse(http, "GET", body["stream_url"]) as source:
            for _ in source.iter_sse():
                pass
    return body
