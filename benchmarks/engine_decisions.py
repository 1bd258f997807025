"""`glass test` once per engine on one data set: image AUROC, and decisions and scores against PyTorch.

    python benchmarks/engine_decisions.py RUN DATA [--int8 model_int8.xml] [--threads 2] [--max-isa AVX2] [--out DIR]

Runs what ``glass test RUN DATA --engine torch|onnx|openvino [--onnx FILE]`` runs (`evaluation.tester.test`:
the uint8 pipeline of deployment) for PyTorch, ONNX Runtime fp32 and OpenVINO fp32 (both exported here
from RUN) and, with ``--int8``, the given OpenVINO int8 IR; writes each engine's per-image scores
(``scores_<engine>.csv``) and prints, per engine: image AUROC, images decided anomalous at the stored
threshold, decisions changed against PyTorch, and max / mean |score difference|. ``--max-isa AVX2``: every
engine but ONNX Runtime on an emulated AVX2-only CPU (`record.cap_isa`): int8 runs other kernels there (no
VNNI), whose scores differ from those of a VNNI/AMX CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np

from record import add_results_option, cap_isa, record_rows


def _read_scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--int8", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--max-isa", default=None, help="e.g. AVX2: cap oneDNN/OpenVINO/PyTorch's instruction set")
    add_results_option(parser, "engine_decisions")
    args = parser.parse_args()
    cap_isa(args.max_isa)  # before torch and OpenVINO load

    import torch

    from glass_ad.evaluation.tester import test
    from glass_ad.inference.engines import create_engine
    from glass_ad.inference.export import export_onnx
    from glass_ad.inference.openvino_export import export_openvino
    from glass_ad.model.checkpoint import Checkpoint

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="glass-engine-decisions-"))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint.load(args.run)
    threshold = checkpoint.calibration.image_threshold
    onnx_path = export_onnx(args.run, out / "model.onnx").path
    xml_path = export_openvino(args.run, out / "model.xml").path
    engines = {"torch": None, "onnx fp32": ("onnx", onnx_path), "openvino fp32": ("openvino", xml_path)}
    if args.int8:
        engines["openvino int8"] = ("openvino", args.int8)
    rows, reference = [], None
    for name, spec in engines.items():
        engine = (
            None
            if spec is None
            else create_engine(spec[0], args.run, checkpoint, model_path=spec[1], threads=args.threads)
        )
        scores_csv = out / f"scores_{name.replace(' ', '_')}.csv"
        report = test(args.run, args.data, progress=False, pictures=False, device="cpu", engine=engine, scores_csv=scores_csv,
                      json_path=out / f"test_{name.replace(' ', '_')}.json", echo=lambda _: None)  # fmt: skip
        scores = _read_scores(scores_csv)
        reference = reference or scores
        a = np.array([scores[p] for p in reference])
        b = np.array([reference[p] for p in reference])
        rows.append({
            "engine": name, "precision": report.get("precision"), "image_auroc": report["image_auroc"],
            "anomalous": int((a >= threshold).sum()), "images": len(a),
            "changed_vs_torch": int(((a >= threshold) != (b >= threshold)).sum()),
            "max_abs_diff": float(np.abs(a - b).max()), "mean_abs_diff": float(np.abs(a - b).mean()),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    where = {"data": Path(args.data).name, "run": args.run, "max_isa": args.max_isa or ""}
    record_rows(args.results, [{**where, **row} for row in rows])
    (out / "engine_decisions.json").write_text(json.dumps({"run": args.run, "data": args.data, "rows": rows}, indent=2))
    print(
        f"\n| engine | image AUROC | anomalous / {rows[0]['images']} | decisions changed vs PyTorch | max / mean abs(Δscore) |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {100 * row['image_auroc']:.2f} | {row['anomalous']} | {row['changed_vs_torch']} | "
              f"{row['max_abs_diff']:.2g} / {row['mean_abs_diff']:.2g} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
