"""Backbone passes over a batch of 8 in chunks of 1, 2, 4 or 8 images, and what the start-up measurement picks.

For each input shape: the median milliseconds of `GlassModel.features` over 8 random images (backbone with
its batch norms folded, patch aggregation) in each chunk size, timed alternately over `--rounds` rounds,
how far each chunk size's features are from the whole batch's, then the choice of
`glass_ad.model.chunking.choose_batch_chunk` (its own, shorter measurement) and how long it took.

    python benchmarks/backbone_chunks.py [--backbone efficientnet_lite2] [--shapes 288x288 288x720] [--rounds 7]

Rows go to `results/backbone_chunks.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import time

import torch
from record import add_results_option, record_rows

from glass_ad.config import make_config
from glass_ad.model.chunking import choose_batch_chunk, time_chunks
from glass_ad.model.glass_model import build_model

SIZES = (8, 4, 2, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--shapes", nargs="+", default=["288x288", "288x720"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    add_results_option(parser, "backbone_chunks")
    args = parser.parse_args()
    rows = []
    torch.set_num_threads(args.threads)
    print(f"{args.backbone}, {args.threads} threads, 8 images per batch, median ms over {args.rounds} rounds")
    for text in args.shapes:
        shape = tuple(int(side) for side in text.lower().split("x"))
        square = shape[0] == shape[1]
        config = make_config("fast", backbone=args.backbone, image_size=min(shape), image_shape=None if square else shape)
        model = build_model(config).eval()
        images = torch.rand(8, 3, *shape)
        medians = time_chunks(model, images, SIZES, args.rounds)  # alternating rounds after a warm-up
        row = " | ".join(f"chunk {size}: {medians[size]:.0f} ms ({medians[8] / medians[size]:.2f}×)" for size in SIZES)
        print(f"{text}: {row}")
        rows += [
            {"data": "random images", "recipe": "fast", "backbone": args.backbone, "shape": text, "threads": args.threads,
             "chunk": size, "ms_per_8_images": round(medians[size], 1)}
            for size in SIZES
        ]  # fmt: skip
        with torch.no_grad():  # how far each chunk size's features are from the whole batch's
            whole = model.features(images)
            moved = []
            for size in SIZES[1:]:
                model.batch_chunk = size
                moved.append(f"{size}: {float((model.features(images) - whole).abs().max() / whole.abs().max()):.1e}")
        print(f"  features against the whole batch's (max relative difference), chunks of {', '.join(moved)}")
        model.batch_chunk = None
        start = time.perf_counter()
        reason = choose_batch_chunk(model, "cpu", 8).reason
        print(f"  start-up choice ({time.perf_counter() - start:.1f} s to time): {reason}")
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()
