"""What one attempt at an answer spends, and where that is settled.

Two accounts: the shared model rate limits (the attempt takes an estimate from the token
bucket before it calls the model, and gives back the difference when it ends), and the
owner's day (the task reserved an estimate at admission; the attempt that ends the answer
settles that reservation, once for the task, reservations.py; an attempt that does not end
it, retried or superseded, charges what it used besides).
"""

from __future__ import annotations

import logging
from typing import Any

from llmstream import reservations
from llmstream.deps import Deps
from llmstream.exceptions import StoreUnavailable
from llmstream.tasks import Task

logger = logging.getLogger(__name__)


class Spending:
    def __init__(self, deps: Deps, task: Task) -> None:
        self.deps = deps
        self.task = task
        self.usage: dict[str, Any] = {}  # the model's usage, once it reports it
        self.estimate = 0  # tokens taken from the shared rate limits for the call
        self.called = False  # the model was asked: this attempt spent tokens
        self.settled = False  # this attempt ended the answer and settled its reservation

    def spent(self, text: str) -> int:
        """The tokens used: the model's usage, else an estimate of the prompt and of what
        it said, ``text`` (~4 characters a token); none if the model was never asked."""
        if not self.called:
            return 0
        prompt = self.estimate - min(self.task.max_tokens or 1024, 1024)
        return int(self.usage.get("total_tokens") or prompt + len(text) // 4)

    def settle(self, text: str) -> None:
        """The answer has ended (its terminal event is written, its row not yet): settle
        the task's reservation with what this attempt used. From here the reservation
        accounts for this attempt: if it dies before settling, the next attempt finds
        the ended log and settles with the usage it recorded (answer.run_task)."""
        self.settled = True
        reservations.settle_quietly(self.deps, self.task, self.spent(text))

    def close(self, text: str) -> None:
        """The attempt is over, however it ended: both accounts corrected."""
        actual = self.spent(text)
        if self.estimate:
            self.deps.limits.settle(self.estimate, actual)
        if self.settled:
            return
        # A failed charge must not hide how the answer ended.
        try:
            self.deps.quotas.charge(self.task.owner, actual)
        except StoreUnavailable:
            logger.warning("task %s: could not charge %d tokens", self.task.task_id, actual)
