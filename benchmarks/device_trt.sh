#!/usr/bin/env bash
# For a machine with a CUDA GPU and TensorRT installed: build, verify, run (plain and graph-captured), refit
# and time the TensorRT engines of a tiny random model and of the shipped one, and run the TensorRT tests.
#
#   OUT=/some/empty/folder bash benchmarks/device_trt.sh
#
# Writes under $OUT: summary.json (every stage: exit code, seconds, last line), trt_times.json (per model:
# build, rebuild-when-current, verify errors, plain and captured step times, refit), tests.xml (junit of
# tests/test_tensorrt.py and tests/test_polygraphy.py) and device_trt.log (every stage's full output).
# Every stage runs under `timeout`, cut to what is left of TRT_BUDGET_S (default 600 s).
# DEVICE_CHECK_DRY_RUN=1, or a machine without TensorRT or a GPU: runs what it can (export and its
# verification through polygraphy, the one-line refusal to build, the tests, which skip saying why) and
# says in summary.json that nothing was measured. Environment: OUT, PYTHON, TRT_BUDGET_S.
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/device_trt_out}
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${TRT_BUDGET_S:-600}
DRY=${DEVICE_CHECK_DRY_RUN:-0}
START=$(date +%s)
W=$(mktemp -d "${TMPDIR:-/tmp}/device_trt.XXXXXX")
mkdir -p "$OUT"
: > "$OUT/device_trt.log"
: > "$W/stages.txt"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$REPO" || exit 2

