"""Outputs never destroy inputs or models, and results are never replaced silently or torn.

Every command that writes goes through these checks *before* any expensive work:

* :func:`refuse_input_overlap` — an output that is an input file, the checkpoint, or lies inside an input
  folder is refused (``glass export RUN --out RUN/model.pt``, ``glass predict RUN parts --out parts/out``).
* :func:`refuse_existing` — a result that already exists is replaced only with ``--force``.
* :func:`ensure_writable` — the output folder exists or can be created, is a folder, accepts a file, and
  has the free disk space the command needs.
* :func:`output_locks` — one lock file (``.glass.lock``) per output folder, taken without waiting, so
  that of two commands writing into the same folder at once the second is refused with a message
  instead of tearing the first one's results.
* :func:`atomic_path` / :func:`write_atomic` — results are written to a unique temporary file in the
  target folder (``tempfile.mkstemp``) and renamed over the target, so a reader never sees half a file and
  two writers never share a temporary name. Every atomic write of the package goes through these.
  A write that fails for want of space (``ENOSPC``/``EDQUOT``, or torch's zip writer's ``unexpected pos``)
  becomes one :class:`DiskFullError` line; the temporary file is removed and the old file stays.
* :func:`refuse_output_in_inputs` — results written into a folder of inputs, or into the data set they come
  from, would be read back as inputs by the next run (``glass predict RUN imgs/a.png --out imgs``).
* :func:`remove_stale_temporaries` — temporary files of a writer killed mid-write (SIGKILL) are removed at
  the next start.

Every refusal is an :class:`OutputError` (a ``ValueError``) whose message is one line naming the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = [
    "LOCK_NAME",
    "DiskFullError",
    "OutputError",
    "ensure_writable",
    "output_lock",
    "output_locks",
    "refuse_existing",
    "refuse_input_overlap",
    "refuse_output_in_inputs",
    "remove_stale_temporaries",
    "write_atomic",
    "atomic_path",
    "unique_temporary",
]

LOCK_NAME = ".glass.lock"
MARGIN_BYTES = 16 * 1024 * 1024  # free space kept in reserve beyond each command's own estimate


class OutputError(ValueError):
    """An output path that would destroy an input, replace a result silently, or cannot be written."""


class DiskFullError(OSError):
    """A write failed because the disk (or the user's quota) is full; one line naming the file."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC

    def __str__(self) -> str:
        return str(self.args[0])


# torch.save's zip writer reports a full disk as "[enforce fail at inline_container.cc:…] . unexpected pos …"
# or "PytorchStreamWriter failed writing file …: file write failed".
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for want of space (errno, or torch's zip writer's message)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES)


def disk_full_error(path: str | os.PathLike) -> DiskFullError:
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"disk full: could not write '{path}' ({free} in '{folder}'); nothing was written (an earlier file stays "
        f"as it was) — free some space and run again"
    )


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def refuse_input_overlap(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None],
    *,
    what: str = "output",
    contains: bool = False,
) -> None:
    """Refuse an ``output`` that is one of ``inputs``, lies inside an input folder, or (``contains=True``,
    for an output folder whose contents are written) holds an input inside it."""
    target = _real(output)
    for given in inputs:
        if given is None:
            continue
        source = _real(given)
        if target == source:
            raise OutputError(f"{what} '{output}' is the input '{given}' — it would be overwritten; choose another path")
        if source.is_dir() and _inside(target, source):
            raise OutputError(
                f"{what} '{output}' is inside the input folder '{given}'; write it outside the inputs"
            )
        if contains and _inside(source, target):
            raise OutputError(
                f"the input '{given}' is inside {what} '{output}', where results are written; choose another path"
            )


def _dataset_root(folder: Path, levels: int = 4) -> Path | None:
    """The data set folder above (or at) ``folder``: one with ``train/`` and ``test/`` (MVTec AD layout) or
    ``split_csv/`` (VisA), at most ``levels`` folders up."""
    for candidate in [folder, *folder.parents][: levels + 1]:
        if ((candidate / "train").is_dir() and (candidate / "test").is_dir()) or (candidate / "split_csv").is_dir():
            return candidate
    return None


