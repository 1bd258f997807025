"""`glass` without the full install (the torch-free runtime's environment): one line that says what to
install, never a traceback. The missing packages are simulated by blocking their import in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY = "import sys; {block}sys.argv = ['glass', '--help']; from glass_ad.cli import main; main()"


@pytest.mark.parametrize("blocked", [("typer",), ("typer", "torch", "scipy", "sklearn")])
def test_glass_without_typer_says_what_to_install_in_one_line(blocked):
    block = "".join(f"sys.modules[{name!r}] = None; " for name in blocked)
    done = subprocess.run(
        [sys.executable, "-c", ENTRY.format(block=block)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert 'pip install "glass-ad"' in lines[0] and "typer" in lines[0]
    assert "python -m glass_ad.inference.runtime" in lines[0]


def test_glass_with_the_full_install_still_runs():
    done = subprocess.run(
        [sys.executable, "-c", ENTRY.format(block="")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and "Usage" in done.stdout and "test" in done.stdout


def test_a_broken_module_of_the_package_is_not_reported_as_an_install_problem():
    code = "import sys; sys.modules['glass_ad.cli.train'] = None; import glass_ad.cli"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "Traceback" in done.stderr
