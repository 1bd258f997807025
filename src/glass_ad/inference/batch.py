"""`glass predict-batch`: score an archive of images into one results table (Parquet or CSV).

    from glass_ad.inference.batch import predict_batch
    summary = predict_batch("runs/mtd", "archive/", "results.parquet", engine="ray")

``SOURCE`` is a folder (searched recursively for images) or a text file listing one image path per line
(relative paths are relative to the list's folder). Either may be an fsspec URL (``s3://bucket/archive/``,
``gs://…``, ``file:///data/list.txt``, ``memory://…``; the protocol's package installed, e.g. s3fs), and so
may the entries of a list; then listing and reading the bytes go through fsspec and the bytes are decoded by
`io.read_image`, the reader of every local file, so a file gives the same row wherever it is stored. Local
paths are read as before. ``out`` and ``maps_dir`` may be URLs too. Every input gives exactly one row:

    path, score, normalized, decision ("anomalous" / "normal" / "" on error), threshold, error, map

A file that cannot be read or scored becomes a row whose ``error`` holds the one-line reason; it never
stops the run. ``maps_dir`` also saves each anomaly map (float32, the original image size) as
``<maps_dir>/<path relative to SOURCE>.npy`` and records that path in ``map``.

Engines: ``local`` scores in this process; ``ray`` is a Ray Data pipeline (paths → `BatchScorer` actors
that decode and score → rows), with a fixed pool of actors sized to the cluster (its CPUs divided by the
CPUs per actor, or one actor per GPU). Both stream: the driver holds the list of paths and one batch of rows
at a time, and rows are appended to the output file as they arrive, so memory does not grow with the
number of images. Paths must be readable at the same place on every node (local disk for one machine,
shared storage or an object-store URL for a cluster; ``memory://`` exists in one process only, so it works
with the local engine alone). Scoring is `predict.Detector` (ONNX Runtime or PyTorch), so a row's score is
the score `glass predict` gives the same file.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from glass_ad.data.io import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image
from glass_ad.safety import one_line

ERROR_CHARS = 300  # an error cell: `safety.one_line` shortened to this many characters

COLUMNS = ("path", "score", "normalized", "decision", "threshold", "error", "map")
OUTPUT_SUFFIXES = (".parquet", ".csv")
LIST_SUFFIXES = (".txt", ".lst", ".list")


# "s3://…", "file://…", "memory://…", chained "simplecache::s3://…"; not "C:\\…" nor a plain path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(://|::)")


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (a `str` with a protocol) rather than a local path."""
    return isinstance(path, str) and bool(_URL.match(path))


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's file system and path for ``url``; a missing fsspec or protocol package is one line."""
    try:
        import fsspec
    except ImportError:
        raise RuntimeError(f"'{url}': URLs need fsspec: pip install \"glass-ad[distributed]\"") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:  # e.g. s3:// without s3fs
        raise RuntimeError(f"'{url}': {' '.join(str(error).split())}") from None


def _url_join(base: str, entry: str) -> str:
    """``entry`` of a list stored at folder URL ``base``: URLs as they are, absolute paths on the list's
    file system, relative paths below ``base``."""
    if is_url(entry):
        return entry
    scheme, _, rest = base.partition("://")
    if entry.startswith("/"):
        return f"{scheme}://{entry}"
    joined = posixpath.normpath(posixpath.join(rest, entry)) if rest else posixpath.normpath(entry)
    return f"{scheme}://{joined}"


