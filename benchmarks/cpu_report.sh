#!/usr/bin/env bash
# Every CPU figure the README reports for the shipped default model, in one run:
# latency (torch vs ONNX Runtime), the paper's metrics (cdx eval), editing on synthetic faces, sample grids.
# Usage: OUT=results_dir bash benchmarks/cpu_report.sh   (from the repository root, cdx installed)
set -uo pipefail
OUT=${OUT:-benchmarks/results/cpu}
PY=${PY:-python}
CDX=${CDX:-cdx}
mkdir -p "$OUT" docs
export CDX_CACHE=${CDX_CACHE:-$OUT/.cache}
stamp() { echo "== $* $(date -u +%H:%M:%S)"; }
stamp bench
$CDX bench --backends torch,onnxruntime --steps 10 --runs 5 --mask examples/mask_long_hair.png \
    --json "$OUT/bench_default.json" --plot "$OUT/bench_default.png" 2>&1 | tail -16
stamp samples
$PY benchmarks/samples.py --out docs/samples.png --n 6 --steps 50
$CDX run --text "This man has red hair and a long beard. He is in his forties." --mask examples/mask_short_hair_glasses.png \
    --steps 50 --seed 3 --out docs/face.png --save-influence docs/influence.png
stamp eval
$CDX eval --n "${EVAL_N:-128}" --steps 50 --json "$OUT/eval.json" --markdown "$OUT/eval.md" 2>&1 | tail -12
stamp edit
$PY benchmarks/edit_eval.py --faces "${EDIT_FACES:-6}" --alphas 0.0,0.4,0.7,1.0 --json "$OUT/edit_eval.json" 2>&1 | tail -8
stamp done
