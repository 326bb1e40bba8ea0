"""IaC scanners on template.yaml: cfn-lint and checkov report nothing, and every suppression
carries its reason. checkov scans the SAM template and its CloudFormation translation (so the
resources SAM generates are checked too)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud.template import translate_file

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def tool(name: str, env_var: str, default: Path) -> str:
    path = os.environ.get(env_var) or (str(default) if default.exists() else shutil.which(name))
    if not path:
        pytest.fail(f"{name} is not installed: ./run.sh test installs it ({env_var} names it)")
    return path


def test_cfn_lint_is_clean() -> None:
    cfn_lint = tool("cfn-lint", "CFN_LINT", Path(sys.executable).parent / "cfn-lint")
    result = subprocess.run(
        [cfn_lint, "template.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_checkov(target: Path, output: str) -> subprocess.CompletedProcess[str]:
    binary = tool("checkov", "CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov")
    return subprocess.run(
        [
            binary,
            "--config-file",
            str(ROOT / ".checkov.yaml"),
            "-f",
            str(target),
            "-o",
            output,
            "--compact",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_checkov_passes_the_sam_template_and_every_skip_is_justified() -> None:
    result = run_checkov(ROOT / "template.yaml", "json")
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] > 10  # the scanner really looked at the resources
    unjustified = [
        c["check_id"]
        for c in report["results"]["skipped_checks"]
        if len(c["check_result"].get("suppress_comment") or "") < 20
    ]
    assert unjustified == []


def test_checkov_passes_the_translated_template(tmp_path: Path) -> None:
    # The CloudFormation SAM generates (roles, permissions, the function URL, the API stage)
    # is what gets deployed: scan it too. checkov's JSON report fails on this input, so read
    # its summary line.
    target = tmp_path / "translated.json"
    target.write_text(json.dumps(translate_file(), indent=1))
    result = run_checkov(target, "cli")
    summary = re.search(
        r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", result.stdout
    )
    assert summary, result.stdout[-3000:] + result.stderr[-3000:]
    passed, failed, _skipped = map(int, summary.groups())
    assert failed == 0, result.stdout[-5000:]
    assert passed > 10
