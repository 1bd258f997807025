"""The lock files (requirements/*.txt) and pyproject.toml agree (issue 28).

pyproject.toml declares ranges; the lock files hold the exact versions the suite passed with, which README's
commands and CI install. A dependency added to pyproject.toml but not to the lock, or a range that excludes the
locked version, fails here (renew with scripts/refresh_lock.sh) instead of installing something untested.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).parents[1]


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(name: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, sep, version = line.partition("==")
            assert sep and ";" not in version, f"not an exact pin in requirements/{name}.txt: {line}"
            pins[_name(package)] = Version(version)
    return pins


def _declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted, seen, requirements = list(extras), set(), [Requirement(r) for r in project["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if _name(requirement.name) == "glass-ad":
                wanted.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize("lock, extras", [("base", ()), ("test", ("test",)), ("test", ("dev",))])
def test_the_lock_holds_every_declared_dependency_within_its_range(lock, extras):
    pins = _lock(lock)
    for requirement in _declared(*extras):
        name = _name(requirement.name)
        assert name in pins, f"{requirement} is declared in pyproject.toml but not locked in requirements/{lock}.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock}.txt locks {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )


def test_base_lock_is_the_test_lock_cut_down_and_torch_is_a_range():
    base, test = _lock("base"), _lock("test")
    assert base.items() <= test.items()  # one set of versions: the demo runs what the suite tested
    assert {"torch", "torchvision", "opencv-python-headless", "pytest"} <= test.keys() and "pytest" not in base
    declared = {_name(r.name): r for r in _declared()}
    for name in ("torch", "torchvision"):  # installable beside another PyTorch: a range, not one release
        assert not any(spec.operator in ("==", "===") for spec in declared[name].specifier)
