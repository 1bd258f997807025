#!/usr/bin/env bash
# The MTD measurements recorded in docs/benchmarks.md, in the order they were run (2-core CPU).
# Each step logs to runs/<name>.log and writes runs/<name>.json; `/usr/bin/time -v` gives wall time and
# peak RAM. Run from the repository root with the project's venv active.
#
# Every training step's settings are a file in benchmarks/configs/mtd_study/ (`glass train --config`; its
# comment says which defaults it restores and which steps use it); the command line adds only the data, the
# textures, the seed and, for the elongated no-cap runs, `--max-patches-per-image 0` (no cap: a file cannot
# say it, since a null setting means "the recipe's value"). Steps recorded before commit 54e2bb1 gave half
# of each batch's images a LAS copy (files *_half.yaml); those before commit 7132d9b also started GAS at
# r1 = 1 without a time limit (files *_prev.yaml). They also ran the backbone unfolded, which no setting
# restores: re-running them now repeats their training up to float rounding, not bit for bit.
# Every step was recorded before the LAS pool (commit 957671b), so every file sets las_variants: 0.
set -uo pipefail
DATA=../shared/data/mtd
DTD=../shared/data/dtd
CONFIGS=benchmarks/configs/mtd_study
# `glass benchmark` takes no --config: its steps recorded before commit 54e2bb1 pass the older LAS share.
HALF="--las-fraction 0.5"
mkdir -p runs
step() {  # step NAME COMMAND...
  local name=$1; shift
  echo "== $name: $*" | tee "runs/$name.log"
  /usr/bin/time -v "$@" >>"runs/$name.log" 2>&1
}
case "${1:-all}" in
  fast|all)  # the default of commits 7132d9b–643054c (r1 = 1.5, 9.5-minute limit, LAS copies of half the images)
    step fast_train glass train $DATA --out runs/fast_s0 --textures $DTD --config $CONFIGS/half_las.yaml -q
    step fast_test glass test runs/fast_s0 $DATA --json runs/fast_s0.json -q ;;&
  fastseed|all)  # the same default with another seed: the run-to-run spread
    step fastseed1_train glass train $DATA --out runs/fast_s1 --textures $DTD --config $CONFIGS/half_las.yaml --seed 1 -q
    step fastseed1_test glass test runs/fast_s1 $DATA --json runs/fast_s1.json -q ;;&
  prevfast|all)  # the previous default (r1 = 1, no limit): the model the analyses below were measured on
    step prevfast_train glass train $DATA --out runs/mtd_fast --textures $DTD --config $CONFIGS/prev.yaml -q
    step prevfast_test glass test runs/mtd_fast $DATA --json runs/mtd_fast.json -q ;;&
  prevfastseed|all)
    step prevfastseed1_train glass train $DATA --out runs/mtd_fast_seed1 --textures $DTD --config $CONFIGS/prev.yaml --seed 1 -q
    step prevfastseed1_test glass test runs/mtd_fast_seed1 $DATA --json runs/mtd_fast_seed1.json -q ;;&
  patchcore|patchcore0|all)  # bank from exactly the images GLASS trains on (seeds hold out different images)
    step patchcore python benchmarks/patchcore_baseline.py $DATA --coreset 0.01 --seed 0 --json runs/patchcore.json ;;&
  patchcore|patchcore1|all)
    step patchcore_seed1 python benchmarks/patchcore_baseline.py $DATA --coreset 0.01 --seed 1 --json runs/patchcore_seed1.json ;;&
  table4|all)  # paper Table 4 on MTD: LAS only; GAS only (noise; + ascent; + projection); both = fast
    step las_only_train glass train $DATA --out runs/t4_las_only --textures $DTD --config $CONFIGS/t4_las_only_half.yaml -q
    step las_only_test glass test runs/t4_las_only $DATA --json runs/t4_las_only.json -q
    for mode in noise ascent; do  # no projection: r1 plays no part
      step gas_${mode}_train glass train $DATA --out runs/t4_gas_$mode --textures $DTD --config $CONFIGS/t4_gas_$mode.yaml -q
      step gas_${mode}_test glass test runs/t4_gas_$mode $DATA --json runs/t4_gas_$mode.json -q
    done
    step gas_full_train glass train $DATA --out runs/t4_gas_full15 --textures $DTD --config $CONFIGS/t4_gas_full.yaml -q
    step gas_full_test glass test runs/t4_gas_full15 $DATA --json runs/t4_gas_full15.json -q ;;&
  hybrid|all)  # the optional hybrid score, same training as fast seed 0
    step hybrid_train glass train $DATA --out runs/hybrid_s0 --textures $DTD --config $CONFIGS/hybrid_half.yaml -q
    step hybrid_test glass test runs/hybrid_s0 $DATA --json runs/hybrid_s0.json -q ;;&
  hybridseed|all)
    step hybridseed1_train glass train $DATA --out runs/hybrid_s1 --textures $DTD --config $CONFIGS/hybrid_half.yaml --seed 1 -q
    step hybridseed1_test glass test runs/hybrid_s1 $DATA --json runs/hybrid_s1.json -q ;;&
  prevhybrid|all)  # the same with the previous defaults
    step prevhybrid_train glass train $DATA --out runs/mtd_hybrid --textures $DTD --config $CONFIGS/hybrid_prev.yaml -q
    step prevhybrid_test glass test runs/mtd_hybrid $DATA --json runs/mtd_hybrid.json -q ;;&
  prevhybridseed|all)
    step prevhybridseed1_train glass train $DATA --out runs/mtd_hybrid_seed1 --textures $DTD --config $CONFIGS/hybrid_prev.yaml --seed 1 -q
    step prevhybridseed1_test glass test runs/mtd_hybrid_seed1 $DATA --json runs/mtd_hybrid_seed1.json -q ;;&
  wide|all)  # MTD forced into a 288×720 input: what the time limit leaves with and without the patch cap
    step wide_cap_train glass train $DATA --out runs/wide_cap --textures $DTD --config $CONFIGS/wide_half.yaml -q
    step wide_cap_test glass test runs/wide_cap $DATA --json runs/wide_cap.json -q
    step wide_nocap_train glass train $DATA --out runs/wide_nocap --textures $DTD --config $CONFIGS/wide_half.yaml --max-patches-per-image 0 -q
    step wide_nocap_test glass test runs/wide_nocap $DATA --json runs/wide_nocap.json -q
    step wide_cap_s1_train glass train $DATA --out runs/wide_cap_s1 --textures $DTD --config $CONFIGS/wide_half.yaml --seed 1 -q
    step wide_nocap_s1_train glass train $DATA --out runs/wide_nocap_s1 --textures $DTD --config $CONFIGS/wide_half.yaml --seed 1 --max-patches-per-image 0 -q
    step wide_cap_s1_test glass test runs/wide_cap_s1 $DATA --json runs/wide_cap_s1.json -q
    step wide_nocap_s1_test glass test runs/wide_nocap_s1 $DATA --json runs/wide_nocap_s1.json -q
    step wide_same_numbers glass train $DATA --out runs/check_cap_2ep --textures $DTD --config $CONFIGS/check_cap_2ep.yaml -q
    step wide_patchcore python benchmarks/patchcore_baseline.py $DATA --image-shape 288x720 --coreset 0.01 --seed 0 --json runs/wide_patchcore.json
    step wide_patchcore_s1 python benchmarks/patchcore_baseline.py $DATA --image-shape 288x720 --coreset 0.01 --seed 1 --json runs/wide_patchcore_s1.json
    step wide_bench glass benchmark --image-shape 288x720 --precision bf16 --iterations 6 --repeats 3 $HALF
    step wide_bench_nocap glass benchmark --image-shape 288x720 --precision bf16 --iterations 6 --repeats 3 $HALF --max-patches-per-image 0
    step square_bench glass benchmark --precision bf16 --iterations 6 --repeats 3 $HALF ;;&
  hypersphere|all)  # GLASS-h forced on MTD (the GLASS-j rule picks GLASS-m): is its GAS alive, how does it score?
    step hypersphere_train glass train $DATA --out runs/hypersphere_s0 --textures $DTD --config $CONFIGS/hypersphere_half.yaml -q
    step hypersphere_test glass test runs/hypersphere_s0 $DATA --json runs/hypersphere_s0.json -q ;;&
  geometry|all)
    step geometry python benchmarks/feature_scale.py $DATA --images 32 ;;&
  paper1|all)
    step paper1_train glass train $DATA --out runs/mtd_paper1 --textures $DTD --config $CONFIGS/paper_1epoch.yaml -q
    step paper1_test glass test runs/mtd_paper1 $DATA --json runs/mtd_paper1.json -q ;;&
  paper3|all)
    step paper3_train glass train $DATA --out runs/mtd_paper3 --textures $DTD --config $CONFIGS/paper_3epochs.yaml -q
    step paper3_test glass test runs/mtd_paper3 $DATA --json runs/mtd_paper3.json -q ;;&
  paperlong|all)  # the reference schedule for 16 epochs; bf16 arithmetic and cached features (same schedule)
    step paperlong_train glass train $DATA --out runs/mtd_paperlong --textures $DTD --config $CONFIGS/paper_16epochs.yaml -q
    step paperlong_test glass test runs/mtd_paperlong $DATA --json runs/mtd_paperlong.json -q ;;&
  explore|all)  # validation-only comparisons behind the fast defaults (docs/benchmarks.md, exploration)
    step gasfull4_train glass train $DATA --out runs/exp_gasfull4 --textures $DTD --config $CONFIGS/explore_reference_gas_4ep.yaml -q
    step gashalf4_train glass train $DATA --out runs/exp_gashalf4 --textures $DTD --config $CONFIGS/explore_gas_half_4ep.yaml -q
    step cosine20_train glass train $DATA --out runs/exp_cosine20 --textures $DTD --config $CONFIGS/explore_cosine_patience20.yaml -q ;;&
  average|all)  # the weight average (--ema-epochs, default 1): its span, the live weights, the LAS weight
    step ema0_train glass train $DATA --out runs/ema0 --textures $DTD --config $CONFIGS/ema0_prev.yaml -q
    step ema0_test glass test runs/ema0 $DATA --json runs/ema0.json -q
    step ema4_train glass train $DATA --out runs/ema4 --textures $DTD --config $CONFIGS/ema4_prev.yaml -q
    step las05_train glass train $DATA --out runs/las05 --textures $DTD --config $CONFIGS/las05_prev.yaml -q
    step las05_test glass test runs/las05 $DATA --json runs/las05.json -q
    step r05_train glass train $DATA --out runs/r05 --textures $DTD --config $CONFIGS/r05_prev.yaml -q
    step r05_test glass test runs/r05 $DATA --json runs/r05.json -q
    step r05seed1_train glass train $DATA --out runs/r05_seed1 --textures $DTD --config $CONFIGS/r05_prev.yaml --seed 1 -q
    step r05seed1_test glass test runs/r05_seed1 $DATA --json runs/r05_seed1.json -q ;;&
  branchmix|all)  # why LAS blunts GAS on MTD: the LAS rim, the adaptor
    step ring_geometry python benchmarks/las_ring_displacement.py runs/mtd_fast $DATA
    step ring1_train glass train $DATA --out runs/ring1 --textures $DTD --config $CONFIGS/ring1_prev.yaml -q
    step ring1_test glass test runs/ring1 $DATA --json runs/ring1.json -q
    step noadaptor_train glass train $DATA --out runs/noadaptor --textures $DTD --config $CONFIGS/noadaptor_prev.yaml -q
    step noadaptor_test glass test runs/noadaptor $DATA --json runs/noadaptor.json -q
    step noadaptor1_train glass train $DATA --out runs/noadaptor_seed1 --textures $DTD --config $CONFIGS/noadaptor_prev.yaml --seed 1 -q
    step noadaptor1_test glass test runs/noadaptor_seed1 $DATA --json runs/noadaptor_seed1.json -q ;;&
  ascent|all)  # does the ascent turn GAS? the step size and r1 (validation first; test afterwards)
    step ascent_turn python benchmarks/gas_ascent_turn.py runs/mtd_fast $DATA
    step nn_validation python benchmarks/nn_on_validation.py runs/mtd_fast $DATA
    step ascent_small python benchmarks/gas_ascent_small_data.py
    for seed in 0 1; do
      step eta05_s${seed}_train glass train $DATA --out runs/eta05_s$seed --textures $DTD --config $CONFIGS/eta05_prev.yaml --seed $seed -q
      step eta05_s${seed}_test glass test runs/eta05_s$seed $DATA --json runs/eta05_s$seed.json -q
    done
    step eta02_train glass train $DATA --out runs/eta02_s0 --textures $DTD --config $CONFIGS/eta02_prev.yaml -q
    step eta02_test glass test runs/eta02_s0 $DATA --json runs/eta02_s0.json -q
    step r15_train glass train $DATA --out runs/r15 --textures $DTD --config $CONFIGS/r15_half.yaml -q
    step r15_test glass test runs/r15 $DATA --json runs/r15.json -q
    step r15eta05_train glass train $DATA --out runs/r15eta05 --textures $DTD --config $CONFIGS/r15_eta05_half.yaml -q
    step r15eta05_test glass test runs/r15eta05 $DATA --json runs/r15eta05.json -q ;;&
  gasstart|all)  # where GAS starts (r1, spacings): 1.5 (seed 0: runs/r15 above) and 2, all 20 epochs, bf16
    step r15_s1_train glass train $DATA --out runs/r15_s1 --textures $DTD --config $CONFIGS/r15_half.yaml --seed 1 -q
    step r15_s1_test glass test runs/r15_s1 $DATA --json runs/r15_s1.json -q
    step r2_train glass train $DATA --out runs/r2_s0 --textures $DTD --config $CONFIGS/r2_half.yaml -q
    step r2_test glass test runs/r2_s0 $DATA --json runs/r2_s0.json -q
    step curves python benchmarks/validation_curves.py runs/r05 runs/r05_seed1 runs/mtd_fast runs/mtd_hybrid_seed1 runs/r15 runs/r15_s1 runs/r2_s0 runs/fast_s0 runs/fast_s1 runs/t4_las_only --window 3-14 --time-limit 9.5 ;;&
  split|all)  # the defaults again after GAS computes D's first layer on the normal vectors once (commit bf73f8b)
    step split_s0_train glass train $DATA --out runs/split_s0 --textures $DTD --config $CONFIGS/half_las.yaml -q
    step split_s0_test glass test runs/split_s0 $DATA --json runs/split_s0.json --no-pictures -q
    step split_s1_train glass train $DATA --out runs/split_s1 --textures $DTD --config $CONFIGS/half_las.yaml --seed 1 -q
    step split_s1_test glass test runs/split_s1 $DATA --json runs/split_s1.json --no-pictures -q ;;&
  lasall|all)  # a LAS copy of every image (the reference's share) against the fast recipe's half, two seeds
    step lasall_s0_train glass train $DATA --out runs/lasall_s0 --textures $DTD --config $CONFIGS/las_all.yaml -q
    step lasall_s1_train glass train $DATA --out runs/lasall_s1 --textures $DTD --config $CONFIGS/las_all.yaml --seed 1 -q
    step lasall_curves python benchmarks/validation_curves.py runs/split_s0 runs/lasall_s0 runs/split_s1 runs/lasall_s1 --window 3-14
    step lasall_s0_test glass test runs/lasall_s0 $DATA --json runs/lasall_s0.json --no-pictures -q
    step lasall_s1_test glass test runs/lasall_s1 $DATA --json runs/lasall_s1.json --no-pictures -q ;;&
  reference|all)  # the default after it gave every image a LAS copy and the backbone was folded and chunked
    step ref_s0_train glass train $DATA --out runs/ref_s0 --textures $DTD --config $CONFIGS/default.yaml -q
    step ref_s0_test glass test runs/ref_s0 $DATA --json runs/ref_s0.json --no-pictures -q
    step ref_s1_train glass train $DATA --out runs/ref_s1 --textures $DTD --config $CONFIGS/default.yaml --seed 1 -q
    step ref_s1_test glass test runs/ref_s1 $DATA --json runs/ref_s1.json --no-pictures -q ;;&
  referencewide|all)  # the same default on MTD forced into a 288×720 input (elongated products: epochs within the limit)
    step ref_wide_train glass train $DATA --out runs/ref_wide --textures $DTD --config $CONFIGS/wide.yaml -q
    step ref_wide_test glass test runs/ref_wide $DATA --json runs/ref_wide.json --no-pictures -q
    step ref_wide_s1_train glass train $DATA --out runs/ref_wide_s1 --textures $DTD --config $CONFIGS/wide.yaml --seed 1 -q
    step ref_wide_s1_test glass test runs/ref_wide_s1 $DATA --json runs/ref_wide_s1.json --no-pictures -q ;;&
  referencewidekept|all)  # the 288×720 default again after freed memory is kept (commit cef9d55), seed 0
    step ref_wide_kept_train glass train $DATA --out runs/ref_wide_kept --textures $DTD --config $CONFIGS/wide.yaml -q
    step ref_wide_kept_test glass test runs/ref_wide_kept $DATA --json runs/ref_wide_kept.json --no-pictures -q ;;&
  table4ref|all)  # Table 4's LAS-only row with the current defaults (the GAS-only rows draw no LAS copies)
    step ref_t4_las_only_train glass train $DATA --out runs/ref_t4_las_only --textures $DTD --config $CONFIGS/t4_las_only.yaml -q
    step ref_t4_las_only_test glass test runs/ref_t4_las_only $DATA --json runs/ref_t4_las_only.json --no-pictures -q ;;&
  allocatorthreshold|all)  # seed 0 of both defaults again with the mmap threshold (256 MB) instead of no mappings
    step ref_wide_thr_train glass train $DATA --out runs/ref_wide_thr --textures $DTD --config $CONFIGS/wide.yaml -q
    step ref_wide_thr_test glass test runs/ref_wide_thr $DATA --json runs/ref_wide_thr.json --no-pictures -q
    step ref_s0_thr_train glass train $DATA --out runs/ref_s0_thr --textures $DTD --config $CONFIGS/default.yaml -q
    step ref_s0_thr_test glass test runs/ref_s0_thr $DATA --json runs/ref_s0_thr.json --no-pictures -q ;;&
  hybridref|all)  # the optional hybrid score with the current defaults (every image a LAS copy), both seeds
    step hybrid_ref_s0_train glass train $DATA --out runs/hybrid_ref_s0 --textures $DTD --config $CONFIGS/hybrid.yaml -q
    step hybrid_ref_s0_test glass test runs/hybrid_ref_s0 $DATA --json runs/hybrid_ref_s0.json --no-pictures -q
    step hybrid_ref_s1_train glass train $DATA --out runs/hybrid_ref_s1 --textures $DTD --config $CONFIGS/hybrid.yaml --seed 1 -q
    step hybrid_ref_s1_test glass test runs/hybrid_ref_s1 $DATA --json runs/hybrid_ref_s1.json --no-pictures -q ;;&
  patchshare|all)  # half of the batch's patch vectors per branch instead of a quarter (the share was chosen while GAS was dead), two seeds
    step share50_s0_train glass train $DATA --out runs/share50_s0 --textures $DTD --config $CONFIGS/share50.yaml -q
    step share50_s1_train glass train $DATA --out runs/share50_s1 --textures $DTD --config $CONFIGS/share50.yaml --seed 1 -q
    step share50_curves python benchmarks/validation_curves.py runs/ref_s0 runs/share50_s0 runs/ref_s1 runs/share50_s1 --window 3-12
    step share50_s0_test glass test runs/share50_s0 $DATA --json runs/share50_s0.json --no-pictures -q
    step share50_s1_test glass test runs/share50_s1 $DATA --json runs/share50_s1.json --no-pictures -q ;;&
  embedwidth|all)  # the reference's patch vector width (1536 for every backbone) against Lite2's 432 (deviation 2), seed 0
    step embed1536_s0_train glass train $DATA --out runs/embed1536_s0 --textures $DTD --config $CONFIGS/embed1536.yaml -q
    step embed1536_curves python benchmarks/validation_curves.py runs/ref_s0 runs/embed1536_s0 --window 3-6
    step embed1536_s0_test glass test runs/embed1536_s0 $DATA --json runs/embed1536_s0.json --no-pictures -q
    step patchcore1536_s0 python benchmarks/patchcore_baseline.py $DATA --embed-dim 1536 --coreset 0.01 --seed 0 --json runs/patchcore1536_s0.json ;;&
  cosine|all)  # the learning rates decayed to 0 over the 20 epochs (a cosine) instead of constant, with GAS alive, two seeds
    step cosine_s0_train glass train $DATA --out runs/cosine_s0 --textures $DTD --config $CONFIGS/cosine.yaml -q
    step cosine_s1_train glass train $DATA --out runs/cosine_s1 --textures $DTD --config $CONFIGS/cosine.yaml --seed 1 -q
    step cosine_curves python benchmarks/validation_curves.py runs/ref_s0 runs/cosine_s0 runs/ref_s1 runs/cosine_s1 --window 3-14
    step cosine_s0_test glass test runs/cosine_s0 $DATA --json runs/cosine_s0.json --no-pictures -q
    step cosine_s1_test glass test runs/cosine_s1 $DATA --json runs/cosine_s1.json --no-pictures -q ;;&
  texturecolour|all)  # the reference's coloured DTD textures on MTD's grey tiles against the default grey ones (deviation 13), two seeds
    step colour_s0_train glass train $DATA --out runs/colour_s0 --textures $DTD --config $CONFIGS/colour_textures.yaml -q
    step colour_s1_train glass train $DATA --out runs/colour_s1 --textures $DTD --config $CONFIGS/colour_textures.yaml --seed 1 -q
    step colour_curves python benchmarks/validation_curves.py runs/ref_s0 runs/colour_s0 runs/ref_s1 runs/colour_s1 --window 3-13
    step colour_s0_test glass test runs/colour_s0 $DATA --json runs/colour_s0.json --no-pictures -q
    step colour_s1_test glass test runs/colour_s1 $DATA --json runs/colour_s1.json --no-pictures -q ;;&
  thirdseed|all)  # the default and the baseline with a third seed: how far the headline figures move between seeds
    step ref_s2_train glass train $DATA --out runs/ref_s2 --textures $DTD --config $CONFIGS/default.yaml --seed 2 -q
    step ref_s2_test glass test runs/ref_s2 $DATA --json runs/ref_s2.json --no-pictures -q
    step patchcore_s2 python benchmarks/patchcore_baseline.py $DATA --coreset 0.01 --seed 2 --json runs/patchcore_s2.json ;;&
  float32|all)  # the default in float32 throughout, as on a CPU whose bf16 is no faster: epochs within the limit, figures, two seeds
    step fp32_s0_train glass train $DATA --out runs/fp32_s0 --textures $DTD --config $CONFIGS/fp32.yaml -q
    step fp32_s0_test glass test runs/fp32_s0 $DATA --json runs/fp32_s0.json --no-pictures -q
    step fp32_s1_train glass train $DATA --out runs/fp32_s1 --textures $DTD --config $CONFIGS/fp32.yaml --seed 1 -q
    step fp32_s1_test glass test runs/fp32_s1 $DATA --json runs/fp32_s1.json --no-pictures -q ;;&
  faintlas|all)  # LAS overlays fainter on average (β ~ N(0.65, 0.15²) in [0.2, 0.95] instead of N(0.5, 0.1²) in [0.2, 0.8]), two seeds
    step faint_s0_train glass train $DATA --out runs/faint_s0 --textures $DTD --config benchmarks/configs/faint_las.yaml -q
    step faint_s0_test glass test runs/faint_s0 $DATA --json runs/faint_s0.json --no-pictures -q
    step faint_s1_train glass train $DATA --out runs/faint_s1 --textures $DTD --config benchmarks/configs/faint_las.yaml --seed 1 -q
    step faint_s1_test glass test runs/faint_s1 $DATA --json runs/faint_s1.json --no-pictures -q
    step faint_curves python benchmarks/validation_curves.py runs/ref_s0 runs/faint_s0 runs/ref_s1 runs/faint_s1 --window 3-20 ;;&
  lasnoprojection|all)  # both branches with GAS not projected (--gas ascent): the one GAS-only row at the baseline's pixel AUROC, now beside LAS, two seeds
    step noproj_s0_train glass train $DATA --out runs/noproj_s0 --textures $DTD --config $CONFIGS/gas_ascent.yaml -q
    step noproj_s0_test glass test runs/noproj_s0 $DATA --json runs/noproj_s0.json --no-pictures -q
    step noproj_s1_train glass train $DATA --out runs/noproj_s1 --textures $DTD --config $CONFIGS/gas_ascent.yaml --seed 1 -q
    step noproj_s1_test glass test runs/noproj_s1 $DATA --json runs/noproj_s1.json --no-pictures -q
    step noproj_curves python benchmarks/validation_curves.py runs/ref_s0 runs/noproj_s0 runs/ref_s1 runs/noproj_s1 --window 3-15 ;;&
  r1ref|all)  # GAS from r1 = 1 spacing (r2 = 2) again, with the current defaults (r1 = 1.5 was chosen with LAS copies of half the images), two seeds
    step r1ref_s0_train glass train $DATA --out runs/r1ref_s0 --textures $DTD --config $CONFIGS/r1_1.yaml -q
    step r1ref_s0_test glass test runs/r1ref_s0 $DATA --json runs/r1ref_s0.json --no-pictures -q
    step r1ref_s1_train glass train $DATA --out runs/r1ref_s1 --textures $DTD --config $CONFIGS/r1_1.yaml --seed 1 -q
    step r1ref_s1_test glass test runs/r1ref_s1 $DATA --json runs/r1ref_s1.json --no-pictures -q
    step r1ref_curves python benchmarks/validation_curves.py runs/ref_s0 runs/r1ref_s0 runs/ref_s1 runs/r1ref_s1 ;;&
  deeper|all)  # a stride-32 stage beside the stride-8 and stride-16 ones (--layers blocks.2,blocks.4,blocks.5): the baseline first, then GLASS
    step patchcore_l245 python benchmarks/patchcore_baseline.py $DATA --coreset 0.01 --layers blocks.2,blocks.4,blocks.5 --json runs/patchcore_l245.json
    step l245_s0_train glass train $DATA --out runs/l245_s0 --textures $DTD --config $CONFIGS/layers_245.yaml -q
    step l245_s0_test glass test runs/l245_s0 $DATA --json runs/l245_s0.json --no-pictures -q
    step l245_s1_train glass train $DATA --out runs/l245_s1 --textures $DTD --config $CONFIGS/layers_245.yaml --seed 1 -q
    step l245_s1_test glass test runs/l245_s1 $DATA --json runs/l245_s1.json --no-pictures -q
    step patchcore_l245_s1 python benchmarks/patchcore_baseline.py $DATA --coreset 0.01 --layers blocks.2,blocks.4,blocks.5 --seed 1 --json runs/patchcore_l245_s1.json
    step l245_curves python benchmarks/validation_curves.py runs/ref_s0 runs/l245_s0 runs/ref_s1 runs/l245_s1
    step region_interiors_l245 python benchmarks/region_interiors.py runs/l245_s0 $DATA --types uneven,fray,break ;;&
  interiors|all)  # an analysis on the test set (no choice made on it): D against the distance on the borders and interiors of the defect regions
    step region_interiors python benchmarks/region_interiors.py runs/ref_s0 runs/ref_s1 runs/t4_gas_ascent runs/t4_gas_full15 runs/ref_t4_las_only runs/faint_s0 runs/noproj_s0 $DATA --types uneven,fray,break ;;&
  weak|all)
    rm -rf runs/weak_mtd
    step weak_build glass make-weak-defects $DATA runs/weak_mtd --beta 0.1,0.3,0.5,0.7 --seed 0
    step weak_test glass suite runs/weak_mtd --out runs/weak_results --model runs/mtd_fast --no-pictures -q ;;&
  suite|all)  # runs/suite_root holds a link to MTD and `make_demo_dataset(runs/suite_root)` ("surface")
    step suite glass suite runs/suite_root --out runs/suite --textures $DTD -q
    step suite_resume glass suite runs/suite_root --out runs/suite --textures $DTD -q ;;&
  bench|all)
    step bench glass benchmark --json runs/bench.json
    step channels_last python benchmarks/channels_last.py
    step onnx_bench python benchmarks/onnx_vs_torch.py runs/mtd_fast ;;&
esac
