"""Where a model comes from: package version, source revision, a fingerprint of the training data, and
the files written beside every model so a run can be read and repeated without the checkpoint.

* `data_fingerprint(paths, root)`: SHA-256 over the sorted ``relative path, size in bytes`` lines of the
  training files — the same list and sizes give the same fingerprint on any machine; a file added, removed,
  renamed or re-encoded changes it. (Sizes, not contents: hashing gigabytes of images at every training run
  would cost more than it tells.)
* `data_listing(paths, root)` / `listing_changes(old, new)`: per training file its size and modification
  time, and what differs between two such listings (files added, removed, replaced) — a resumed training
  refuses a data set changed in place (`training.resume`).
* `provenance(...)`: ``{package_version, git_describe, data_fingerprint, train_files, train_bytes}``, stored
  in the checkpoint under ``provenance`` (the trainer passes it to `checkpoint.Checkpoint.from_model`).
* `write_run_files(run_dir)`: ``config.yaml`` (the effective settings, loadable by ``glass train --config``)
  and ``history.csv`` (one row per epoch) beside ``model.pt``.
* `load_config_file(path)`: a YAML or TOML file of `GlassConfig` fields (plus ``recipe``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "data_fingerprint",
    "data_listing",
    "listing_changes",
    "git_describe",
    "provenance",
    "write_run_files",
    "load_config_file",
]


def data_fingerprint(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"sha256", "files", "bytes"}`` of the sorted ``relative path<TAB>size`` lines of ``paths``."""
    base = Path(root).resolve() if root is not None else None
    lines = []
    total = 0
    for path in paths:
        path = Path(path)
        try:  # a file that cannot be statted (a symlink loop, a vanished file) counts with size -1
            size = path.stat().st_size
            name = path.resolve()
        except (OSError, RuntimeError):
            size, name = -1, path.absolute()
        total += max(size, 0)
        if base is not None and name.is_relative_to(base):
            name = name.relative_to(base)
        lines.append(f"{name.as_posix()}\t{size}")
    digest = hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()
    return {"sha256": digest, "files": len(lines), "bytes": total}


def data_listing(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> dict[str, list[int]]:
    """``{relative path: [size in bytes, modification time in ns]}`` of ``paths`` (names as in
    `data_fingerprint`; a file that cannot be statted has ``[-1, -1]``). On one machine, a file replaced or
    rewritten in place changes its entry even where its size stays."""
    base = Path(root).resolve() if root is not None else None
    listing: dict[str, list[int]] = {}
    for path in paths:
        path = Path(path)
        try:
            info = path.stat()
            entry, name = [int(info.st_size), int(info.st_mtime_ns)], path.resolve()
        except (OSError, RuntimeError):
            entry, name = [-1, -1], path.absolute()
        if base is not None and name.is_relative_to(base):
            name = name.relative_to(base)
        listing[name.as_posix()] = entry
    return listing


def listing_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str | None:
    """What differs between two `data_listing` results, as one phrase ("1 replaced (train/good/003.png), 1
    removed (train/good/007.png)"), or None when they are the same."""
    removed = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    replaced = sorted(name for name in set(old) & set(new) if list(old[name]) != list(new[name]))
    parts = []
    for label, names in (("replaced or modified", replaced), ("removed", removed), ("added", added)):
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
            parts.append(f"{len(names)} {label} ({shown})")
    return "; ".join(parts) or None


def git_describe(folder: str | os.PathLike | None = None) -> str | None:
    """``git describe --always --dirty`` of the package's source tree, or None (not a checkout, no git)."""
    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def provenance(train_paths: Sequence[str | os.PathLike], data_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``provenance`` entry of a checkpoint for a model trained on ``train_paths``."""
    from glass_ad import __version__

    fingerprint = data_fingerprint(train_paths, data_root)
    return {
        "package_version": __version__,
        "git_describe": git_describe(),
        "data_fingerprint": fingerprint["sha256"],
        "train_files": fingerprint["files"],
        "train_bytes": fingerprint["bytes"],
    }


def _yaml_text(data: dict[str, Any], header: str) -> str:
    import yaml

    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_run_files(run: str | os.PathLike) -> list[Path]:
    """Write ``config.yaml`` and ``history.csv`` beside the checkpoint of ``run``; returns their paths."""
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import write_atomic

    path = checkpoint_path(run)
    checkpoint = Checkpoint.load(path)
    folder = path.parent
    info = checkpoint.provenance or {}
    header = (
        f"# Effective settings of {path.name} (glass-ad {checkpoint.package_version or '?'}"
        + (f", data fingerprint {info['data_fingerprint'][:16]}" if info.get("data_fingerprint") else "")
        + ").\n# Repeat the run with: glass train DATA --out NEW_RUN --config config.yaml\n"
    )
    # The settings as stored (not re-derived), so that config.yaml repeats exactly what was trained.
    settings = checkpoint.stored_config if checkpoint.stored_config is not None else checkpoint.config.to_dict()
    written = [write_atomic(folder / "config.yaml", _yaml_text(dict(settings), header))]
    history = list(checkpoint.training.history)
    if history:
        columns: list[str] = []
        for record in history:
            columns.extend(key for key in record if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: v for k, v in record.items() if not isinstance(v, (dict, list))} for record in history)
        written.append(write_atomic(folder / "history.csv", buffer.getvalue()))
    return [Path(p) if p is not None else p for p in written]


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: `GlassConfig` field names
    (``config.yaml`` written beside a model is such a file), plus an optional ``recipe``. Unknown names are
    a ValueError that lists them."""
    from dataclasses import fields

    from glass_ad.config import GlassConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: '{path}'")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ValueError(f"config file '{path}' must end in .yaml, .yml or .toml")
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as error:  # a syntax error of either parser
        raise ValueError(f"config file '{path}' cannot be read: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of settings, not {type(data).__name__}")
    known = {f.name for f in fields(GlassConfig)} | {"recipe"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config file '{path}': unknown setting(s) {', '.join(unknown)} (names as in config.yaml of a run)")
    return data