def _list_url_source(source: str) -> tuple[list[str], str]:
    fs, path = _filesystem(source)
    base = source.rstrip("/")
    if fs.isdir(path):
        prefix = path.rstrip("/") + "/"
        paths = []
        for found in fs.find(path):
            relative = found[len(prefix) :] if found.startswith(prefix) else posixpath.basename(found)
            parts = relative.split("/")
            # As `io.list_images`: image extensions (any case), hidden files and folders skipped.
            if any(p.startswith(".") for p in parts) or posixpath.splitext(relative)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            paths.append(f"{base}/{relative}")  # the user's own spelling of the folder, then the relative path
        if not paths:
            raise FileNotFoundError(f"'{source}': folder has no images")
        return sorted(paths), base
    if fs.isfile(path):
        if posixpath.splitext(path)[1].lower() not in LIST_SUFFIXES:
            raise ValueError(f"'{source}': SOURCE must be a folder or a list of paths ({', '.join(LIST_SUFFIXES)})")
        folder = base.rsplit("/", 1)[0] if "/" in base.partition("://")[2] else base.partition("://")[0] + "://"
        lines = fs.cat_file(path).decode("utf-8").splitlines()
        paths = [_url_join(folder, line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]
        if not paths:
            raise FileNotFoundError(f"'{source}': the list names no files")
        return paths, folder
    raise FileNotFoundError(f"'{source}': no such folder or file")


def list_sources(source: str | os.PathLike) -> tuple[list[str], str | Path]:
    """The input paths of ``source`` (a folder, searched recursively, or a list file; either may be an fsspec
    URL) and the folder that relative map names start from (a URL for a URL source). A missing or empty
    source is a one-line `FileNotFoundError`."""
    if is_url(source):
        return _list_url_source(str(source))
    source = Path(source)
    if source.is_dir():
        paths = [str(p) for p in list_images(source, recursive=True)]
        if not paths:
            raise FileNotFoundError(f"'{source}': folder has no images")
        return paths, source
    if source.is_file():
        if source.suffix.lower() not in LIST_SUFFIXES:
            raise ValueError(f"'{source}': SOURCE must be a folder or a list of paths ({', '.join(LIST_SUFFIXES)})")
        base = source.parent
        paths = []
        for line in source.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                paths.append(line if is_url(line) else str(Path(line) if Path(line).is_absolute() else base / line))
        if not paths:
            raise FileNotFoundError(f"'{source}': the list names no files")
        return paths, base
    raise FileNotFoundError(f"'{source}': no such folder or file")


def _url_read_error(url: str, reason: str) -> ImageReadError:
    error = ImageReadError(url, reason)
    error.args = (f"cannot read image '{url}': {error.reason}",)  # Path() would fold the URL's "//"
    return error


def read_url_image(url: str, bit_depth: int | None = None) -> np.ndarray:
    """The image at an fsspec URL as `io.read_image` reads a local file (same decoder, bit-depth rule and
    one-line `ImageReadError`, naming the URL)."""
    fs, path = _filesystem(url)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise _url_read_error(url, "file not found") from None
    except IsADirectoryError:
        raise _url_read_error(url, "is a directory, not an image file") from None
    except PermissionError:
        raise _url_read_error(url, "permission denied") from None
    except Exception as error:  # noqa: BLE001 - network, credentials, ...: the row says which
        raise _url_read_error(url, f"cannot read the file ({one_line(error, limit=ERROR_CHARS)})") from None
    if not data:
        raise _url_read_error(url, "file is empty (0 bytes)")
    # The bytes go through a private temporary file to the one decoder of the library (as `glass serve`
    # does with uploads): no second decoding path whose results could differ.
    suffix = posixpath.splitext(path)[1]
    fd, name = tempfile.mkstemp(prefix="glass-batch-", suffix=suffix if suffix[1:].isalnum() else "")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return read_image(name, bit_depth=bit_depth)
    except ImageReadError as error:
        raise _url_read_error(url, error.reason) from None
    finally:
        os.unlink(name)


def _error_row(path: str, message: str) -> dict[str, Any]:
    return {"path": path, "score": float("nan"), "normalized": float("nan"), "decision": "", "threshold": float("nan"), "error": message, "map": ""}


class BatchScorer:
    """Loads the model once, then turns a batch ``{"path": [...]}`` into result columns (one row per path).

    Used as the Ray Data actor class and, unchanged, by the local engine."""

    def __init__(
        self,
        run: str,
        fmt: str = "onnx",
        *,
        onnx_path: str | None = None,
        threshold: str | float = "far",
        threads: int | None = 1,
        device: str = "cpu",
        batch_size: int = 16,
        maps_dir: str | None = None,
        root: str | None = None,
    ) -> None:
        from glass_ad.inference.predict import Detector

        providers = "cuda" if device.startswith("cuda") else "cpu"
        self.detector = Detector.load(
            run, device=device, engine=fmt, onnx_path=onnx_path, batch_size=batch_size, threshold=threshold,
            threads=threads, providers=providers,
        )  # fmt: skip
        # Local folders as paths, URLs as strings (joined with "/", written through fsspec).
        self.maps_dir: str | Path | None = (maps_dir if is_url(maps_dir) else Path(maps_dir)) if maps_dir else None
        self.root: str | Path | None = (root.rstrip("/") if is_url(root) else Path(root).resolve()) if root else None

    def _relative_name(self, path: str) -> str:
        """``path`` below the source folder (its file name when it lies elsewhere), "/"-separated."""
        if is_url(path):
            root = self.root if isinstance(self.root, str) else None
            if root and path.startswith(root + "/"):
                return path[len(root) + 1 :]
            return posixpath.basename(path.rstrip("/"))
        resolved = Path(path).resolve()
        try:
            relative = resolved.relative_to(self.root) if isinstance(self.root, Path) else Path(resolved.name)
        except ValueError:
            relative = Path(resolved.name)
        return relative.as_posix()

    def _map_path(self, path: str) -> str | Path:
        assert self.maps_dir is not None
        name = self._relative_name(path) + ".npy"
        if isinstance(self.maps_dir, str):
            return f"{self.maps_dir.rstrip('/')}/{name}"
        return self.maps_dir / name

    def _save_map(self, target: str | Path, anomaly_map: np.ndarray) -> None:
        if isinstance(target, str):
            fs, path = _filesystem(target)
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with fs.open(path, "wb") as handle:
                np.save(handle, anomaly_map)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, anomaly_map)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows: list[dict[str, Any]] = []
        images: list[np.ndarray] = []
        slots: list[int] = []
        for path in (str(p) for p in batch["path"]):
            try:
                if is_url(path):
                    image = read_url_image(path, self.detector.bit_depth)
                else:
                    image = read_image(path, bit_depth=self.detector.bit_depth)
            except Exception as error:  # noqa: BLE001 - a bad file is a row, never a crash
                rows.append(_error_row(path, one_line(error, limit=ERROR_CHARS)))
                continue
            rows.append(_error_row(path, ""))
            images.append(image)
            slots.append(len(rows) - 1)
        if images:
            try:
                predictions = self.detector.predict(images)
            except Exception:  # noqa: BLE001 - scoring one image at a time names the culprit
                predictions = []
                for slot, image in zip(slots, images):
                    try:
                        predictions.append(self.detector.predict(image))
                    except Exception as single:  # noqa: BLE001
                        predictions.append(single)
            for slot, prediction in zip(slots, predictions):
                row = rows[slot]
                if isinstance(prediction, Exception):
                    row["error"] = one_line(prediction, limit=ERROR_CHARS)
                    continue
                row.update(
                    score=float(prediction.score),
                    normalized=float(prediction.normalized),
                    decision="anomalous" if prediction.is_anomalous else "normal",
                    threshold=float(prediction.threshold),
                )
                if self.maps_dir is not None:
                    target = self._map_path(row["path"])
                    try:
                        self._save_map(target, prediction.anomaly_map.astype(np.float32))
                        row["map"] = str(target)
                    except Exception as error:  # noqa: BLE001 - a map that cannot be saved is the row's error
                        row["error"] = one_line(error, limit=ERROR_CHARS)
        return {name: [row[name] for row in rows] for name in COLUMNS}


