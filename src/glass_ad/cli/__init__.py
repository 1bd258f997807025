"""The `glass` command (Typer). One module per kind of work; every option that sets a `GlassConfig` field is
named like it (options.py), and every command calls the library (the CLI holds no method code)."""

# isort: off
from glass_ad.cli.common import app

# Importing a module registers its commands; this order is the order of `glass --help`.
from glass_ad.cli import train, evaluate, deploy, research  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    app()
