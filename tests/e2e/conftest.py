from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from localcloud.up import Options, Ports, Stack
from tests.conftest import ARTIFACTS, free_port, unique

FAKE_TOKENS = 40


@pytest.fixture(scope="session")
def local_stack() -> Iterator[Stack]:
    """The whole local stack, started as `./run.sh start` starts it, on free ports."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        pytest.fail("unset AWS_ENDPOINT_URL: the e2e stack runs its own emulator")
    opts = Options(
        stack=unique("e2e"),
        ports=Ports(
            aws=free_port(),
            api=free_port(),
            stream=free_port(),
            openai=free_port(),
            frontend=free_port(),
        ),
        workers=4,
        fake_tokens=FAKE_TOKENS,
        fake_tps=100.0,
        fake_ttft_ms=50.0,
        state_dir=ARTIFACTS / "e2e-stack",
        # Small embedding batches, so a test can see POST /embeddings split its input.
        extra_env={"EMBEDDINGS_BATCH_SIZE": "2"},
    )
    stack = Stack(opts)
    stack.start()
    yield stack
    stack.stop()
