#!/usr/bin/env bash
# One call on a lent GPU that trains the default model and runs the device checks:
#
#   OUT=/some/empty/folder bash benchmarks/device_train.sh
#
#   1. the GPU tests (tests/test_cuda_graph.py, the kernel file's GPU tests) in the background: they
#      check correctness, so they may share the GPU with training; timings come last, on a quiet GPU
#   2. `cdx train vae`, then the text and mask collaborators at once, then `cdx train diffusers`,
#      `cdx train assemble`, and one `cdx run` on CUDA with the new bundle (each under --max-minutes)
#   3. benchmarks/device_check.sh's benchmarks (bench_kernel, bench_gpu) with the time that is left
#
# Brings back at most 8 files: train.log (every training stage's output), model.tar.part-?? (split
# tar of the bundle, the run's images, the GPU test log and junit; `cat model.tar.part-* | tar x`),
# and check/ (device_check.sh's five files).
#
# Environment: OUT, PYTHON (default python3), SESSION_BUDGET_S (default 570: the whole script),
# MASK (a label-map PNG for the `cdx run` check), DEVICE_CHECK_DRY_RUN=1 (CPU, tiny preset, seconds per
# stage: tests this script, measures nothing).
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/device_train_out}
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${SESSION_BUDGET_S:-570}
DRY=${DEVICE_CHECK_DRY_RUN:-0}
MASK=${MASK:-$REPO/.devcarry/29980.png}
START=$(date +%s)
W=$(mktemp -d "${TMPDIR:-/tmp}/device_train.XXXXXX")
PACK=$W/pack
mkdir -p "$OUT" "$PACK"
LOG=$OUT/train.log
: > "$LOG"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$REPO" || exit 2

say() { echo "device_train [$(( $(date +%s) - START )) s]: $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

if [ "$DRY" = "1" ]; then  # tiny and short: this checks the script, not the model
  PRESET=tiny DATA=600 WORKERS=2 DEV=cpu VAE_MIN=0.1 COL_MIN=0.15 DIF_MIN=0.1 VB=4 CB=8 DB=8 BENCH_S=120
  BARGS=""
else
  PRESET=small DATA=48000 WORKERS=12 DEV=cuda VAE_MIN=1.3 COL_MIN=3.0 DIF_MIN=1.0 VB=32 CB=256 DB=128 BENCH_S=170
  BARGS="--batches 4 --runs 2 --variants eager-fp32,torch-fp16-graph,torch-fp16,torch-fp16-graph-loop"
  BARGS+=",torch-fp16-graph-unfused,torch-fp16-graph-streams,torch-fp16-graph-cl"
fi
COMMON=(--work "$W" --preset "$PRESET" --data-size "$DATA" --data-workers "$WORKERS" --seed 0 --steps 1000000
        --device "$DEV")
TRAIN=("$PY" -m cdx train)

# stage_t MINUTES [EXTRA]: a hard timeout for a stage given MINUTES of training and EXTRA s (default 60)
# for what comes around it (making or loading the data, encoding latents, saving)
stage_t() { "$PY" -c "import sys; print(int(float(sys.argv[1]) * 60 + float(sys.argv[2])))" "$1" "${2:-60}"; }

say "repo $REPO, work $W, preset $PRESET, data $DATA, budget $BUDGET s"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" >> "$LOG" 2>&1

# 1. GPU tests, in the background
timeout --kill-after=10 200 "$PY" -m pytest -p no:cacheprovider --noconftest -q -rA \
  --junitxml="$PACK/gpu_tests.xml" tests/test_cuda_graph.py tests/test_kernel_collaborate.py -k "gpu or cuda" \
  > "$PACK/gpu_tests.log" 2>&1 &
TESTS=$!

# 2. training
ok=1
say "vae ($VAE_MIN min)"
timeout --kill-after=10 "$(stage_t "$VAE_MIN" 100)" "${TRAIN[@]}" vae "${COMMON[@]}" --batch "$VB" --lr 6e-4 \
  --warmup 200 --ema-decay 0.999 --crop 0 --max-minutes "$VAE_MIN" >> "$LOG" 2>&1 || ok=0
if [ "$ok" = "1" ]; then
  say "collaborators text and mask at once ($COL_MIN min)"
  pids=()
  for m in text mask; do
    timeout --kill-after=10 "$(stage_t "$COL_MIN")" "${TRAIN[@]}" collaborator --modality "$m" "${COMMON[@]}" \
      --batch "$CB" --lr 5e-4 --warmup 500 --ema-decay 0.999 --max-minutes "$COL_MIN" > "$W/collab_$m.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || ok=0; done
  cat "$W/collab_text.log" "$W/collab_mask.log" >> "$LOG"
fi
if [ "$ok" = "1" ]; then
  say "diffusers ($DIF_MIN min)"
  timeout --kill-after=10 "$(stage_t "$DIF_MIN")" "${TRAIN[@]}" diffusers "${COMMON[@]}" --batch "$DB" --lr 3e-4 \
    --warmup 100 --ema-decay 0.995 --max-minutes "$DIF_MIN" >> "$LOG" 2>&1 || ok=0
fi
if [ "$ok" = "1" ]; then
  say "assemble"
  timeout 120 "${TRAIN[@]}" assemble --work "$W" --preset "$PRESET" --out "$PACK/default_model" >> "$LOG" 2>&1 || ok=0
fi
if [ "$ok" = "1" ] && [ -f "$MASK" ]; then
  say "cdx run on $DEV with the new bundle"
  for seed in 0 1; do
    t0=$(date +%s.%N)
    timeout 120 "$PY" -m cdx run --checkpoint "$PACK/default_model" \
      --mask "$MASK" --text "This woman has blond hair and heavy lipstick. She is in her twenties." \
      --seed "$seed" --device "$DEV" --backend torch --out "$PACK/run_$seed.png" \
      --save-influence "$PACK/influence_$seed.png" >> "$LOG" 2>&1 || say "cdx run seed $seed failed"
    say "cdx run seed $seed: $("$PY" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t0") s wall"
  done
fi
say "training done (ok=$ok)"
wait "$TESTS"; say "GPU tests: exit $? ($(tail -n 1 "$PACK/gpu_tests.log"))"
cp "$LOG" "$PACK/train.log"
tar -C "$PACK" -cf - . | split -b 16700000 - "$OUT/model.tar.part-"
say "packed $(du -sh "$PACK" | cut -f1) into $(ls "$OUT" | grep -c model.tar.part) part(s)"

# 3. benchmarks on a quiet GPU
B=$(( $(left) - 10 ))
if [ "$DRY" = "1" ]; then B=$(( B < BENCH_S ? B : BENCH_S )); fi
say "device_check benchmarks, $B s"
STAGES="bench_kernel bench_gpu" CHECK_BUDGET_S=$B OUT="$OUT/check" BENCH_ARGS="$BARGS" \
  bash benchmarks/device_check.sh > "$W/check.out" 2>&1
say "device_check: exit $?"
rm -rf "$W"
say "done"
