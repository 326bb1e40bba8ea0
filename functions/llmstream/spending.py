"""What one attempt at an answer spends, and where that is settled.

Two accounts: the shared model rate limits (the attempt takes an estimate from the token
bucket before it calls the model, and gives back the difference when it ends), and the
owner's day. On the day, the task reserved an estimate at admission. Each attempt accounts
for what it uses as it goes (at every heartbeat): out of the reservation while some is
left (the day counts it already), else charged to the day; so a worker that dies mid-answer
has accounted for all but its last beat's tokens. The attempt that ends the answer settles
what is left of the reservation with the rest of its usage, once for the task
(reservations.py), before it writes the terminal event; an attempt that does not end it
(retried, superseded), or finds nothing left to settle, charges the rest itself.
docs/quotas.md tells the whole story.
"""

from __future__ import annotations

import logging
import threading
import time
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
        self.consumed = 0  # tokens of this attempt taken out of the task's reservation
        self.charged = 0  # tokens of this attempt added to the owner's day beyond it
        self.settled = False  # this attempt settled the task's reservation (or tried)
        # The heartbeat charges from the watchdog's thread; the ending, from the answer's.
        self._lock = threading.Lock()

    def spent(self, text: str) -> int:
        """The tokens used: the model's usage, else an estimate of the prompt and of what
        it said, ``text`` (~4 characters a token); none if the model was never asked."""
        if not self.called:
            return 0
        prompt = self.estimate - min(self.task.max_tokens or 1024, 1024)
        return int(self.usage.get("total_tokens") or prompt + len(text) // 4)

    def checkpoint(self, text: str) -> None:
        """The answer is running (a heartbeat): account for what this attempt has used
        since the last checkpoint, out of the reservation, else on the owner's day. What
        fails to be written is made up by the next checkpoint, or the end."""
        with self._lock:
            new = self.spent(text) - self.consumed - self.charged
            if self.settled or new <= 0:
                return
            try:
                taken = reservations.consume(self.deps, self.task, new)
                self.consumed += taken
                if new > taken:
                    self.deps.quotas.charge(self.task.owner, new - taken)
                    self.charged += new - taken
            except StoreUnavailable:
                logger.warning("task %s: could not account for its tokens", self.task.task_id)

    def settle(self, text: str) -> None:
        """The answer ends (its terminal event next): settle what is left of the task's
        reservation with what this attempt used beyond its checkpoints. Nothing left (settled
        by an attempt that died before its terminal event; given back at the last delivery
        or by a deleted conversation; all consumed) leaves the rest to close(). A settlement
        that fails leaves the reservation as the charge: the day is over-, not
        under-counted."""
        with self._lock:
            self.settled = True  # until it is known that there was nothing to settle
            rest = self.spent(text) - self.consumed - self.charged
            try:
                self.settled = reservations.settle(self.deps, self.task, rest)
            except StoreUnavailable:
                logger.warning("task %s: could not settle its reservation", self.task.task_id)

    def close(self, text: str) -> None:
        """The attempt is over, however it ended: both accounts corrected."""
        actual = self.spent(text)
        if self.estimate:
            self.deps.limits.settle(self.estimate, actual)
        with self._lock:
            if self.settled:
                return
            rest = actual - self.consumed - self.charged
            self.charged += rest
        # A failed charge must not hide how the answer ended.
        try:
            self.deps.quotas.adjust(self.task.owner, rest, time.time())
        except StoreUnavailable:
            logger.warning("task %s: could not charge %d tokens", self.task.task_id, rest)


def last_delivery(deps: Deps, task: Task, receive_count: int) -> None:
    """The last delivery SQS makes of a task's message (maxReceiveCount): if this attempt
    dies too, the message goes to the dead-letter queue, where nothing settles the task's
    reservation. So it gives what is left of it back first, and charges the day what it
    uses as it goes, as every attempt after it does (a redriven message's)."""
    if receive_count < deps.settings.max_receive_count or not task.reserved:
        return
    try:
        reservations.release(deps, task)
    except StoreUnavailable:
        logger.warning("task %s: could not give back its reservation", task.task_id)
        return
    task.reserved = None


def settle_ended(deps: Deps, task: Task, ended: dict[str, Any]) -> None:
    """A task whose log had already ended when this attempt took it (its attempt died
    before the row said so): settled before its terminal event, it has nothing left to
    settle; a log ended by a version that settled after it is settled here with the usage
    it recorded (without one, the reservation stands as the charge)."""
    used = (ended.get("usage") or {}).get("total_tokens", task.reserved or 0)
    reservations.settle_quietly(deps, task, int(used))
