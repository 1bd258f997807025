"""`glass predict-batch`: score an archive of images into one results table (Parquet or CSV).

    from glass_ad.batch import predict_batch
    summary = predict_batch("runs/mtd", "archive/", "results.parquet", engine="ray")

``SOURCE`` is a folder (searched recursively for images) or a text file listing one image path per line
(relative paths are relative to the list's folder). Every input gives exactly one row:

    path, score, normalized, decision ("anomalous" / "normal" / "" on error), threshold, error, map

A file that cannot be read or scored becomes a row whose ``error`` holds the one-line reason; it never
stops the run. ``maps_dir`` also saves each anomaly map (float32, the original image size) as
``<maps_dir>/<path relative to SOURCE>.npy`` and records that path in ``map``.

Engines: ``local`` scores in this process; ``ray`` is a Ray Data pipeline (paths → `BatchScorer` actors
that decode and score → rows), with a fixed pool of actors sized to the cluster (its CPUs divided by the
CPUs per actor, or one actor per GPU). Both stream: the driver holds the list of paths and one batch of rows
at a time, and rows are appended to the output file as they arrive, so memory does not grow with the
number of images. Paths must be readable at the same place on every node (local disk for one machine,
shared storage for a cluster). Scoring is `predict.Detector` (ONNX Runtime or PyTorch), so a row's score is
the score `glass predict` gives the same file.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .io import list_images

COLUMNS = ("path", "score", "normalized", "decision", "threshold", "error", "map")
OUTPUT_SUFFIXES = (".parquet", ".csv")
LIST_SUFFIXES = (".txt", ".lst", ".list")


def list_sources(source: str | os.PathLike) -> tuple[list[str], Path]:
    """The input paths of ``source`` (a folder, searched recursively, or a list file) and the folder that
    relative map names start from. A missing or empty source is a one-line `FileNotFoundError`."""
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
                paths.append(str(Path(line) if Path(line).is_absolute() else base / line))
        if not paths:
            raise FileNotFoundError(f"'{source}': the list names no files")
        return paths, base
    raise FileNotFoundError(f"'{source}': no such folder or file")


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
        from .predict import Detector

        providers = "cuda" if device.startswith("cuda") else "cpu"
        self.detector = Detector.load(
            run, device=device, engine=fmt, onnx_path=onnx_path, batch_size=batch_size, threshold=threshold,
            threads=threads, providers=providers,
        )  # fmt: skip
        self.maps_dir = Path(maps_dir) if maps_dir else None
        self.root = Path(root).resolve() if root else None

    def _map_path(self, path: str) -> Path:
        assert self.maps_dir is not None
        resolved = Path(path).resolve()
        try:
            relative = resolved.relative_to(self.root) if self.root else Path(resolved.name)
        except ValueError:
            relative = Path(resolved.name)
        return self.maps_dir / relative.with_name(relative.name + ".npy")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from .io import read_image

        rows: list[dict[str, Any]] = []
        images: list[np.ndarray] = []
        slots: list[int] = []
        for path in (str(p) for p in batch["path"]):
            try:
                image = read_image(path, bit_depth=self.detector.bit_depth)
            except Exception as error:  # noqa: BLE001 - a bad file is a row, never a crash
                rows.append(_error_row(path, _one_line(error)))
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
                    row["error"] = _one_line(prediction)
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
                        target.parent.mkdir(parents=True, exist_ok=True)
                        np.save(target, prediction.anomaly_map.astype(np.float32))
                        row["map"] = str(target)
                    except OSError as error:
                        row["error"] = _one_line(error)
        return {name: [row[name] for row in rows] for name in COLUMNS}


def _one_line(error: BaseException) -> str:
    from .suite import one_line

    return one_line(error, limit=300)


# ------------------------------------------------------------------------------------------- writing


class ResultWriter:
    """Appends batches of rows to ``out`` (.parquet or .csv) through a temporary file that replaces ``out``
    only when complete."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.kind = self.out.suffix.lower()
        if self.kind not in OUTPUT_SUFFIXES:
            raise ValueError(f"--out must end with .parquet or .csv, got '{self.out.name}'")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
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

    def close(self) -> Path:
        if self._parquet is not None:
            self._parquet.close()
        if self._handle is not None:
            self._handle.close()
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
    from .cluster import ray_session

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
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end with .parquet or .csv, got '{out.name}'")
    if out.exists() and not force:
        raise FileExistsError(f"'{out}' exists; use --force to replace it")
    paths, root = list_sources(source)
    gpu = device.startswith("cuda")
    scorer_kwargs: dict[str, Any] = dict(
        run=str(Path(run).resolve()), fmt=fmt, onnx_path=str(Path(onnx_path).resolve()) if onnx_path else None,
        threshold=threshold, threads=max(1, int(cpus_per_worker)) if engine == "ray" else None, device=device,
        batch_size=batch_size, maps_dir=str(Path(maps_dir).resolve()) if maps_dir else None, root=str(root),
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


__all__ = ["BatchScorer", "COLUMNS", "ResultWriter", "list_sources", "predict_batch"]