# ------------------------------------------------------------------------------------------- writing


def _output_name(out: str | os.PathLike) -> tuple[str, str]:
    """File name and lower-case suffix of ``out`` (a path or a URL); a suffix other than .parquet/.csv is a
    one-line `ValueError`."""
    name = posixpath.basename(str(out).rstrip("/")) if is_url(out) else Path(out).name
    kind = posixpath.splitext(name)[1].lower()
    if kind not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end with .parquet or .csv, got '{name}'")
    return name, kind


def output_exists(out: str | os.PathLike) -> bool:
    if is_url(out):
        fs, path = _filesystem(str(out))
        return bool(fs.exists(path))
    return Path(out).exists()


class ResultWriter:
    """Appends batches of rows to ``out`` (.parquet or .csv) through a temporary file that replaces ``out``
    only when complete. A URL ``out`` is written locally, then uploaded whole by fsspec at the end."""

    def __init__(self, out: str | os.PathLike) -> None:
        name, self.kind = _output_name(out)
        self.url = str(out) if is_url(out) else None
        self.out: str | Path = self.url if self.url else Path(out)
        if self.url:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        self.rows = self.errors = self.anomalous = 0
        self._parquet: Any = None
        self._csv: Any = None
        self._handle: io.TextIOBase | None = None
        if self.kind == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                os.unlink(self.tmp)
                raise RuntimeError('Parquet output needs pyarrow: pip install "glass-ad[distributed]" (or write .csv)') from None
            self._pa = pa
            self.schema = pa.schema(
                [("path", pa.string()), ("score", pa.float64()), ("normalized", pa.float64()), ("decision", pa.string()),
                 ("threshold", pa.float64()), ("error", pa.string()), ("map", pa.string())]
            )  # fmt: skip
            self._parquet = pq.ParquetWriter(self.tmp, self.schema)
        else:
            self._handle = open(self.tmp, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._handle)
            self._csv.writerow(COLUMNS)

    def write(self, columns: dict[str, Sequence[Any]]) -> None:
        count = len(columns["path"])
        if not count:
            return
        self.rows += count
        self.errors += sum(1 for e in columns["error"] if e)
        self.anomalous += sum(1 for d in columns["decision"] if d == "anomalous")
        if self._parquet is not None:
            table = self._pa.Table.from_pydict({k: list(columns[k]) for k in COLUMNS}, schema=self.schema)
            self._parquet.write_table(table)
        else:
            for i in range(count):
                row = [columns[k][i] for k in COLUMNS]
                self._csv.writerow(["" if isinstance(v, float) and v != v else v for v in row])

    def close(self) -> str | Path:
        if self._parquet is not None:
            self._parquet.close()
        if self._handle is not None:
            self._handle.close()
        if self.url:
            try:
                fs, path = _filesystem(self.url)
                parent = posixpath.dirname(path)
                if parent:
                    fs.makedirs(parent, exist_ok=True)
                fs.put_file(self.tmp, path)
            finally:
                os.unlink(self.tmp)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        for closer in (self._parquet, self._handle):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001 - cleaning up after another error
                pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


