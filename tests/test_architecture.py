"""The package's rooms and who may use whom (docs/architecture.md): a test fails when an import crosses the
layering or closes a cycle between modules, lazy imports inside functions included."""

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


def _module_name(path: Path) -> str:
    parts = ("glass_ad", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its text (module level, inside functions, under
    TYPE_CHECKING); ``from glass_ad.x import y`` names the module ``glass_ad.x.y`` when there is one."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        used = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    used.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                used.update(alias.name for alias in node.names)
        graph[name] = {module for module in used if module in modules and module != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that reach each other through imports (each group is one cycle or more)."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        reach[start] = seen
    groups: list[set[str]] = []
    for module in sorted(graph):
        if module in reach[module] and not any(module in group for group in groups):
            groups.append({other for other in reach[module] if module in reach[other]})
    return groups


def test_no_import_cycles():
    """No two modules import each other, directly or through others, not even lazily: a reader can follow
    the package from its leaves up, and no import order decides whether a name exists yet."""
    cycles = _cycles(_import_graph())
    assert not cycles, "\n".join(" <-> ".join(sorted(group)) for group in cycles)


def test_the_cycle_finder_groups_a_three_module_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [{"a", "b", "c"}]


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
