"""The `glass` application object and what every command shares: errors as one line, resources held
for the duration of a command (locks, the declared bit depth), logging, thread counts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="GLASS anomaly detection: train on defect-free images, test, predict, export.",
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from glass_ad import __version__

        typer.echo(f"glass-ad {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """GLASS anomaly detection: train on defect-free images, test, predict, export."""
    from glass_ad.allocator import keep_freed_memory

    keep_freed_memory()  # reuse large CPU buffers between batches instead of page-faulting them anew


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


_COMMAND_STACKS: list = []  # one ExitStack per running command (see guarded)


@contextmanager
def one_line_errors(*more: type[BaseException]) -> Iterator[None]:
    """Expected failures of a command (bad input, a missing file, a refused output, a full disk, and the
    exception types in ``more``) end it with one `error:` line and exit code 2; anything else is a bug and
    keeps its traceback."""
    from glass_ad.safety import DiskFullError, is_disk_full

    try:
        yield
    except typer.Exit:
        raise
    except (OSError, RuntimeError) as error:
        if is_disk_full(error) and not isinstance(error, DiskFullError):  # a write outside `safety.atomic_path`
            name = getattr(error, "filename", None)
            fail(f"disk full{f': could not write {name!r}' if name else ''} — free some space and run again")
        if isinstance(error, (RuntimeError, FileNotFoundError, *more)):
            fail(str(error))
        fail(" ".join(str(error).split()))
    except (ValueError, *more) as error:
        fail(str(error))


def guarded(function):
    """Run a command with a stack that `_hold_for_command` fills; closed when the command ends, also on errors."""
    import functools
    from contextlib import ExitStack

    @functools.wraps(function)
    def run(*args, **kwargs):
        with ExitStack() as stack:
            _COMMAND_STACKS.append(stack)
            try:
                return function(*args, **kwargs)
            finally:
                _COMMAND_STACKS.pop()

    return run


def hold_for_command(*managers) -> None:
    """Enter context managers (output locks, the declared bit depth) for the rest of the running command."""
    stack = _COMMAND_STACKS[-1]
    for manager in managers:
        stack.enter_context(manager)


def literal_help(text: str) -> str:
    """Help text shown as written: with Rich help, square brackets (``glass-ad[openvino]``) would be read as
    markup and vanish, so they are escaped there."""
    from typer import core

    if core.DEFAULT_MARKUP_MODE != "rich":
        return text
    from rich.markup import escape

    return escape(text)


def remove_if_left_empty(*folders) -> None:
    """Folders the running command is about to create (call before creating them, and before taking their
    locks): when the command fails, each one it created is removed again if nothing but its lock file was
    written there, so that a refusal leaves no empty run or output folder behind."""
    for folder in folders:
        if folder is None:
            continue
        created, probe = [], Path(folder).absolute()
        while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
            created.append(probe)  # deepest first
            probe = probe.parent
        if created:
            hold_for_command(_removed_on_failure(created))


@contextmanager
def _removed_on_failure(created: list) -> Iterator[None]:
    from glass_ad.safety import LOCK_NAME

    succeeded = False
    try:
        yield
        succeeded = True
    except typer.Exit as end:
        succeeded = end.exit_code == 0
        raise
    finally:
        if not succeeded:
            for folder in created:
                try:
                    if folder.is_symlink() or not folder.is_dir():
                        break
                    left = list(folder.iterdir())
                    if any(entry.name != LOCK_NAME for entry in left):
                        break
                    for entry in left:
                        entry.unlink()
                    folder.rmdir()
                except OSError:
                    break


FORCE_HELP = "Replace results of an earlier run at the same place (default: refuse and say so)."
BIT_DEPTH_HELP = "Bits per channel of images deeper than 8 bits (e.g. 12 for 12-bit camera data in 16-bit files); default: the bit depth recorded with the model."


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")



def torch_threads(threads: Optional[int]) -> None:
    """PyTorch's process-wide thread count: the command's choice, never a library function's."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))




def on_command_end(callback) -> None:
    """Run `callback` when the running command ends (after its locks are released)."""
    _COMMAND_STACKS[-1].callback(callback)


def print_report(result: dict) -> None:
    def pct(value):
        return "n/a" if value is None or value != value else f"{100 * value:.1f}"

    typer.echo(
        f"image AUROC {pct(result['image_auroc'])} | pixel AUROC {pct(result['pixel_auroc'])} | "
        f"AUPRO {pct(result['aupro'])} | image AP {pct(result['image_ap'])} | pixel AP {pct(result['pixel_ap'])}"
    )
    for name, entry in sorted(result.get("per_defect_type", {}).items()):
        pixel = (
            f" | pixel AUROC {pct(entry['pixel_auroc'])} | AUPRO {pct(entry['aupro'])}" if "pixel_auroc" in entry else ""
        )
        typer.echo(f"  {name:<16} image AUROC {pct(entry['image_auroc'])}{pixel} (n={entry['n']})")
    stored = result.get("stored_threshold")
    if stored:
        typer.echo(
            f"stored threshold {stored['image_threshold']:.4f}: precision {pct(stored['precision'])}, recall "
            f"{pct(stored['recall'])}, F1 {pct(stored['f1'])}, false alarms {pct(stored['false_alarm_rate'])} % "
            f"(target {pct(stored['target_false_alarm_rate'])} %)"
        )
    f1_point = result.get("f1_threshold")
    if f1_point:
        typer.echo(
            f"F1 threshold {f1_point['image_threshold']:.4f} (from {f1_point['validation_images']} validation images): "
            f"precision {pct(f1_point['precision'])}, recall {pct(f1_point['recall'])}, F1 {pct(f1_point['f1'])}, "
            f"false alarms {pct(f1_point['false_alarm_rate'])} %"
        )