# ----------------------------------------------------------------------------------------- pipelines


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _local_batches(paths: Sequence[str], scorer_kwargs: dict[str, Any], batch_size: int) -> Iterator[dict[str, list[Any]]]:
    scorer = BatchScorer(**scorer_kwargs)
    for chunk in _chunks(paths, batch_size):
        yield scorer({"path": chunk})


def _ray_batches(
    paths: Sequence[str], scorer_kwargs: dict[str, Any], batch_size: int, *, address: str | None, num_cpus: int | None,
    cpus_per_worker: float, gpu: bool,
) -> Iterator[dict[str, list[Any]]]:
    from glass_ad.ray_session import ray_session

    with ray_session(address, num_cpus) as ray:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in the order of the inputs
        resources = ray.cluster_resources()
        if gpu:
            size = max(1, int(resources.get("GPU", 0)))
        else:
            size = max(1, int(resources.get("CPU", 1) // cpus_per_worker))
        # Blocks of a few batches each: enough of them to keep every actor busy, small enough to stream.
        blocks = max(size, min(len(paths) // batch_size + 1, 10_000))
        dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        scored = dataset.map_batches(
            BatchScorer,
            fn_constructor_kwargs=scorer_kwargs,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus_per_worker,
            num_gpus=1 if gpu else 0,
        )
        for batch in scored.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield {k: [v.item() if hasattr(v, "item") else v for v in batch[k]] for k in COLUMNS}


def predict_batch(
    run: str | os.PathLike,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    fmt: str = "onnx",
    onnx_path: str | os.PathLike | None = None,
    threshold: str | float = "far",
    batch_size: int = 16,
    device: str = "cpu",
    maps_dir: str | os.PathLike | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_worker: float = 1.0,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score every image of ``source`` into ``out`` (module docstring); returns counts and throughput."""
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if fmt not in ("onnx", "torch"):
        raise ValueError(f"format must be 'onnx' or 'torch', got {fmt!r}")
    if cpus_per_worker <= 0:
        raise ValueError(f"CPUs per worker must be positive, got {cpus_per_worker}")
    _output_name(out)
    if not is_url(out):
        out = Path(out)
    if output_exists(out) and not force:
        raise FileExistsError(f"'{out}' exists; use --force to replace it")
    paths, root = list_sources(source)
    gpu = device.startswith("cuda")
    if maps_dir is not None and not is_url(maps_dir):
        maps_dir = str(Path(maps_dir).resolve())
    scorer_kwargs: dict[str, Any] = dict(
        run=str(Path(run).resolve()), fmt=fmt, onnx_path=str(Path(onnx_path).resolve()) if onnx_path else None,
        threshold=threshold, threads=max(1, int(cpus_per_worker)) if engine == "ray" else None, device=device,
        batch_size=batch_size, maps_dir=str(maps_dir) if maps_dir else None, root=str(root),
    )  # fmt: skip
    BatchScorer(**scorer_kwargs)  # a model that does not load fails here, before any output or cluster exists
    writer = ResultWriter(out)
    start = time.perf_counter()
    try:
        if engine == "local":
            batches = _local_batches(paths, scorer_kwargs, batch_size)
        else:
            batches = _ray_batches(
                paths, scorer_kwargs, batch_size, address=address, num_cpus=num_cpus, cpus_per_worker=cpus_per_worker, gpu=gpu
            )
        for columns in batches:
            writer.write(columns)
            if progress is not None:
                progress(writer.rows)
    except BaseException:
        writer.abort()
        raise
    path = writer.close()
    seconds = time.perf_counter() - start
    return {
        "results": str(path),
        "images": writer.rows,
        "errors": writer.errors,
        "anomalous": writer.anomalous,
        "seconds": round(seconds, 3),
        "images_per_s": round(writer.rows / seconds, 2) if seconds > 0 else None,
        "engine": engine,
        "format": fmt,
    }


__all__ = ["BatchScorer", "COLUMNS", "ResultWriter", "is_url", "list_sources", "output_exists", "predict_batch", "read_url_image"]
