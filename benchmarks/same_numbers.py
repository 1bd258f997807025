"""Same numbers before and after a change: train and test with the same seed on the demo set and on MTD,
with this checkout and with an older revision, and compare every epoch's record and the test metrics.

    python benchmarks/same_numbers.py 82b2b4e        # from the project root, ../shared/data beside it

Small settings (EfficientNet-Lite0, 128 px, 3 epochs, float32, 2 threads) keep it to a few minutes. The
verdict and this checkout's metrics go to `results/same_numbers.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from record import add_results_option, record_rows

RUN = r'''
import json, sys
from pathlib import Path
try:
    from glass_ad.training import train
    from glass_ad.evaluation.tester import test
    from glass_ad.data.demo_data import make_demo_dataset
except ImportError:  # the flat layout of older revisions
    from glass_ad.trainer import train
    from glass_ad.tester import test
    from glass_ad.demo_data import make_demo_dataset
from glass_ad.config import make_config
data, out, textures = sys.argv[1], Path(sys.argv[2]), sys.argv[3] or None
if data == "demo":
    data = make_demo_dataset(out.parent / "demo", size=128)
cfg = make_config("fast", backbone="efficientnet_lite0", image_size=128, epochs=3, early_stopping=False, seed=0,
                  precision="fp32", num_threads=2, textures=textures)
result = train(data, out, cfg, progress=False, echo=lambda _: None)
metrics = test(out, data, json_path=None, report_dir=None, progress=False, pictures=False)
print(json.dumps({"history": [{k: v for k, v in h.items() if k not in ("elapsed_s", "epoch_s")} for h in result.history],
                  "metrics": {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro")}}))
'''


def run(src: Path, data: str, out: Path, textures: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", RUN, data, str(out), textures], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revision", help="the older git revision to compare with")
    parser.add_argument("--shared", default="../shared/data")
    add_results_option(parser, "same_numbers")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_src = Path(tmp) / "old"
        old_src.mkdir()
        archive = subprocess.run(["git", "archive", args.revision, "src"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive, check=True)
        shared = Path(args.shared).resolve()
        cases = [("demo", "demo", "")]
        if (shared / "mtd").is_dir():
            cases.append(("MTD", str(shared / "mtd"), str(shared / "dtd")))
        for name, data, textures in cases:
            old = run(old_src / "src", data, Path(tmp) / f"old-{name}" / "run", textures)
            new = run(Path("src").resolve(), data, Path(tmp) / f"new-{name}" / "run", textures)
            same = old == new
            print(f"{name}: {'identical' if same else 'DIFFERENT'} (every epoch's record and the test metrics); "
                  f"now {json.dumps({k: round(v, 4) for k, v in new['metrics'].items()})}")
            if not same:
                print(f"  before: {old['metrics']}\n  after:  {new['metrics']}")
            rows.append({
                "data": name, "recipe": "fast", "against": args.revision, "identical": same,
                **{metric: round(value, 4) for metric, value in new["metrics"].items()},
            })  # fmt: skip
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()
