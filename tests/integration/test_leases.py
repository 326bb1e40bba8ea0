"""Each user's open streams as leases in the rate-limit table (the template's), on the
emulator: conditional puts, renewals and deletes as the stream function makes them."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

from llmstream.deps import Deps
from llmstream.exceptions import TooManyStreams
from llmstream.leases import HeldLease, Lease, StreamLeases

pytestmark = pytest.mark.integration
LEASE = 60.0


class Clock:
    """A settable clock: lease times without waiting for them."""

    def __init__(self, at: float = 1_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def leases(deps: Deps, clock: Clock, cap: int = 3) -> StreamLeases:
    return StreamLeases(
        deps.settings.rate_limit_table,
        deps.dynamodb,
        max_streams=cap,
        lease_seconds=LEASE,
        clock=clock,
    )


def someone() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def take(cap: StreamLeases, owner: str) -> Lease:
    lease = cap.acquire(owner)
    assert lease is not None
    return lease


def test_n_leases_then_a_refusal_that_says_when(deps: Deps) -> None:
    clock, owner = Clock(), someone()
    cap = leases(deps, clock)
    # GIVEN three streams opened a few seconds apart
    held = []
    for _ in range(3):
        held.append(take(cap, owner))
        clock.at += 5
    assert len({h.slot for h in held}) == 3
    # WHEN a fourth is asked for
    with pytest.raises(TooManyStreams) as refused:
        cap.acquire(owner)
    # THEN it is refused until the first lease could run out (60 s after it was taken)
    assert refused.value.retry_after == pytest.approx(LEASE - 15)
    assert "3 at a time" in str(refused.value)
    # AND once one is released, a new one is taken on its slot
    cap.release(held[1])
    again = take(cap, owner)
    assert again.slot == held[1].slot and again.lease_id != held[1].lease_id
    with pytest.raises(TooManyStreams):
        cap.acquire(owner)


def test_an_expired_lease_is_taken_over_and_its_holder_cannot_renew_it(deps: Deps) -> None:
    clock, owner = Clock(), someone()
    cap = leases(deps, clock)
    first = take(cap, owner)
    rest = [take(cap, owner) for _ in range(2)]
    # GIVEN the first stream's environment died (no renewal), the others renew
    clock.at += LEASE - 1
    assert all(cap.renew(r) for r in rest)
    with pytest.raises(TooManyStreams) as refused:
        cap.acquire(owner)
    assert refused.value.retry_after == pytest.approx(1.0)  # the dead one's: 1 s left
    # WHEN its lease has run out
    clock.at += 2
    # THEN its slot is taken by a new stream, and only its slot
    new = take(cap, owner)
    assert new.slot == first.slot
    # AND the old holder cannot renew or delete the new holder's lease
    assert cap.renew(first) is False
    cap.release(first)
    with pytest.raises(TooManyStreams):
        cap.acquire(owner)
    # AND the renewed leases outlive their first term (they ran to 60 s, now 119 s)
    clock.at += LEASE - 5
    with pytest.raises(TooManyStreams):
        cap.acquire(owner)


def test_retry_after_is_at_least_a_second(deps: Deps) -> None:
    clock, owner = Clock(), someone()
    cap = leases(deps, clock, cap=1)
    take(cap, owner)
    clock.at += LEASE - 0.01
    with pytest.raises(TooManyStreams) as refused:
        cap.acquire(owner)
    assert refused.value.retry_after >= 1.0


def test_users_are_independent_and_zero_is_no_cap(deps: Deps) -> None:
    clock = Clock()
    cap = leases(deps, clock, cap=2)
    alice, bob = someone(), someone()
    take(cap, alice)
    take(cap, alice)
    with pytest.raises(TooManyStreams):
        cap.acquire(alice)
    assert take(cap, bob).owner == bob
    assert leases(deps, clock, cap=0).acquire(alice) is None


def test_a_released_lease_is_not_recreated_by_a_late_renewal(deps: Deps) -> None:
    clock, owner = Clock(), someone()
    cap = leases(deps, clock, cap=1)
    lease = take(cap, owner)
    cap.release(lease)
    cap.release(lease)  # twice: a no-op
    # WHEN a renewal that was in flight lands after the delete
    assert cap.renew(lease) is False
    # THEN the slot stays free
    take(cap, owner)


def test_concurrent_opens_never_exceed_the_cap(deps: Deps) -> None:
    clock, owner = Clock(), someone()
    cap = leases(deps, clock, cap=4)
    start = threading.Barrier(8)

    def open_one(_: int) -> Lease | None:
        start.wait(10)
        try:
            return cap.acquire(owner)
        except TooManyStreams:
            return None

    # WHEN 16 streams of one user open at once, 8 at a time
    with ThreadPoolExecutor(8) as pool:
        got = [lease for lease in pool.map(open_one, range(8)) if lease]
        got += [lease for lease in pool.map(open_one, range(8)) if lease]
    # THEN exactly 4 hold a slot, each a different one
    assert len(got) == 4
    assert len({lease.slot for lease in got}) == 4


def test_a_held_lease_renews_when_due_and_is_released_once(deps: Deps) -> None:
    clock, owner = Clock(), someone()
    cap = leases(deps, clock, cap=1)
    held = HeldLease(cap, take(cap, owner))
    assert held.lease is not None
    first_until = held.lease.until

    async def scenario() -> None:
        await held.tick()  # not due: nothing changes
        assert held.lease is not None and held.lease.until == first_until
        clock.at += cap.renew_every
        await held.tick()
        assert held.lease.until == pytest.approx(first_until + cap.renew_every)
        # long after the first term, the lease still holds the slot
        clock.at += LEASE - 1
        with pytest.raises(TooManyStreams):
            cap.acquire(owner)
        await held.release()
        await held.release()

    anyio.run(scenario)
    take(cap, owner)
