"""Load test of `glass serve`: requests/s and p50/p99 latency at batch 1 and with micro-batching, next to
`glass predict`'s batch throughput on the same model and machine (docs/serve.md).

    python benchmarks/serve_load.py [--run RUN_DIR] [--requests 2000] [--concurrency 8] [--threads 2]

Without --run it trains a throwaway model on the generated demo data (same image size and backbone as
`glass demo`, 1 epoch: the weights do not change the timing). Each mode starts its own `glass serve`
process on a free localhost port with a fresh SQLite log, sends exactly --requests raw-PNG inspections from
--concurrency client threads (loopback only), stops, and checks that the log holds one row per answer.
One row per mode (glass predict, each --max-batch) goes to `results/serve_load.csv` (`--results`;
`benchmarks/record.py`); the whole report to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy

from glass_ad.serve.loadtest import run_load
from record import add_results_option, record_rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_model(folder: Path, image_size: int, backbone: str) -> tuple[Path, Path]:
    from glass_ad.config import make_config
    from glass_ad.data.demo_data import make_demo_dataset
    from glass_ad.training.trainer import train

    data = make_demo_dataset(folder / "data", seed=0)
    config = make_config("fast", epochs=1, image_size=image_size, backbone=backbone, early_stopping=False)
    train(data, folder / "run", config, progress=False, echo=lambda _: None)
    return folder / "run", data


def serve_and_load(run: Path, images: list[bytes], max_batch: int, args, work: Path) -> dict:
    data_dir = work / f"serve-batch{max_batch}"
    port = free_port()
    command = [
        sys.executable, "-m", "glass_ad.cli", "serve", str(run), "--port", str(port), "--data-dir", str(data_dir),
        "--max-batch", str(max_batch), "--threads", str(args.threads), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"glass serve did not start (exit code {process.poll()})")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        name = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
        run_load(url, name, images, requests=min(50, args.requests), concurrency=args.concurrency, tag="warmup")
        result = run_load(url, name, images, requests=args.requests, concurrency=args.concurrency, tag="load")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    engine = sqlalchemy.create_engine(f"sqlite:///{data_dir / 'inspections.db'}")
    with engine.connect() as conn:
        logged = conn.execute(sqlalchemy.text("SELECT count(*) FROM inspections WHERE filename LIKE 'load-%'")).scalar_one()
    engine.dispose()
    print(f"max batch {max_batch}: {result.summary()}; {logged} rows logged", flush=True)
    return {
        "max_batch": max_batch,
        "requests": result.requests,
        "ok": result.ok,
        "errors": len(result.errors),
        "seconds": result.seconds,
        "requests_per_s": result.throughput,
        "p50_ms": result.percentile(50),
        "p99_ms": result.percentile(99),
        "mean_batch": result.batch_mean,
        "logged_rows": int(logged),
        "lost_rows": result.ok - int(logged),
        "load_average_1min_after": os.getloadavg()[0],  # other work on the machine shows up here
    }


def predict_throughput(run: Path, paths: list[Path], threads: int, count: int) -> dict:
    """What `glass predict --no-overlays --batch-size 8` does per image: read, prepare, score in batches of 8."""
    from glass_ad.inference.predict import Detector

    detector = Detector.load(run, threads=threads, batch_size=8)
    inputs = [str(paths[i % len(paths)]) for i in range(count)]
    detector.predict(inputs[:16])  # warm-up
    start = time.perf_counter()
    results = detector.predict(inputs)
    seconds = time.perf_counter() - start
    assert len(results) == count
    line = {"images": count, "seconds": seconds, "images_per_s": count / seconds, "load_average_1min_after": os.getloadavg()[0]}
    print(f"glass predict (batch 8, no overlays): {count / seconds:.1f} img/s", flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="trained run directory (default: train a throwaway demo model)")
    parser.add_argument("--images", type=Path, help="folder of test images (default: the demo data's test split)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the service and of glass predict")
    parser.add_argument("--modes", default="1,8", help="comma-separated --max-batch values to measure")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--json", type=Path, help="write the figures here")
    add_results_option(parser, "serve_load")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the child service on the way out

    with tempfile.TemporaryDirectory(prefix="glass-serve-load-") as tmp:
        work = Path(tmp)
        run, data = args.run, None
        if run is None:
            run, data = train_model(work / "model", args.image_size, args.backbone)
        folder = args.images or (data / "test" if data is not None else None)
        if folder is None:
            parser.error("--images is needed with --run")
        paths = sorted(p for p in Path(folder).rglob("*.png"))
        if not paths:
            parser.error(f"no PNG images under {folder}")
        images = [p.read_bytes() for p in paths[:32]]
        report = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "settings": vars(args) | {"run": str(args.run) if args.run else "throwaway demo model", "json": None, "images": str(args.images)},
            "predict": predict_throughput(run, paths[:32], args.threads, min(args.requests, 800)),
            "serve": [serve_and_load(run, images, int(m), args, work) for m in args.modes.split(",")],
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    record_rows(args.results, load_rows(report, args))


def load_rows(report: dict, args: argparse.Namespace) -> list[dict]:
    """One results row per mode: images or requests per second, latency percentiles, lost log rows."""
    common = {
        "data": args.images.name if args.images else "demo",
        "recipe": "fast",
        "run": args.run.name if args.run else "throwaway demo model",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "threads": args.threads,
    }
    predict = report["predict"]
    rows = [{**common, "mode": "glass predict, batch 8", "per_s": round(predict["images_per_s"], 1)}]
    for serve in report["serve"]:
        rows.append({
            **common, "mode": f"glass serve, max batch {serve['max_batch']}", "concurrency": args.concurrency,
            "requests": serve["requests"], "per_s": round(serve["requests_per_s"], 1), "p50_ms": round(serve["p50_ms"], 1),
            "p99_ms": round(serve["p99_ms"], 1), "mean_batch": round(serve["mean_batch"], 2), "errors": serve["errors"],
            "lost_rows": serve["lost_rows"], "load_average_1min_after": round(serve["load_average_1min_after"], 2),
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
