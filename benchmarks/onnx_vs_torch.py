"""PyTorch vs ONNX Runtime inference throughput of a trained model (CPU), at batch 8 and batch 1.

    python benchmarks/onnx_vs_torch.py RUN_DIR [--onnx FILE] [--repeats 10] [--threads N]

One row per batch size goes to `results/onnx_vs_torch.csv` (`--results`; `benchmarks/record.py`).

Both engines run the same graph (`glass_ad.inference.engines.InferenceGraph`: uint8 S×S×3 pixels → scores and
smoothed map) on random inputs, so the numbers measure compute only; resizing arbitrary-size images (in
Python, shared by both engines) is not included. Without --onnx the model is exported to a temporary file.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch
from record import add_results_option, record_rows

from glass_ad.config import GlassConfig
from glass_ad.inference.export import export_onnx
from glass_ad.model.checkpoint import read_checkpoint
from glass_ad.research.benchmark import onnx_throughput, torch_throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run directory written by `glass train` (or its model.pt)")
    parser.add_argument("--onnx", type=Path, default=None, help="exported model (default: export to a temporary file)")
    parser.add_argument("--repeats", type=int, default=10, help="timed batches per measurement (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both engines (default: their own defaults)")
    add_results_option(parser, "onnx_vs_torch")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = read_checkpoint(args.run_dir)
    config = GlassConfig.from_dict(checkpoint["config"])
    size = config.image_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx
        if onnx_path is None:
            onnx_path = export_onnx(args.run_dir, Path(tmp) / "model.onnx").path
        print(
            f"{checkpoint['backbone']['name']} at {size}x{size}, CPU {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {args.repeats} batches per figure"
        )
        print(f"{'batch':>5}  {'PyTorch img/s':>14}  {'ONNX Runtime img/s':>19}  {'ratio':>6}")
        for batch in (8, 1):
            torch_ips = torch_throughput(args.run_dir, batch_size=batch, repeats=args.repeats, device="cpu")
            onnx_ips = onnx_throughput(onnx_path, size, batch_size=batch, repeats=args.repeats, threads=args.threads)
            print(f"{batch:>5}  {torch_ips:>14.1f}  {onnx_ips:>19.1f}  {onnx_ips / torch_ips:>5.2f}x")
            rows.append({
                "data": Path((checkpoint.get("training") or {}).get("data_root") or "unknown").name,
                "recipe": config.recipe, "run": args.run_dir.name,
                "backbone": checkpoint["backbone"]["name"], "image_size": size, "batch": batch,
                "torch_images_per_s": round(torch_ips, 1), "onnx_images_per_s": round(onnx_ips, 1),
                "threads": torch.get_num_threads(),
            })  # fmt: skip
    record_rows(args.results, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
