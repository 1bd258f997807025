"""What the weight average (`--ema-epochs`, training/averaging.py) costs per training step: one update of
the moving average of the adaptor's and discriminator's weights, and one swap in and out for validation.

    python benchmarks/weight_average_cost.py [--backbone efficientnet_lite2] [--threads 1]

Rows go to `results/weight_average_cost.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import time

import torch
from record import add_results_option, record_rows

from glass_ad.config import make_config
from glass_ad.model.glass_model import build_model
from glass_ad.training.averaging import WeightAverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    add_results_option(parser, "weight_average_cost")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(make_config("fast", backbone=args.backbone))
    weights = sum(p.numel() for part in (model.adaptor, model.discriminator) for p in part.parameters())
    average = WeightAverage(model, decay=0.98)
    average.update()  # the first update copies
    start = time.perf_counter()
    for _ in range(args.repeats):
        average.update()
    update_ms = (time.perf_counter() - start) / args.repeats * 1e3
    start = time.perf_counter()
    for _ in range(args.repeats // 10):
        with average.applied():
            pass
    swap_ms = (time.perf_counter() - start) / (args.repeats // 10) * 1e3
    print(f"{args.backbone}: {weights:,} trained weights, {args.threads} thread(s)")
    print(f"update per step: {update_ms:.2f} ms; swap in and out for validation (once per epoch): {swap_ms:.2f} ms")
    record_rows(args.results, [{
        "data": "none", "recipe": "fast", "backbone": args.backbone, "threads": args.threads, "trained_weights": weights,
        "update_ms": round(update_ms, 2), "swap_ms": round(swap_ms, 2),
    }])  # fmt: skip


if __name__ == "__main__":
    main()
