#!/usr/bin/env bash
# The measured table of docs/scale.md: a suite over the demo category + MTD, sequential vs local Ray with
# 2 workers, and one demo model trained by 1 process vs torchrun with 2 processes. Usage (from the project
# root, ../shared/data beside it):  bash benchmarks/scale_table.sh [WORK_DIR]
# The wall times go to results/scale_table.csv (benchmarks/record.py), one row per measurement.
set -euo pipefail
work=${1:-/tmp/glass-scale}
rm -rf "$work" && mkdir -p "$work/root"
python - "$work" <<'PY'
import sys
from pathlib import Path
from glass_ad.data.demo_data import make_demo_dataset
make_demo_dataset(Path(sys.argv[1]) / "demo")
PY
ln -s "$work/demo/surface" "$work/root/surface"
ln -s "$(realpath ../shared/data/mtd)" "$work/root/mtd"
suite_opts=(--backbone efficientnet_lite0 --image-size 128 --epochs 3 --no-pictures --quiet)
timed() { local name=$1; shift; local start=$(date +%s.%N); "$@" > "$work/$name.log" 2>&1; echo "$name $(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$work/times.txt"; }
timed suite_sequential glass suite "$work/root" --out "$work/seq" "${suite_opts[@]}"
timed suite_ray_2 glass suite "$work/root" --out "$work/ray" "${suite_opts[@]}" --engine ray --workers 2
# A Ray job runs with its 1 CPU's thread; the same thread count in the sequential suite gives the same table.
timed suite_sequential_1_thread glass suite "$work/root" --out "$work/seq1" "${suite_opts[@]}" --num-threads 1
python - "$work" <<'PY'
import csv, sys
from pathlib import Path
w = Path(sys.argv[1])
rows = lambda d: [{k: v for k, v in r.items() if "time" not in k} for r in csv.DictReader(open(w / d / "results.csv"))]
print("Ray table equals the sequential one (2 threads):", rows("seq") == rows("ray"))
print("Ray table equals the sequential one (1 thread, as each Ray job):", rows("seq1") == rows("ray"))
PY
train_opts=(--image-size 128 --epochs 8 --no-early-stopping --seed 0 --quiet)
timed train_1_process glass train "$work/demo/surface" --out "$work/t1" "${train_opts[@]}" --num-threads 2
timed train_torchrun_2 python -m torch.distributed.run --standalone --nproc-per-node 2 -m glass_ad train \
    "$work/demo/surface" --out "$work/t2" "${train_opts[@]}" --num-threads 1
for run in t1 t2; do
    glass test "$work/$run" "$work/demo/surface" --json "$work/$run.json" --no-pictures -q > /dev/null 2>&1 || true
    python -c "import json,sys; m=json.load(open('$work/$run.json')); print('$run', 'image AUROC %.3f pixel AUROC %.3f' % (m['image_auroc'], m['pixel_auroc']))"
done
python - "$work" "$0" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[2]).resolve().parent))  # benchmarks/record.py
from record import record_rows
rows = [line.split() for line in (Path(sys.argv[1]) / "times.txt").read_text().splitlines()]
record_rows("scale_table", [{"data": "demo surface + MTD", "recipe": "fast", "measurement": name, "seconds": round(float(s), 1),
                             "command": "bash benchmarks/scale_table.sh"}
                            for name, s in rows])
PY
