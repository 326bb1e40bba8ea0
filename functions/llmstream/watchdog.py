"""Watchdog: stops a running answer from outside its token loop (cancel, deadline, lost
claim) and beats its heartbeat while it runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from llmstream.exceptions import ClaimLost

logger = logging.getLogger(__name__)


class Watchdog:
    """Stops an answer from outside the token loop, and keeps it alive while it runs.

    A stalled model sends no tokens, so a check inside the loop could wait forever; this
    thread closes the model stream instead, which ends the loop at once: on a cancel
    request, at the deadline, or when the task's claim has passed to a newer attempt (this
    one is then a zombie and must stop writing). Every ``beat_every`` seconds it also
    calls ``beat``: the worker's heartbeat, which keeps the SQS message invisible for a
    short window and stamps the request row, so a dead worker's message is back within
    that window instead of the queue's visibility timeout (ClaimLost from it: a zombie).
    """

    def __init__(
        self,
        *,
        check: Callable[[], str | None],
        deadline: float,
        interval: float,
        stop: Callable[[], None],
        beat: Callable[[], None] | None = None,
        beat_every: float = 5.0,
    ) -> None:
        self.reason: str | None = None
        self._check = check
        self._deadline = deadline
        self._interval = interval
        self._stop = stop
        self._beat = beat
        self._beat_every = beat_every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="answer-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._done.wait(min(self._interval, max(0.0, self._deadline - time.monotonic()))):
            now = time.monotonic()
            if now >= self._deadline:
                self.reason = "timeout"
            else:
                try:
                    self.reason = self._check()
                except Exception:  # a failed check is not a cancel; try again next time
                    logger.warning("cancel check failed", exc_info=True)
                if self.reason is None and self._beat and now - last_beat >= self._beat_every:
                    last_beat = now
                    try:
                        self._beat()
                    except ClaimLost:
                        self.reason = "claim lost"
                    except Exception:  # SQS or the table hiccuped: the next beat retries
                        logger.warning("heartbeat failed", exc_info=True)
            if self.reason:
                self._stop()
                return
