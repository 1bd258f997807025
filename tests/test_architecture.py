"""The package's rooms and who may use whom (docs/architecture.md): a test fails when an import crosses the
layering, lazy imports inside functions included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import glass_ad

PACKAGE = Path(glass_ad.__file__).parent

# Each room and the rooms it may import (besides itself). Lower rooms never import higher ones.
ALLOWED = {
    "config": set(),
    "safety": set(),
    "ray_session": set(),
    "allocator": set(),
    "data": {"config"},
    "synthesis": {"config", "data"},
    "model": {"config", "data", "safety"},
    "provenance": {"config", "model", "safety"},
    "evaluation": {"config", "data", "model", "safety"},
    "training": {"config", "data", "synthesis", "model", "evaluation", "provenance", "safety"},
    # synthesis: the int8 export calibrates and checks on LAS anomalies (openvino_export).
    "inference": {"config", "data", "synthesis", "model", "evaluation", "safety", "ray_session"},
    "serve": {"config", "data", "model", "evaluation", "inference", "safety"},
    "research": {
        "config", "data", "synthesis", "model", "evaluation", "training", "inference", "provenance", "safety",
        "ray_session",
    },  # fmt: skip
    "cli": {
        "config", "data", "synthesis", "model", "evaluation", "training", "inference", "serve", "research",
        "provenance", "safety", "ray_session", "allocator",
    },  # fmt: skip
    "__main__": {"cli"},
    "__init__": set(),
}


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "glass_ad" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


def test_every_module_lives_in_a_known_room():
    rooms = {_room(p) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(ALLOWED), sorted(rooms - set(ALLOWED))


def test_imports_follow_the_layering():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path)
        for used in _imported_rooms(path) - {room}:
            if used not in ALLOWED[room]:
                crossings.append(f"{path.relative_to(PACKAGE)} imports glass_ad.{used}")
    assert not crossings, "\n".join(crossings)


def test_no_relative_imports():
    """Absolute imports only: a module reads the same wherever it is moved."""
    relative = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert not relative, relative


def test_the_plant_runtime_imports_no_torch():
    """`glass_ad.inference.runtime` runs on a plant PC with onnxruntime, numpy and Pillow only."""
    code = "import sys, glass_ad.inference.runtime; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
