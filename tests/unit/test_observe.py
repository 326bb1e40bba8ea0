"""observe.py: EMF records, trace headers and correlation keys; and the local summary of
the records (`./run.sh metrics`)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from llmstream import observe
from llmstream.observe import Record, Unit
from localcloud import metrics

pytestmark = pytest.mark.unit


def emf_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_a_record_prints_one_emf_line_with_its_dimensions_rollup_and_properties(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = Record("worker", priority="high", backend="dynamodb", model="m", empty=None)
    record.count("AnswersDone")
    for ms in range(250):
        record.measure("ChunkLogWriteLatency", ms, Unit.Milliseconds)
    record.property(task_id="t1", trace_id="1-abc-def", nothing=None)
    record.flush()
    record.flush()  # once only
    (line,) = emf_lines(capsys.readouterr().out)
    (directive,) = line["_aws"]["CloudWatchMetrics"]  # type: ignore[index]
    finest, rollup = directive["Dimensions"]
    assert set(finest) == {"function", "priority", "backend", "model", "service"}
    assert rollup == [d for d in finest if d in ("function", "service")]
    assert line["AnswersDone"] == [1.0]
    latencies = line["ChunkLogWriteLatency"]
    assert isinstance(latencies, list) and len(latencies) == 99  # EMF's limit, spread evenly
    assert latencies[0] == 0 and latencies[-1] > 240
    assert line["task_id"] == "t1" and "nothing" not in line and "empty" not in line


def test_an_empty_record_prints_nothing_and_an_unknown_metric_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Record("api").flush()
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match=r"not in observe\.METRICS"):
        Record("api").count("ChatAcepted")


def test_trace_headers_come_from_lambda_then_the_caller_then_a_new_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lambdas = "Root=1-6b02b41f-000000000000000000000001;Parent=53995c3f42cd8ad8;Sampled=1"
    callers = "Root=1-6b02b41f-000000000000000000000002"
    monkeypatch.setenv(observe.TRACE_ENV, lambdas)
    assert observe.trace_header(callers) == lambdas
    monkeypatch.delenv(observe.TRACE_ENV)
    assert observe.trace_header(callers) == callers
    minted = observe.trace_header("garbage")
    assert observe.trace_id(minted) is not None and minted != observe.trace_header()
    assert observe.trace_id(lambdas) == "1-6b02b41f-000000000000000000000001"
    assert observe.trace_id("Parent=1;Sampled=0") is None
    assert observe.trace_attribute(None) == {}
    sent = observe.trace_attribute(callers)["MessageSystemAttributes"]["AWSTraceHeader"]
    assert sent == {"DataType": "String", "StringValue": callers}


def test_a_request_scope_drops_the_keys_of_the_one_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(observe.logger.registered_handler, "stream", out)
    with observe.request_scope(task_id="first", trace_id="1-a-b"):
        observe.correlate(user="u1", none=None)
        logging.getLogger("llmstream.answer").info("one")  # a module logger propagates
    with observe.request_scope(task_id="second"):
        observe.logger.info("two")
    one, two = (json.loads(x) for x in out.getvalue().splitlines())
    assert (one["task_id"], one["user"], one["trace_id"]) == ("first", "u1", "1-a-b")
    assert one["message"] == "one" and "none" not in one
    assert two["task_id"] == "second" and "user" not in two and "trace_id" not in two


def test_the_local_summary_answers_the_three_questions_from_the_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the records of three answers (one an error) and two streams, as logged
    for outcome, queue_ms in (("AnswersDone", 10), ("AnswersDone", 30), ("AnswersError", 50)):
        r = Record("worker", priority="default", backend="dynamodb", model="m")
        r.count(outcome)
        r.measure("QueueTime", queue_ms, Unit.Milliseconds)
        r.flush()
    for resumed in (False, True):
        s = Record("stream", backend="dynamodb")
        s.count("StreamsOpened")
        if resumed:
            s.count("StreamResumes")
        s.flush()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker.log").write_text("plain poller line\n" + capsys.readouterr().out)
    # WHEN they are summed up
    report = metrics.report(logs)
    # THEN the rollup did not count anything twice, and the headline says what happened
    assert "done 2, error 1" in report and "error rate 33.3%" in report
    assert "in the queue p50 30 / p95 48 ms" in report
    assert "2 stream(s) opened, 1 resumed, 0 cut short" in report
    queue = next(line for line in report.splitlines() if line.startswith("QueueTime "))
    assert queue.split()[-5:] == ["3", "90", "30", "48", "50"]
    assert metrics.report(logs, since_minutes=1e-9).startswith("no metrics yet")
