from __future__ import annotations

import pytest

from localcloud.fake_openai import Behaviour, answer_tokens, expected_answer, parse_directive

pytestmark = pytest.mark.unit
HI = [{"role": "user", "content": "hi there"}]


def test_answer_is_deterministic_and_derived_from_the_prompt() -> None:
    assert expected_answer(HI) == expected_answer(list(HI))
    assert expected_answer(HI) != expected_answer([{"role": "user", "content": "other"}])
    assert expected_answer(HI).startswith('You asked: "hi there".')


def test_length_and_max_tokens() -> None:
    tokens, reason = answer_tokens(HI, None, Behaviour(tokens=30))
    assert len(tokens) == 30 and reason == "stop"
    tokens, reason = answer_tokens(HI, 7, Behaviour(tokens=30))
    assert len(tokens) == 7 and reason == "length"


def test_directive_overrides_behaviour() -> None:
    b = parse_directive("x [[fake tokens=5 tps=10 ttft_ms=0 status=429]]", Behaviour())
    assert (b.tokens, b.tps, b.ttft_ms, b.status) == (5, 10.0, 0.0, 429)
    assert parse_directive("no directive", Behaviour()) == Behaviour()
