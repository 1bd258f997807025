"""Does D learn a harder GAS on a small data set? The end-to-end test's setting, per ascent step size.

Trains the fast recipe on a generated 40-image data set (EfficientNet-Lite0, 64 px, 6 epochs of 5 steps,
no early stopping: the data and settings of tests/test_end_to_end.py) once per `--eta` and prints the
held-out GAS separation of every epoch (GAS drawn with the same ascent; 0.5 is chance) and the last GAS
loss. The generated images are synthetic, so this measures whether GAS trains, not accuracy.

    python benchmarks/gas_ascent_small_data.py [--eta 0.005 0.02 0.05]

Rows go to `results/gas_ascent_small_data.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from record import add_results_option, record_rows

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eta", type=float, nargs="+", default=[0.005, 0.02, 0.05])
    add_results_option(parser, "gas_ascent_small_data")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = make_demo_dataset(root / "data", n_train=40, n_test_good=10, n_test_defect=10, size=64)
        print(f"{'eta':>6}  held-out GAS separation per epoch / last GAS loss")
        for eta in args.eta:
            config = make_config("fast", backbone="efficientnet_lite0", image_size=64, epochs=6,
                                 early_stopping=False, seed=0, ascent_step_size=eta)  # fmt: skip
            result = train(data, root / f"run_{eta:g}", config, progress=False, echo=lambda _: None)
            separations = " ".join(f"{record['val_gas_separation']:.2f}" for record in result.history)
            print(f"{eta:>6g}  {separations} / {result.history[-1]['loss_gas']:.3f}")
            records.append({
                "data": "generated demo (40 images, 64 px)", "recipe": config.recipe, "seed": config.seed,
                "ascent_step_size": eta, "gas_separation_per_epoch": separations,
                "last_gas_loss": round(result.history[-1]["loss_gas"], 3),
            })  # fmt: skip
    record_rows(args.results, records)


if __name__ == "__main__":
    main()
