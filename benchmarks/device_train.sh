#!/usr/bin/env bash
# One command on a CUDA GPU machine that trains the default model and runs the device checks:
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
# Fine-tuning a trained bundle instead of training from scratch:
#   INIT_FROM=BUNDLE   every stage starts from BUNDLE's weights (`--init-from`); the vae stage only
#                      re-encodes the latents with BUNDLE's autoencoder
#   DATA, DATA_SEED    the synthetic training set's size and seed
#   VAE_MIN COL_MIN DIF_MIN CB DB COL_LR DIF_LR   each stage's minutes, batch and learning rate
#   COL_ARGS, ASM_ARGS extra `cdx train collaborator` / `cdx train assemble` arguments
#   EVAL_N             after assembling, `cdx eval --n EVAL_N --seed 1` (held-out conditions) on CUDA of
#                      the new bundle and of INIT_FROM (or the shipped model), JSONs in OUT (0: none)
#   RUN_CHECK=0, BENCH=0   skip the `cdx run` check / the benchmarks
set -u

NAME=device_train BUDGET_DEFAULT=570
# shellcheck source=benchmarks/device_common.sh
source "$(dirname "$0")/device_common.sh"
MASK=${MASK:-$REPO/.devcarry/29980.png}

if [ "$DRY" = "1" ]; then  # tiny and short: this checks the script, not the model
  PRESET=tiny D=(600 2 cpu 0.1 0.15 0.1 4 8 8) BENCH_S=120 EVAL_DEV=cpu
  BARGS=""
else
  PRESET=small D=(48000 12 cuda 1.3 3.0 1.0 32 256 128) BENCH_S=170 EVAL_DEV=cuda
  BARGS="--batch 4 --runs 2 --variants eager-fp32,torch-fp16-graph,torch-fp16,torch-fp16-graph-loop"
  BARGS+=",torch-fp16-graph-unfused,torch-fp16-graph-streams,torch-fp16-graph-cl"
fi
DATA=${DATA:-${D[0]}} WORKERS=${D[1]} DEV=${D[2]} VAE_MIN=${VAE_MIN:-${D[3]}} COL_MIN=${COL_MIN:-${D[4]}}
DIF_MIN=${DIF_MIN:-${D[5]}} VB=${D[6]} CB=${CB:-${D[7]}} DB=${DB:-${D[8]}}
COL_LR=${COL_LR:-5e-4} DIF_LR=${DIF_LR:-3e-4} DATA_SEED=${DATA_SEED:-1234}
INIT_FROM=${INIT_FROM:-} EVAL_N=${EVAL_N:-0} RUN_CHECK=${RUN_CHECK:-1} BENCH=${BENCH:-1}
read -r -a COL_EXTRA <<< "${COL_ARGS:-}"
read -r -a ASM_EXTRA <<< "${ASM_ARGS:-}"
COMMON=(--work "$W" --preset "$PRESET" --data-size "$DATA" --data-seed "$DATA_SEED" --data-workers "$WORKERS"
        --seed 0 --steps 1000000 --device "$DEV")
VAE_ARGS=(--batch "$VB" --lr 6e-4 --warmup 200 --ema-decay 0.999 --crop 0 --max-minutes "$VAE_MIN")
if [ -n "$INIT_FROM" ]; then
  COMMON+=(--init-from "$INIT_FROM")
  VAE_ARGS=(--steps 0)  # after COMMON's --steps: the bundle's autoencoder as it is, the latents re-encoded
fi
TRAIN=("$PY" -m cdx train)


say "repo $REPO, work $W, preset $PRESET, data $DATA (seed $DATA_SEED), init ${INIT_FROM:-none}, budget $BUDGET s"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" >> "$LOG" 2>&1

# 1. GPU tests, in the background
gpu_tests_start 200

# 2. training
ok=1
say "vae (${INIT_FROM:+re-encoding only, }$VAE_MIN min)"
timeout --kill-after=10 "$(stage_t "$VAE_MIN" 100)" "${TRAIN[@]}" vae "${COMMON[@]}" "${VAE_ARGS[@]}" \
  >> "$LOG" 2>&1 || ok=0
if [ "$ok" = "1" ]; then
  say "collaborators text and mask at once ($COL_MIN min)"
  pids=()
  for m in text mask; do
    timeout --kill-after=10 "$(stage_t "$COL_MIN")" "${TRAIN[@]}" collaborator --modality "$m" "${COMMON[@]}" \
      --batch "$CB" --lr "$COL_LR" --warmup 500 --ema-decay 0.999 --max-minutes "$COL_MIN" "${COL_EXTRA[@]}" \
      > "$W/collab_$m.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || ok=0; done
  cat "$W/collab_text.log" "$W/collab_mask.log" >> "$LOG"
fi
if [ "$ok" = "1" ]; then
  say "diffusers ($DIF_MIN min)"
  timeout --kill-after=10 "$(stage_t "$DIF_MIN")" "${TRAIN[@]}" diffusers "${COMMON[@]}" --batch "$DB" --lr "$DIF_LR" \
    --warmup 100 --ema-decay 0.995 --max-minutes "$DIF_MIN" >> "$LOG" 2>&1 || ok=0
fi
if [ "$ok" = "1" ]; then
  say "assemble"
  timeout 120 "${TRAIN[@]}" assemble --work "$W" --preset "$PRESET" --out "$PACK/default_model" "${ASM_EXTRA[@]}" \
    >> "$LOG" 2>&1 || ok=0
fi
if [ "$ok" = "1" ] && [ "$EVAL_N" -gt 0 ]; then  # held-out conditions (seed 1): the new bundle, then the old
  for which in new old; do
    B=$PACK/default_model; [ "$which" = old ] && B=${INIT_FROM:-$REPO/cdx/data/default_model}
    if (( $(left) < 60 )); then say "eval $which: skipped (time budget spent)"; continue; fi
    say "eval $which ($B), n $EVAL_N"
    timeout --kill-after=10 $(( $(left) - 30 )) "$PY" -m cdx eval --checkpoint "$B" --backend torch \
      --device "$EVAL_DEV" --n "$EVAL_N" --seed 1 --n-ref 512 --batch "$EVAL_N" --json "$OUT/eval_$which.json" \
      >> "$LOG" 2>&1 || say "eval $which failed"
  done
fi
if [ "$ok" = "1" ] && [ "$RUN_CHECK" = "1" ] && [ -f "$MASK" ]; then
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
gpu_tests_wait
pack model

# 3. benchmarks on a quiet GPU
B=$(( $(left) - 10 ))
if [ "$BENCH" != "1" ]; then B=0; fi
if [ "$DRY" = "1" ]; then B=$(( B < BENCH_S ? B : BENCH_S )); fi
if (( B >= 60 )); then
  say "device_check benchmarks, $B s"
  STAGES="bench_kernel bench_gpu" CHECK_BUDGET_S=$B OUT="$OUT/check" BENCH_ARGS="$BARGS" \
    bash benchmarks/device_check.sh > "$W/check.out" 2>&1
  say "device_check: exit $?"
fi
rm -rf "$W"
say "done"