say() { echo "device_trt [$(( $(date +%s) - START )) s]: $*" | tee -a "$OUT/device_trt.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) - 20 )); }  # 20 s kept for the summary
stage() {  # stage NAME MAX_SECONDS CMD...: run CMD under timeout; record "name rc seconds last-line"
  local name=$1 t=$2 l rc t0; shift 2
  l=$(left); (( t > l )) && t=$l
  if (( t < 10 )); then say "$name: skipped (time budget spent)"; echo "$name skipped 0 -" >> "$W/stages.txt"; return; fi
  say "== $name (timeout ${t}s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$t" "$@" > "$W/$name.log" 2>&1
  rc=$?
  { echo "---- $name: exit $rc after $(( $(date +%s) - t0 )) s"; cat "$W/$name.log"; } >> "$OUT/device_trt.log"
  echo "$name $rc $(( $(date +%s) - t0 )) $(tail -n 1 "$W/$name.log" | tr -s ' \t' ' ' | cut -c1-200)" >> "$W/stages.txt"
  say "$name: exit $rc"
}

"$PY" - > "$W/env.txt" 2>&1 <<'EOF'
import importlib.util, torch
from cdx.backends.trt import available
ok, why = available()
print("GPU" if torch.cuda.is_available() else "CPU", ok, why, sep="\t")
for m in ("tensorrt", "polygraphy", "cuda.bindings"):
    print(m, "installed" if importlib.util.find_spec(m.split(".")[0]) else "missing")
EOF
MEASURE=0
head -n 1 "$W/env.txt" | grep -q $'^GPU\tTrue' && [ "$DRY" != 1 ] && MEASURE=1
say "$(head -n 1 "$W/env.txt" | tr '\t' ' '); measuring: $MEASURE"

# A tiny random bundle and its export (verified against torch through polygraphy), and the shipped model's.
stage make_tiny 120 "$PY" -c "
import sys; from cdx.models.bundle import save_bundle; from cdx.models.config import preset
from cdx.models.random_init import random_model
save_bundle(random_model(preset('tiny'), seed=7), sys.argv[1])" "$W/tiny"
stage export_tiny 240 "$PY" -m cdx export --checkpoint "$W/tiny" --out "$W/tiny_onnx" --verify
stage export_shipped 300 "$PY" -m cdx export --out "$W/shipped_onnx" --verify

for model in tiny shipped; do
  args=(--onnx "$W/${model}_onnx" --out "$W/${model}_eng" --fp16 --vae-fp32 --refittable --batch 1,2,4)
  stage "build_$model" 420 "$PY" -m cdx build-engine "${args[@]}" --verify  # refuses in one line without TRT
  stage "rebuild_$model" 60 "$PY" -m cdx build-engine "${args[@]}"           # every plan current: skipped
done

# the tests that need TensorRT or a GPU (built engines, refit, captures); the rest run on any CPU
stage tests 300 "$PY" -m pytest -p no:cacheprovider -q -rA --junitxml="$OUT/tests.xml" \
  tests/test_tensorrt.py tests/test_polygraphy.py -k "tiny_engines or trt_build_run or trt_enqueue or trt_refit \
  or trt_engines_are or trt_step or cuda_python"

if [ "$MEASURE" = 1 ]; then
  stage time_engines 300 "$PY" - "$W" "$OUT/trt_times.json" <<'EOF'
"""Per model: the plain loop against the captured step (same engines, same request), and a refit."""
import json, sys, time
from pathlib import Path
import torch
from cdx.sampling.graph import capture as CG
from cdx.sampling.loop import draw_noise, sample
from cdx.backends.trt import TensorRTRunner
from cdx.export.onnx_export import random_inputs
from cdx.models.schedule import alphas_cumprod, linear_betas, make_table

W, results = Path(sys.argv[1]), {}

def cuda_ms(fn, reps=5):
    fn(); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record(); torch.cuda.synchronize()
    return start.elapsed_time(end) / reps

for model in ("tiny", "shipped"):
    eng, onnx = W / f"{model}_eng", W / f"{model}_onnx"
    if not (eng / "engines.json").is_file():
        results[model] = {"skipped": "no engines were built"}
        continue
    runner = TensorRTRunner(eng, onnx)
    names = [m.name for m in runner.cfg.modalities]
    table = make_table(alphas_cumprod(linear_betas()), 20, "ddim", 0.0)
    spec = runner.specs[f"{names[0]}_unet"]
    x_T, noise = (v.cuda() for v in draw_noise(0, 2, spec.inputs[0].shape[1:], table.num_steps))
    ctxs = []
    for n in names:
        enc = runner.specs[f"{n}_encoder"]
        feeds = random_inputs(enc, 2, torch.Generator().manual_seed(1))
        ctxs.append(runner.run(f"{n}_encoder", {k: v.cuda() for k, v in feeds.items()})["context"])
    ref = sample(runner, names, ctxs, x_T, noise, table)
    loop = CG.GraphedLoop(runner, CG.plan_loop(runner, names, ctxs, x_T, noise, table), mode="step")
    got = loop(x_T, noise, ctxs, table)
    err = float((got.z0 - ref.z0).abs().max() / ref.z0.abs().max())
    r = {"steps": table.num_steps, "batch": 2, "graph": type(loop.graph).__name__, "captured_vs_plain": err,
         "plain_loop_ms": cuda_ms(lambda: sample(runner, names, ctxs, x_T, noise, table)),
         "captured_loop_ms": cuda_ms(lambda: loop(x_T, noise, ctxs, table))}
    t0 = time.perf_counter()
    r["refit_weights"] = runner.refit_from_onnx(f"{names[0]}_unet", onnx / f"{names[0]}_unet.onnx")
    r["refit_s"] = time.perf_counter() - t0
    again = CG.GraphedLoop(runner, CG.plan_loop(runner, names, ctxs, x_T, noise, table), mode="step")
    r["after_refit_vs_before"] = float((again(x_T, noise, ctxs, table).z0 - got.z0).abs().max())
    results[model] = r
    print(model, json.dumps(r))
Path(sys.argv[2]).write_text(json.dumps(results, indent=1))
EOF
else
  say "time_engines: skipped (no TensorRT on a GPU here, or a dry run): nothing measured"
  echo "time_engines skipped 0 no TensorRT on a GPU, or a dry run" >> "$W/stages.txt"
fi

"$PY" - "$W/stages.txt" "$W/env.txt" "$OUT/summary.json" "$MEASURE" <<'EOF'
import json, sys
stages = []
for line in open(sys.argv[1]):
    name, rc, secs, last = (line.rstrip("\n").split(" ", 3) + [""])[:4]
    stages.append({"stage": name, "exit": rc, "seconds": int(secs), "last_line": last})
env = open(sys.argv[2]).read().splitlines()
json.dump({"environment": env, "measured": sys.argv[4] == "1", "stages": stages}, open(sys.argv[3], "w"), indent=1)
EOF
say "wrote $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$W"
