#!/usr/bin/env bash
# One command on a CUDA GPU machine that re-trains a bundle's dynamic diffusers (Algorithm 1, collaborators frozen)
# in several variants side by side, scores each on held-out conditions, and runs the GPU tests:
#
#   OUT=/some/empty/folder bash benchmarks/device_diffusers.sh
#
#   1. the GPU tests (tests/test_cuda_graph.py, the kernel file's GPU tests) in the background
#   2. INIT_FROM's autoencoder encodes DATA new faces; its collaborators are taken as they are (0 steps)
#   3. per variant NAME:P, `cdx train diffusers --init-from INIT_FROM --snr-weight-power P` for DIF_MIN
#      minutes, all variants at once on the one GPU, each then assembled with ASM_ARGS
#   4. `cdx eval --n EVAL_N --seed EVAL_SEED` on CUDA: INIT_FROM with OLD_METHODS, each variant with
#      NEW_METHODS (in turn), JSONs eval_<name>.json in OUT
#
# Brings back train.log, eval_*.json and bundles.tar.part-?? (per variant its bundle less the files equal to
# INIT_FROM's, which same_as_init_from.txt lists; the GPU test log and junit; `cat bundles.tar.part-* | tar x`).
#
# Environment: OUT, PYTHON (default python3), SESSION_BUDGET_S (default 540: the whole script), INIT_FROM
# (default the shipped model), DATA, DATA_SEED, DIF_MIN, DB, DIF_LR, VARIANTS (default "p0:0 p1:1"),
# COL_ARGS (extra arguments of the 0-step collaborator stages; default none: their record says 0 steps, and
# the bundle's own record of the collaborators travels in the stage's init_stage),
# ASM_ARGS (default the shipped model's sampling), EVAL_N, EVAL_SEED, OLD_METHODS, NEW_METHODS,
# DEVICE_CHECK_DRY_RUN=1 (CPU, a few hundred faces, seconds per stage: tests this script, measures nothing).
set -u

NAME=device_diffusers BUDGET_DEFAULT=540
# shellcheck source=benchmarks/device_common.sh
source "$(dirname "$0")/device_common.sh"

if [ "$DRY" = "1" ]; then  # small and short: this checks the script, not the model
  D=(400 2 cpu 0.1 8 8) TESTS_ON=0
else
  D=(64000 12 cuda 3.5 256 256) TESTS_ON=1
fi
DATA=${DATA:-${D[0]}} WORKERS=${D[1]} DEV=${D[2]} DIF_MIN=${DIF_MIN:-${D[3]}} DB=${DB:-${D[4]}}
EVAL_N=${EVAL_N:-${D[5]}} DIF_LR=${DIF_LR:-2e-4} DATA_SEED=${DATA_SEED:-5678} EVAL_SEED=${EVAL_SEED:-1}
INIT_FROM=${INIT_FROM:-$REPO/cdx/data/default_model} VARIANTS=${VARIANTS:-p0:0 p1:1}
OLD_METHODS=${OLD_METHODS:-collaborative,composable,no_temporal}
NEW_METHODS=${NEW_METHODS:-collaborative,no_temporal}
read -r -a COL_EXTRA <<< "${COL_ARGS-}"
read -r -a ASM_EXTRA <<< "${ASM_ARGS:---eta 1.0 --shaping --shaping-scale 16 --guidance text=4}"
for v in $VARIANTS; do  # NAME:P, NAME not "old" (the original's eval) nor "base" (the shared work folder)
  if [[ "$v" != ?*:?* || "$v" == *:*:* || "$v" == old:* || "$v" == base:* ]]; then
    echo "device_diffusers: bad variant '$v' (want NAME:P)" >&2; rm -rf "$W"; exit 2
  fi
done
COMMON=(--preset small --data-size "$DATA" --data-seed "$DATA_SEED" --data-workers "$WORKERS" --seed 0
        --device "$DEV" --init-from "$INIT_FROM")
TRAIN=("$PY" -m cdx train)

say "repo $REPO, work $W, data $DATA (seed $DATA_SEED), init $INIT_FROM, variants '$VARIANTS', budget $BUDGET s"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" >> "$LOG" 2>&1

# 1. GPU tests, in the background (they check correctness, so they may share the GPU)
if [ "$TESTS_ON" = "1" ]; then gpu_tests_start 240; fi

