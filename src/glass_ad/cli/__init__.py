"""The `glass` command (Typer). One module per kind of work; every option that sets a `GlassConfig` field is
named like it (options.py), and every command calls the library (the CLI holds no method code).

The command needs the full install (Typer, PyTorch, …). On a machine with only the torch-free runtime
(`pip install --no-deps glass-ad` beside numpy, onnxruntime and Pillow), `glass` says so in one line instead
of a traceback; the runtime there is `python -m glass_ad.inference.runtime`.
"""

from __future__ import annotations

import sys

_MISSING: ModuleNotFoundError | None = None

try:
    # isort: off
    from glass_ad.cli.common import app

    # Importing a module registers its commands; this order is the order of `glass --help`.
    from glass_ad.cli import train, evaluate, deploy, research  # noqa: F401
    # isort: on
except ModuleNotFoundError as error:  # a third-party package of the full install is absent
    if (error.name or "glass_ad").split(".")[0] == "glass_ad":
        raise  # a module of this package: a bug, not an install question
    _MISSING = error

__all__ = ["app", "main"]


def missing_install_line(error: ModuleNotFoundError) -> str:
    """The one line `glass` prints when a package of the full install is missing."""
    return (
        f'error: the glass command needs the full install ({error.name} is not installed): pip install "glass-ad"; '
        "a torch-free runtime machine scores images with: python -m glass_ad.inference.runtime MODEL.onnx IMAGE..."
    )


def __getattr__(name: str):
    if name == "app" and _MISSING is not None:
        raise _MISSING
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    if _MISSING is not None:
        print(missing_install_line(_MISSING), file=sys.stderr)
        raise SystemExit(1)
    app()
