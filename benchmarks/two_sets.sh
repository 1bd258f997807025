#!/usr/bin/env bash
# The default command on MTD and MPDD metal_plate, two seeds, with the hybrid score of the same training and the
# PatchCore baseline; the rows land in results/quality.csv, results/operating_point.csv and the other scripts' files
# under results/ (docs/benchmarks.md, "The default command on both sets"); README's tables are then made anew.
# Usage: bash benchmarks/two_sets.sh [RUNS_DIR]   (run from the repository root; takes about an hour on 2 cores)
set -euo pipefail
RUNS=${1:-runs/two_sets}
DTD=../shared/data/dtd
mkdir -p "$RUNS"
GLASS=(); BASELINES=()
for spec in "mtd ../shared/data/mtd" "mpdd ../shared/data/mpdd_metal_plate"; do
  set -- $spec; name=$1; data=$2
  for seed in 0 1; do
    run=$RUNS/${name}_s$seed
    [ -f "$run/model.pt" ] || glass train "$data" --out "$run" --textures "$DTD" --seed "$seed" --score glass -q
    glass test "$run" "$data" --json "$run.json" --no-pictures -q
    python benchmarks/hybrid_from_run.py "$run" "$data" --out "${run}_hybrid"
    glass test "${run}_hybrid" "$data" --json "${run}_hybrid.json" --no-pictures -q
    python benchmarks/operating_point.py "$run" "$data" --json "$RUNS/op_${name}_s$seed.json"
    python benchmarks/operating_point.py "${run}_hybrid" "$data" --json "$RUNS/op_${name}_s${seed}_hybrid.json"
    python benchmarks/patchcore_baseline.py "$data" --seed "$seed" --json "$RUNS/pc_${name}_s$seed.json"
    GLASS+=("$run" "${run}_hybrid"); BASELINES+=("$RUNS/pc_${name}_s$seed.json")
  done
done
python benchmarks/quality_table.py --glass "${GLASS[@]}" --baseline "${BASELINES[@]}" --results results/quality.csv
python scripts/readme_tables.py
