"""Property-based requests to both apps, generated from their own OpenAPI (Schemathesis on
Hypothesis), valid and invalid ones, signed in as an operator (so every route runs, the
operators' ones too): no request, however odd its path, query, headers or body, may make
either app answer 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from localcloud.up import Stack
from tests.e2e.conftest import auth, described

pytestmark = [pytest.mark.e2e]

# Cases per operation and mode. Derandomized: the same cases every run, so a red CI is a
# bug to reproduce, not a coin toss (a new route or field changes them).
EXAMPLES = 25


def fuzz(
    spec: dict[str, Any], base_url: str, headers: dict[str, str]
) -> tuple[dict[str, int], list[str]]:
    """Every operation of the description ``spec``, valid and invalid requests, sent to
    ``base_url``: the cases run per operation, and the failures."""
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=base_url)
    cases: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                label = case.operation.label
                cases[label] = cases.get(label, 0) + 1
                # A generated Authorization header would replace the operator's.
                case.headers = {
                    k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
                }
                case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=30)

            try:
                run()
            except Unsatisfiable:
                pass  # no invalid request exists for an operation that takes no input
            except Exception as e:  # every operation's failure, not only the first
                failures.append(f"{operation.label} ({mode.value}): {e}")
    return cases, failures


@pytest.mark.parametrize("function", ["api", "stream"])
def test_no_request_makes_an_app_answer_5xx(local_stack: Stack, function: str) -> None:
    # GIVEN an operator's token and the app's own OpenAPI (the stream's built in-process:
    # its public URL serves none)
    headers = auth(local_stack, "fuzz-operator", admin=True)
    # WHEN every operation gets valid and invalid generated requests
    spec = described(local_stack, function)
    cases, failures = fuzz(spec, local_stack.urls[function], headers)
    # THEN every operation was tried, and none answered 5xx
    assert cases and min(cases.values()) > 0, cases
    assert not failures, "\n\n".join(failures)
    print(f"{function}: {sum(cases.values())} cases over {len(cases)} operations")  # noqa: T201
