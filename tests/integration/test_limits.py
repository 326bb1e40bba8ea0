"""Shared rate limits: token buckets in DynamoDB with atomic conditional updates."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmstream.answer import run_task
from llmstream.deps import Deps
from llmstream.exceptions import RateLimited as Throttled
from llmstream.limits import Bucket, ModelLimits, TokenBuckets
from tests.integration.conftest import queued_task
from tests.integration.test_worker import submit

pytestmark = pytest.mark.integration


@pytest.fixture
def buckets(deps: Deps) -> TokenBuckets:
    return TokenBuckets(deps.settings.rate_limit_table, deps.dynamodb)


def bucket(per_minute: int) -> Bucket:
    return Bucket(f"test-{uuid.uuid4().hex[:8]}", per_minute)


def test_a_bucket_refills_at_its_rate(buckets: TokenBuckets) -> None:
    b = bucket(60)  # one a second
    assert buckets.take(b, 60, now=1000.0) == 0  # starts full
    assert buckets.take(b, 1, now=1000.0) == pytest.approx(1.0)  # empty: 1 s to the next
    assert buckets.take(b, 1, now=1001.0) == 0
    assert buckets.take(b, 10, now=1001.0) == pytest.approx(10.0)
    buckets.give_back(b, 5, now=1001.0)  # settled: the call used less than estimated
    assert buckets.take(b, 5, now=1001.0) == 0


def test_concurrent_takes_never_overspend(buckets: TokenBuckets) -> None:
    # GIVEN 10 requests a minute and 24 workers asking at the same moment
    b = bucket(10)
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda _: buckets.take(b, 1, now=5000.0), range(24)))
    # THEN exactly 10 got through: the conditional writes serialised them
    assert sum(1 for w in waits if w == 0) == 10


def test_a_clock_behind_the_last_writer_waits_no_longer_than_a_refill(
    buckets: TokenBuckets,
) -> None:
    # GIVEN an empty bucket last written at t=2000 (by a caller whose clock runs ahead,
    # or who read the clock later than us)
    b = bucket(60)
    assert buckets.take(b, 60, now=2000.0) == 0
    # WHEN a caller whose clock says 1990 asks for one
    wait = buckets.take(b, 1, now=1990.0)
    # THEN it is told one refill (1 s), not the 11 s its clock's lag would add
    assert wait == pytest.approx(1.0)


def test_no_limit_means_no_store_calls(buckets: TokenBuckets) -> None:
    assert buckets.take(Bucket("unused", 0), 10**9) == 0


def test_over_the_limit_the_task_waits_on_its_queue(deps: Deps) -> None:
    # GIVEN a limit of one model request a minute, already used by a first task
    deps.limits = ModelLimits(
        TokenBuckets(deps.settings.rate_limit_table, deps.dynamodb),
        rpm=1,
        tpm=0,
        prefix=f"t-{uuid.uuid4().hex[:8]}",
    )
    first = submit(deps, "first")
    run_task(deps, first.task_id)
    assert deps.tasks.get(first.task_id).status == "done"
    # WHEN a second task comes
    second = submit(deps, "second")
    with pytest.raises(Throttled) as throttled:
        run_task(deps, second.task_id)
    # THEN it is not run: it waits (status shows why), ~60 s until the bucket refills
    assert 50 < throttled.value.delay <= 60
    row = deps.tasks.get(second.task_id)
    assert row.status == "waiting" and "rate limited" in (row.error or "")
    assert deps.log.read_all(second.task_id) == []


def test_token_estimate_is_settled_with_real_usage(deps: Deps) -> None:
    # GIVEN 600 tokens a minute (10 a second) and a request allowing 50 completion tokens
    limits = ModelLimits(
        TokenBuckets(deps.settings.rate_limit_table, deps.dynamodb),
        rpm=0,
        tpm=600,
        prefix=f"t-{uuid.uuid4().hex[:8]}",
    )
    deps.limits = limits
    task = queued_task(deps, message="count my tokens", max_tokens=50)
    started = time.time()
    run_task(deps, task.task_id)
    elapsed = time.time() - started
    used = (deps.tasks.get(task.task_id).usage or {})["total_tokens"]
    # THEN the bucket lost what the call used (less the refill meanwhile), not the estimate
    left, _, _ = limits.buckets._read(limits.tpm, 0)
    assert 600 - left == pytest.approx(used - 10 * elapsed, abs=3)