def refuse_output_in_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, what: str = "output folder") -> None:
    """Refuse an output folder that is an input folder (or lies inside one), that is the folder of an input
    file, or that lies inside the data set an input comes from: what is written there (overlays, results)
    would be read as inputs by the next run (`glass predict`, `glass test`). A subfolder beside an input
    file (the default ``predictions/`` of ``glass predict RUN part.png``) is fine."""
    target = _real(output)
    for given in inputs:
        if given is None:
            continue
        source = _real(given)
        folder = source if source.is_dir() else source.parent
        if target == folder or (source.is_dir() and _inside(target, folder)):
            raise OutputError(
                f"{what} '{output}' is "
                + (f"the folder of the input '{given}'" if target == folder else f"inside the input folder '{given}'")
                + ": its results would be read as inputs next time; write them outside the inputs"
            )
        root = _dataset_root(folder)
        if root is not None and (target == root or _inside(target, root)):
            raise OutputError(
                f"{what} '{output}' is inside the data set '{root}' of the input '{given}': its results would become "
                f"part of the data set; write them outside it"
            )


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove ``folder/.NAME.*.tmp`` (the temporary files of :func:`atomic_path` for ``NAME``) left by a writer
    that was killed mid-write; call only where no other writer of ``NAME`` can be running (the run folder's
    lock is held, or the run is starting). Returns what was removed."""
    removed = []
    for path in Path(folder).glob(f".{name}.*.tmp"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def refuse_existing(paths: Iterable[str | os.PathLike], *, force: bool, option: str = "--out") -> None:
    """Refuse to replace an existing result (a file, or a non-empty folder) unless ``force``."""
    if force:
        return
    for path in paths:
        path = Path(path)
        if path.is_dir():
            if any(path.iterdir()):
                raise OutputError(
                    f"'{path}' already holds results of an earlier run; pass --force to replace them, or choose another {option}"
                )
        elif path.exists() or path.is_symlink():
            raise OutputError(
                f"'{path}' already exists (from an earlier run); pass --force to replace it, or choose another {option}"
            )


def _probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder``; raises OSError when that is not possible."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".glass-write-check-")
    os.close(fd)
    os.unlink(name)


def ensure_writable(folder: str | os.PathLike, *, need_bytes: int = 0, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that a file can be written there with ``need_bytes`` free."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} '{folder}' is a file, not a folder; choose a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot create {what} '{folder}': a part of the path is a file, not a folder") from None
    except OSError as error:
        raise OutputError(f"cannot create {what} '{folder}': {error.strerror or error}") from None
    try:
        _probe_write(folder)
    except OSError as error:
        raise OutputError(
            f"{what} '{folder}' is not writable ({error.strerror or error}); fix its permissions or choose another path"
        ) from None
    if need_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < need_bytes + MARGIN_BYTES:
            raise OutputError(
                f"not enough free disk space in {what} '{folder}': {free / 1e6:.0f} MB free, about "
                f"{(need_bytes + MARGIN_BYTES) / 1e6:.0f} MB needed"
            )
    return folder


# ---------------------------------------------------------------------------------------------------
# Locks


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder/.glass.lock`` for the block; refused at once (OutputError) while another command
    holds it. The lock is released when the block ends or the process dies (the file itself stays)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputError(f"cannot lock output folder '{folder}': {error.strerror or error}") from None
    try:
        if not _try_lock(fd):
            raise OutputError(
                f"another glass command is writing to '{folder}' right now (it holds {lock}); wait for it to "
                f"finish or choose another output"
            )
        try:
            yield folder
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


@contextmanager
def output_locks(folders: Sequence[str | os.PathLike | None]) -> Iterator[None]:
    """Locks on several output folders (each real folder once, in a fixed order)."""
    unique = sorted({_real(f) for f in folders if f is not None})
    with ExitStack() as stack:
        for folder in unique:
            stack.enter_context(output_lock(folder))
        yield


# ---------------------------------------------------------------------------------------------------
# Atomic writes with unique temporary names


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def unique_temporary(path: str | os.PathLike) -> Path:
    """A unique, empty temporary file beside ``path`` (for writers that need a file name, e.g. ONNX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would make results unreadable to the user's group
    return Path(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """The one atomic-write rule: yields a unique temporary file beside ``path`` to write (``torch.save``,
    ``onnx.save``, a Parquet writer...); when the block ends without an error it is renamed over ``path``,
    else removed. A reader sees the old file or the new one, never half of one, and two writers never
    share a temporary name."""
    target = Path(path)
    try:
        tmp = unique_temporary(target)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(target) from None
        raise
    try:
        yield tmp
        os.replace(tmp, target)
    except (OSError, RuntimeError) as error:
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise disk_full_error(target) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`, flushed to disk first."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


# ---------------------------------------------------------------------------------------------------
# Errors as one line (tables, result rows, logs)


def one_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, shortened for a table cell."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
