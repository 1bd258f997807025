"""The backbone's features of a batch of 8, with and without `glass_ad.allocator.keep_freed_memory`.

Each setting runs in its own process (glibc's choice is per process): median milliseconds of
`GlassModel.features` over 8 random images in one pass (Lite2, batch norms folded) and the page faults per
pass, at each input shape. Without the setting every large activation is a fresh mapping, faulted in page by
page on every pass.

    python benchmarks/allocator.py [--shapes 288x288 288x720] [--rounds 5]

Rows go to `results/allocator.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from record import add_results_option, record_rows

CHILD = """
import json, resource, statistics, sys, time
import torch
from glass_ad.allocator import keep_freed_memory
from glass_ad.config import make_config
from glass_ad.model.glass_model import build_model

applied = keep_freed_memory()
torch.set_num_threads(2)
shape, rounds = tuple(int(v) for v in sys.argv[1].split("x")), int(sys.argv[2])
config = make_config("fast", image_size=min(shape), image_shape=None if shape[0] == shape[1] else shape)
model = build_model(config).eval()
images = torch.rand(8, 3, *shape)
times, faults = [], []
with torch.no_grad():
    for round_ in range(rounds + 1):  # round 0 warms up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        model.features(images)
        if round_:
            times.append(1000 * (time.perf_counter() - start))
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "ms": statistics.median(times), "faults": statistics.median(faults)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["288x288", "288x720"])
    parser.add_argument("--rounds", type=int, default=5)
    add_results_option(parser, "allocator")
    args = parser.parse_args()
    rows = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for shape in args.shapes:
        for label, extra in (("freed memory returned (glibc default)", {"GLASS_KEEP_FREED_MEMORY": "0"}), ("kept", {})):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, shape, str(args.rounds)],
                env=base | extra,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{shape}, 8 images, {label:<38}: {result['ms']:6.0f} ms, {result['faults']:8.0f} page faults per pass")
            rows.append({
                "data": "random images", "recipe": "fast", "shape": shape, "freed_memory": label,
                "ms_per_pass": round(result["ms"]), "page_faults_per_pass": round(result["faults"]),
            })  # fmt: skip
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()