# 2. the data, encoded by INIT_FROM's autoencoder; INIT_FROM's collaborators as they are
ok=1 bad=0  # ok: the shared stages ran (else nothing more can); bad: a variant's stage or an eval failed
say "encoding $DATA faces"
timeout --kill-after=10 200 "${TRAIN[@]}" vae --work "$W/base" "${COMMON[@]}" --steps 0 >> "$LOG" 2>&1 || ok=0
if [ "$ok" = "1" ]; then
  say "collaborators (0 steps: INIT_FROM's weights)"
  for m in text mask; do
    timeout --kill-after=10 120 "${TRAIN[@]}" collaborator --modality "$m" --work "$W/base" "${COMMON[@]}" \
      --steps 0 "${COL_EXTRA[@]}" >> "$LOG" 2>&1 || ok=0
  done
fi

# 3. the diffuser variants, side by side
if [ "$ok" = "1" ]; then
  # leave each variant 60 s for its start, assembly and eval and the packing 30 s
  NV=$(wc -w <<< "$VARIANTS")
  CAP=$("$PY" -c "import sys; print(max(0.1, round((int(sys.argv[1]) - 90 - 60 * int(sys.argv[2])) / 60, 2)))" \
        "$(left)" "$NV")
  DIF_MIN=$("$PY" -c "import sys; print(min(float(sys.argv[1]), float(sys.argv[2])))" "$DIF_MIN" "$CAP")
  say "diffusers: $VARIANTS ($DIF_MIN min each, batch $DB, lr $DIF_LR, all at once)"
  pids=() names=()
  for v in $VARIANTS; do
    name=${v%%:*} p=${v#*:}
    cp -al "$W/base" "$W/$name"
    timeout --kill-after=10 "$(stage_t "$DIF_MIN" 90)" \
      "${TRAIN[@]}" diffusers --work "$W/$name" "${COMMON[@]}" --steps 1000000 --batch "$DB" --lr "$DIF_LR" \
      --warmup 100 --ema-decay 0.995 --max-minutes "$DIF_MIN" --snr-weight-power "$p" > "$W/dif_$name.log" 2>&1 &
    pids+=($!) names+=("$name")
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      timeout 120 "${TRAIN[@]}" assemble --work "$W/${names[$i]}" --preset small --out "$PACK/${names[$i]}" \
        "${ASM_EXTRA[@]}" >> "$W/dif_${names[$i]}.log" 2>&1 || { say "assemble ${names[$i]} failed"; bad=1; }
    else
      say "diffusers ${names[$i]} failed"; bad=1
    fi
    grep -v "^diffusers step" "$W/dif_${names[$i]}.log" | tail -n 5 >> "$LOG"
  done
fi

# 4. held-out evaluation, the old bundle and every variant, one after another: side by side on the H200
#    machine four evals generated their images in 19 s, then all sat in the CPU-side scoring past 178 s (each
#    process's threads on all 16 cores); in turn the four took 108 s
if [ "$ok" = "1" ]; then
  say "eval n $EVAL_N seed $EVAL_SEED"
  for b in $(for v in $VARIANTS; do echo "${v%%:*}"; done) old; do  # the variants first: they are the news
    B=$PACK/$b M=$NEW_METHODS
    [ "$b" = old ] && B=$INIT_FROM M=$OLD_METHODS
    [ -f "$B/bundle.json" ] || continue
    T=$(( $(left) - 25 ))
    if (( T < 30 )); then say "eval $b skipped (time budget spent)"; continue; fi
    timeout --kill-after=10 "$T" "$PY" -m cdx eval --checkpoint "$B" --backend torch --device "$DEV" \
      --n "$EVAL_N" --seed "$EVAL_SEED" --n-ref 512 --batch "$EVAL_N" --methods "$M" \
      --json "$OUT/eval_$b.json" > "$W/eval_$b.log" 2>&1 || { say "eval $b failed"; bad=1; }
    echo "== eval $b" >> "$LOG"; grep -v "it/s\]\|batch/s\]" "$W/eval_$b.log" | tail -n 12 >> "$LOG"
  done
fi
gpu_tests_wait
for v in $VARIANTS; do  # only what differs from INIT_FROM travels back; the rest is listed, to copy from it
  d=$PACK/${v%%:*}
  [ -d "$d" ] || continue
  for f in "$d"/*.safetensors; do
    if cmp -s "$f" "$INIT_FROM/$(basename "$f")"; then basename "$f" >> "$d/same_as_init_from.txt"; rm "$f"; fi
  done
done
pack bundles
rm -rf "$W"
say "done (ok=$ok, failures: $bad)"
[ "$ok" = "1" ] && [ "$bad" = "0" ]
