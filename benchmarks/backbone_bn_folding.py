"""Inference with and without the backbone's batch norms folded into its convolutions.

Loads a trained run as deployed (`build_model(fuse=True)`; every model the project builds has them folded)
and a copy whose backbone is built without folding, then times both, alternating, on random batches of 8 and of 1 at the run's input size
(PyTorch, 2 threads): the backbone alone and the full model. Prints the median images per second of each
and how far the features and the patch scores move.

    python benchmarks/backbone_bn_folding.py RUN [--rounds 5]

Rows go to `results/backbone_bn_folding.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from record import add_results_option, record_rows

from glass_ad.model.backbones import create_backbone
from glass_ad.model.checkpoint import Checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    add_results_option(parser, "backbone_bn_folding")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkpoint = Checkpoint.load(f"{args.run}/model.pt")
    folded = checkpoint.build_model("cpu", fuse=True)
    unfolded = copy.deepcopy(folded)
    config = checkpoint.config
    unfolded.backbone = create_backbone(config.backbone, checkpoint.backbone.layers, config.weights).eval()
    shape = checkpoint.config.input_shape
    batches = {"batch 8": (torch.rand(8, 3, *shape), 3), "batch 1": (torch.rand(1, 3, *shape), 16)}
    parts = {"backbone": lambda model: model.backbone, "full inference": lambda model: model}
    rates: dict[tuple[str, str, str], list[float]] = {}
    with torch.inference_mode():
        x = batches["batch 8"][0]
        features = max(
            float((a - b).abs().max() / a.abs().max()) for a, b in zip(unfolded.backbone(x), folded.backbone(x))
        )
        scores = float((folded(x).patch_scores - unfolded(x).patch_scores).abs().max())
        for _ in range(args.rounds):
            for name, model in (("unfolded", unfolded), ("folded", folded)):
                for part, pick in parts.items():
                    for batch_name, (images, calls) in batches.items():
                        start = time.perf_counter()
                        for _ in range(calls):
                            pick(model)(images)
                        rate = calls * len(images) / (time.perf_counter() - start)
                        rates.setdefault((part, batch_name, name), []).append(rate)
    print(f"{args.run}: {shape[0]}×{shape[1]} input, median of {args.rounds} alternating rounds; features move by "
          f"{features:.1e} (relative), patch scores by {scores:.1e}")  # fmt: skip
    rows = []
    for part in parts:
        for batch_name in batches:
            before = statistics.median(rates[(part, batch_name, "unfolded")])
            after = statistics.median(rates[(part, batch_name, "folded")])
            print(f"  {part}, {batch_name}: {before:.1f} -> {after:.1f} img/s ({after / before:.2f}x)")
            rows.append({
                "data": Path(checkpoint.training.data_root or "").name, "recipe": config.recipe, "run": Path(args.run).name,
                "part": part, "batch": batch_name, "unfolded_images_per_s": round(before, 1),
                "folded_images_per_s": round(after, 1), "features_moved": f"{features:.1e}", "scores_moved": f"{scores:.1e}",
            })  # fmt: skip
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()
