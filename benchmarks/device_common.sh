# Sourced by the CUDA GPU scripts (device_train.sh, device_diffusers.sh) after they set NAME (the log prefix
# and the default OUT folder's stem) and BUDGET_DEFAULT (seconds for the whole script). Sets REPO, OUT, PY,
# BUDGET, DRY, START, W (a fresh work folder) with W/pack, LOG (OUT/train.log); exports the Python settings
# and enters REPO. Functions: say (a timed log line), left (seconds of the budget left), stage_t (a stage's
# timeout), gpu_tests_start /
# gpu_tests_wait (the GPU tests in the background, their log and junit in W/pack), pack PREFIX (W/pack as a
# tar split into OUT/PREFIX.tar.part-?? pieces of at most 16.7 MB, for channels that copy files of 16 MiB at most).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$REPO/${NAME}_out}
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${SESSION_BUDGET_S:-$BUDGET_DEFAULT}
DRY=${DEVICE_CHECK_DRY_RUN:-0}
START=$(date +%s)
W=$(mktemp -d "${TMPDIR:-/tmp}/$NAME.XXXXXX")
PACK=$W/pack
mkdir -p "$OUT" "$PACK"
LOG=$OUT/train.log
: > "$LOG"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$REPO" || exit 2

say() { echo "$NAME [$(( $(date +%s) - START )) s]: $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# stage_t MINUTES [EXTRA]: a hard timeout for a stage given MINUTES of training and EXTRA s (default 60)
# for what comes around it (making or loading the data, encoding latents, saving)
stage_t() { "$PY" -c "import sys; print(int(float(sys.argv[1]) * 60 + float(sys.argv[2])))" "$1" "${2:-60}"; }

TESTS=""
gpu_tests_start() {  # $1: timeout in seconds
  timeout --kill-after=10 "$1" "$PY" -m pytest -p no:cacheprovider --noconftest -q -rA \
    --junitxml="$PACK/gpu_tests.xml" tests/test_cuda_graph.py tests/test_kernel_collaborate.py -k "gpu or cuda" \
    > "$PACK/gpu_tests.log" 2>&1 &
  TESTS=$!
}
gpu_tests_wait() {
  if [ -n "$TESTS" ]; then wait "$TESTS"; say "GPU tests: exit $? ($(tail -n 1 "$PACK/gpu_tests.log"))"; fi
}
pack() {
  cp "$LOG" "$PACK/train.log"
  tar -C "$PACK" -cf - . | split -b 16700000 - "$OUT/$1.tar.part-"
  say "packed $(du -sh "$PACK" | cut -f1) into $(ls "$OUT" | grep -c "$1.tar.part") part(s)"
}
