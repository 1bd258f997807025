"""What to quantise in the int8 OpenVINO export: scope variants of one model, side by side.

    python benchmarks/int8_scope.py RUN DATA [--variants shipped,backbone_int8,pooling_int8,...]
                                    [--test] [--threads 2]

Each variant is exported the way ``glass export RUN --format openvino --precision int8 --calibration DATA``
exports (`inference.openvino_export.export_openvino`: 128 calibration normals of DATA's train/good plus LAS
anomalies made from 32 of them), with its scope changed:

* ``shipped``: the export as it is (the hybrid's bank product q·b as ``auto`` decides on this CPU);
* ``backbone_int8``: a hybrid model's backbone quantised too, as the paper's score's;
* ``pooling_int8``: a hybrid model's level pooling (every level) quantised too, as the paper's score's;
* ``first_fp32``: the discriminator's first layer kept in float32;
* ``bank_fp32``: the bank product kept in float32 (``bank_product="fp32"``);
* ``backbone_fp32``: the shipped scope with the whole backbone in float32 (the paper's score's too).

For each: the export's own held-out check (192 images the calibration did not see: 128 normals and 64 LAS
anomalies made from them, against ONNX Runtime fp32 — decisions changed, mean |Δscore|, and the mean
signed shift on normals and on anomalies), its measured speed over the same graph in float32, and with
``--test`` the decisions changed on DATA's test images against the float32 IR at the stored threshold.
``--test`` reads test images: use it to report, not to choose (docs/deploy.md says which figures chose
the shipped scope). Rows go to ``results/int8_scope.csv``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from record import add_results_option, cap_isa, record_rows

VARIANTS = ("shipped", "backbone_int8", "pooling_int8", "first_fp32", "bank_fp32", "backbone_fp32")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--test", action="store_true", help="also count changed decisions on DATA's test images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-isa", default=None, help="e.g. AVX2: cap oneDNN/OpenVINO's instruction set")
    add_results_option(parser, "int8_scope")
    args = parser.parse_args()
    cap_isa(args.max_isa)

    import glass_ad.inference.openvino_export as ox
    from glass_ad.data.io import list_images, read_image
    from glass_ad.model.checkpoint import Checkpoint

    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)} (known: {', '.join(VARIANTS)})")
    threshold = Checkpoint.load(args.run).calibration.image_threshold
    out = Path(tempfile.mkdtemp(prefix="glass-int8-scope-"))
    frames = [read_image(path) for path in list_images(Path(args.data) / "test", recursive=True)] if args.test else []

    def image_scores(path: Path) -> np.ndarray:
        compiled = ox.compile(path, threads=args.threads)
        output = compiled.output(ox.OUTPUT_NAMES[0])
        return np.array([float(np.asarray(compiled(frame[None])[output])[0]) for frame in frames])

    reference = image_scores(ox.export_openvino(args.run, out / "fp32.xml", verify=False).path) if frames else None
    shipped = (list(ox.IGNORED_PATTERNS), list(ox.QUANTISED_HEAD), list(ox.HYBRID_IGNORED_PATTERNS))
    rows = []
    for variant in variants:
        # A study of the export's scope: the module's patterns are set for this variant and restored after.
        ox.IGNORED_PATTERNS = shipped[0] + ([".*/backbone/.*"] if variant == "backbone_fp32" else [])
        ox.QUANTISED_HEAD = [name for name in shipped[1] if name != "first/"] if variant == "first_fp32" else shipped[1]
        kept = {"backbone_int8": "/backbone/", "pooling_int8": "/head/pool"}.get(variant)  # a hybrid's float32 part
        ox.HYBRID_IGNORED_PATTERNS = [pattern for pattern in shipped[2] if not (kept and kept in pattern)]
        try:
            result = ox.export_openvino(
                args.run, out / f"{variant}.xml", precision="int8", calibration=args.data, verify=False,
                max_changed=1.0, max_score_error=float("inf"), max_mean_error=float("inf"),
                bank_product="fp32" if variant == "bank_fp32" else "auto",
            )  # fmt: skip
        finally:
            ox.IGNORED_PATTERNS, ox.QUANTISED_HEAD, ox.HYBRID_IGNORED_PATTERNS = shipped
        check = result.check
        row = {
            "run": args.run, "data": Path(args.data).name, "variant": variant, "max_isa": args.max_isa or "",
            "bank_product": result.bank_product or "", "held_out_changed": check.changed, "held_out_images": check.images,
            "held_out_mean_abs_diff": round(check.mean_abs_diff, 4), "held_out_max_abs_diff": round(check.max_abs_diff, 4),
            "shift_normals": round(check.shift_normals, 4), "shift_anomalies": round(check.shift_anomalies, 4),
            "speedup_vs_fp32_graph": round(result.speedup, 3),
        }  # fmt: skip
        if reference is not None:
            scores = image_scores(result.path)
            row["test_images"] = len(scores)
            row["test_changed"] = int(((scores >= threshold) != (reference >= threshold)).sum())
            row["test_mean_abs_diff"] = round(float(np.abs(scores - reference).mean()), 4)
        rows.append(row)
        print(row, flush=True)
    record_rows(args.results, rows)
    columns = ["variant", "bank_product", "held_out_changed", "held_out_mean_abs_diff", "shift_normals", "shift_anomalies",
               "speedup_vs_fp32_graph"] + (["test_changed", "test_mean_abs_diff"] if frames else [])  # fmt: skip
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
