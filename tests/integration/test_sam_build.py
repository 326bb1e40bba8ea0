"""`sam build` works on this machine without Docker, for the template's runtime and arch, and
ships exactly the pins of functions/requirements.txt."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from tests import lockcheck
from tests.conftest import ROOT
from tests.unit.test_template import sam

pytestmark = pytest.mark.integration


def shipped(code: Path) -> dict[str, str]:
    """The packages in a built function, canonical name -> version (`name-version.dist-info`)."""
    found: dict[str, str] = {}
    for dist_info in code.glob("*.dist-info"):
        dist, _, version = dist_info.name.removesuffix(".dist-info").rpartition("-")
        found[canonicalize_name(dist)] = version
    return found


def test_sam_build_makes_an_arm64_package_of_each_function(tmp_path: Path) -> None:
    runtime = "python3.12"
    if shutil.which(runtime) is None:
        pytest.fail(f"{runtime} is not on PATH: ./run.sh puts pyenv's {runtime} there")
    build = tmp_path / "build"
    result = subprocess.run(
        [
            sam(),
            "build",
            "--template-file",
            "template.yaml",
            "--build-dir",
            str(build),
            "--parallel",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = yaml.safe_load((build / "template.yaml").read_text().replace("!", ""))
    locked = {
        pin.name: pin.version for pin in lockcheck.parse(lockcheck.FUNCTIONS.read_text()).values()
    }
    for name in ("ApiFunction", "WorkerFunction", "StreamFunction"):
        code = build / name
        assert (code / "llmstream" / "api.py").exists()
        # Dependencies for the Lambda architecture, not this machine's.
        [core] = list((code / "pydantic_core").glob("_pydantic_core*.so"))
        assert "aarch64" in core.name
        assert built["Resources"][name]["Properties"]["CodeUri"] == name
        # Exactly the locked packages: every one of functions/requirements.txt, at its pin.
        assert shipped(code) == locked
    # The Lambda Web Adapter starts the stream function through run.sh.
    assert os.access(build / "StreamFunction" / "run.sh", os.X_OK)
