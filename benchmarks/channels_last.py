"""Backbone throughput in NCHW vs channels-last (NHWC) memory layout, same weights, same threads.

`FrozenBackbone` runs channels-last; this script times its extractor as built and a copy converted back
to NCHW, alternating the two `--rounds` times, and prints the median images per second at batch 8 and 1.

    python benchmarks/channels_last.py --backbone efficientnet_lite2 --image-size 288

Rows go to `results/channels_last.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from record import add_results_option, record_rows

from glass_ad.config import make_config
from glass_ad.model.glass_model import build_model


def images_per_second(module: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    module(batch)  # warm-up: kernel selection, allocations
    module(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        module(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=288)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=6, help="timed batches per measurement")
    add_results_option(parser, "channels_last")
    args = parser.parse_args()
    rows = []

    torch.set_num_threads(args.threads)
    model = build_model(make_config("fast", backbone=args.backbone, image_size=args.image_size)).eval()
    layouts = {
        "channels-last": (model.backbone.extractor, torch.channels_last),
        "NCHW": (copy.deepcopy(model.backbone.extractor).to(memory_format=torch.contiguous_format), torch.contiguous_format),
    }
    print(f"{args.backbone} at {args.image_size} px, {args.threads} threads, median of {args.rounds} rounds")
    with torch.inference_mode():
        for batch_size in (8, 1):
            figures = {name: [] for name in layouts}
            for _ in range(args.rounds):
                for name, (extractor, layout) in layouts.items():
                    batch = torch.rand(batch_size, 3, args.image_size, args.image_size).contiguous(memory_format=layout)
                    figures[name].append(images_per_second(extractor, batch, args.repeats))
            nchw, nhwc = statistics.median(figures["NCHW"]), statistics.median(figures["channels-last"])
            print(f"batch {batch_size}: NCHW {nchw:.1f} img/s, channels-last {nhwc:.1f} img/s ({nhwc / nchw:.2f}x)")
            rows.append({
                "data": "random images", "recipe": "fast", "backbone": args.backbone, "image_size": args.image_size,
                "threads": args.threads, "batch": batch_size, "nchw_images_per_s": round(nchw, 1),
                "channels_last_images_per_s": round(nhwc, 1),
            })  # fmt: skip
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()
