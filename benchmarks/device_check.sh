#!/usr/bin/env bash
# One script for a machine with a CUDA GPU: install cdx, run the GPU tests, run the benchmarks, write a summary.
#
#   OUT=/some/empty/folder bash benchmarks/device_check.sh
#
# Writes at most seven files under $OUT (few and small: easy to copy back from a remote machine):
#   summary.json, summary.md   what ran, how it ended, the environment, the benchmark goal
#   bench_gpu.json             the results of `cdx bench --variants` (every GPU variant side by side)
#   bench_kernel.json          benchmarks/bench_kernel.py
#   bench_fast_ddim50.json, bench_fast_fast.json   50 DDIM steps and the fast recipe (--fast), torch CUDA
#   device_check.log           every stage's full output
# Every stage runs under `timeout`, cut to what is left of CHECK_BUDGET_S (default 540 s), so one hang
# cannot outlast the budget (set it to the time you have on the machine). Without a CUDA device it says so, writes a summary saying so, and exits 0.
#
# Environment: OUT (default ./device_check_out), PYTHON (default python3), CHECK_BUDGET_S,
# BENCH_ARGS (extra `cdx bench --variants` arguments; the last of a repeated option wins),
# STAGES (default "install pytest bench_kernel bench_gpu bench_fast": the stages to run, in that order),
# DEVICE_CHECK_DRY_RUN=1 (run every stage on the CPU with the tiny preset, to test this script; it
# measures nothing about a GPU).
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/device_check_out}
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${CHECK_BUDGET_S:-540}
DRY=${DEVICE_CHECK_DRY_RUN:-0}
STAGES=" ${STAGES:-install pytest bench_kernel bench_gpu bench_fast} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
mkdir -p "$OUT"
: > "$OUT/device_check.log"
: > "$WORK/stages.txt"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # cdx imports from the tree even if the install fails
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$REPO" || exit 2

say() { echo "device_check: $*" | tee -a "$OUT/device_check.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
cap() {  # cap MAX: a stage timeout of at most MAX s that leaves 25 s for the summary
  local l; l=$(( $(left) - 25 ))
  echo $(( $1 < l ? $1 : l ))
}

# stage NAME TIMEOUT CMD...: run CMD under timeout, log it, record "name rc seconds"
stage() {
  local name=$1 t=$2; shift 2
  if (( t < 15 )); then
    say "$name: skipped (time budget spent)"
    echo "$name skipped 0" >> "$WORK/stages.txt"
    return
  fi
  say "== $name (timeout ${t}s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=15 "$t" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  { echo "---- $name: exit $rc after $(( $(date +%s) - t0 )) s"; cat "$WORK/$name.log"; } >> "$OUT/device_check.log"
  tail -n 15 "$WORK/$name.log"
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$WORK/stages.txt"
  say "$name: exit $rc"
}

# ------------------------------------------------------------------ environment
if [ -z "$PY" ]; then
  say "no python found; nothing was run"
  printf '{"status": "no python", "stages": []}\n' > "$OUT/summary.json"
  printf '# device_check\n\nno python found; nothing was run.\n' > "$OUT/summary.md"
  exit 2
fi
"$PY" - > "$WORK/environment.json" 2> "$WORK/environment.err" <<'EOF'
import json, shutil, subprocess
from importlib.metadata import version, PackageNotFoundError

def ver(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None

env = {"python": __import__("sys").version.split()[0]}
for name in ("torch", "triton", "cuda-python", "cuda-bindings", "tensorrt", "onnxruntime", "onnxruntime-gpu",
             "pytest", "setuptools", "numpy", "safetensors"):
    env[name] = ver(name)
try:
    import torch
    env["cuda_available"] = torch.cuda.is_available()
    env["torch_cuda"] = torch.version.cuda
    if env["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   compute_capability=f"{p.major}.{p.minor}", device_count=torch.cuda.device_count())
except Exception as exc:
    env["cuda_available"] = False
    env["torch_error"] = f"{type(exc).__name__}: {exc}"
for tool, args in (("nvcc", ["--version"]), ("nvidia-smi", ["-L"])):
    path = shutil.which(tool)
    if path:
        try:
            done = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
            env[tool] = done.stdout.strip().splitlines()[-1:]
        except Exception as exc:
            env[tool] = f"{type(exc).__name__}"
print(json.dumps(env, indent=1))
EOF
cat "$WORK/environment.json" >> "$OUT/device_check.log"
CUDA=$("$PY" -c "import json,sys; print(int(bool(json.load(open(sys.argv[1])).get('cuda_available'))))" \
       "$WORK/environment.json" 2>/dev/null || echo 0)

summarise() {  # summarise STATUS: summary.json and summary.md from what the stages left
  "$PY" - "$1" "$OUT" "$WORK" "$DRY" <<'EOF'
import datetime, json, re, sys, xml.etree.ElementTree as ET
from pathlib import Path

status, out, work, dry = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
env = json.loads((work / "environment.json").read_text() or "{}") if (work / "environment.json").is_file() else {}
stages = []
for line in (work / "stages.txt").read_text().splitlines():
    name, rc, secs = line.split()
    state = ("skipped" if rc == "skipped" else "ok" if rc == "0" else
             "timed out" if rc in ("124", "137") else "failed")
    stages.append({"stage": name, "status": state, "exit": None if rc == "skipped" else int(rc), "seconds": int(secs)})
summary = {"status": status, "dry_run": dry, "date": datetime.date.today().isoformat(), "environment": env,
           "stages": stages}
junit = work / "pytest.xml"
if junit.is_file():
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    summary["pytest"] = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    summary["pytest"]["failed_tests"] = [
        f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None]
bench = out / "bench_gpu.json"
if bench.is_file():
    rep = json.loads(bench.read_text())
    summary["bench_goal"] = rep.get("goal")
    summary["bench_variants"] = rep.get("variants")
    card = re.sub(r"[^a-z0-9]+", "-", str(env.get("gpu", "cpu")).lower()).strip("-")
    if not dry and status != "no CUDA device":
        summary["commit_results_as"] = f"benchmarks/results/{summary['date']}-{card}.json"
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

md = [f"# device_check: {status}", ""]
if dry:
    md += ["DRY RUN on the CPU (tiny preset): it tests the script, it measures nothing about a GPU.", ""]
md += [f"- GPU: {env.get('gpu', 'none')}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); "
       f"triton {env.get('triton')}; cuda-python {env.get('cuda-python') or env.get('cuda-bindings')}; "
       f"tensorrt {env.get('tensorrt')}", ""]
md += ["| stage | status | exit | seconds |", "|---|---|---|---|"]
md += [f"| {s['stage']} | {s['status']} | {s['exit']} | {s['seconds']} |" for s in stages]
if "pytest" in summary:
    p = summary["pytest"]
    md += ["", f"pytest: {p['tests']} tests, {p['failures']} failures, {p['errors']} errors, {p['skipped']} skipped"]
    md += [f"- FAILED {t}" for t in p["failed_tests"]]
bmd = out / "bench_gpu.md"
if bmd.is_file():
    md += ["", bmd.read_text()]
    bmd.unlink()  # folded in here: fewer files to copy back
if "commit_results_as" in summary:
    md += ["", f"Commit {out / 'bench_gpu.json'} as `{summary['commit_results_as']}`."]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
}

if [ "$CUDA" != "1" ] && [ "$DRY" != "1" ]; then
  say "no CUDA device (torch.cuda.is_available() is False): nothing was installed, tested or measured"
  summarise "no CUDA device"
  rm -rf "$WORK"
  exit 0
fi
if [ "$CUDA" != "1" ]; then
  say "DRY RUN on the CPU: the stages run with the tiny preset; no GPU numbers come out of this"
fi

# ------------------------------------------------------------------ stages
if [ "$DRY" != "1" ] && want install; then
  # No network there: no build isolation, no index; setuptools must already be in this python.
  stage install "$(cap 90)" "$PY" -m pip install --no-deps --no-build-isolation --no-index -q -e "$REPO"
fi

if ! want pytest; then
  :
elif "$PY" -c "import pytest" 2>/dev/null; then
  # The GPU tests: every test of test_cuda_graph.py (its CPU tests are quick) and the kernel file's GPU ones.
  # --noconftest: the GPU tests need none of conftest's fixtures, and its imports need no more packages.
  stage pytest "$(cap 180)" "$PY" -m pytest -p no:cacheprovider --noconftest -q -rs \
    --junitxml="$WORK/pytest.xml" tests/test_cuda_graph.py tests/test_kernel_collaborate.py \
    tests/test_group_norm_silu.py tests/test_paired_unet.py -k "gpu or cuda"
else
  say "pytest is not installed: the GPU tests did not run"
  echo "pytest skipped 0" >> "$WORK/stages.txt"
fi

if want bench_kernel && [ -f benchmarks/bench_kernel.py ]; then
  if [ "$DRY" = "1" ]; then
    stage bench_kernel "$(cap 60)" "$PY" benchmarks/bench_kernel.py --cpu --json "$OUT/bench_kernel.json"
  else
    stage bench_kernel "$(cap 90)" "$PY" benchmarks/bench_kernel.py --json "$OUT/bench_kernel.json"
  fi
fi

if ! want bench_gpu; then
  :
else
  BENCH=("$PY" -m cdx bench --json "$OUT/bench_gpu.json" --markdown "$OUT/bench_gpu.md")
  if [ "$DRY" = "1" ]; then
    T=$(cap 300)
    stage bench_gpu "$T" "${BENCH[@]}" --budget-s $(( T - 40 )) --device cpu --preset tiny --batch 1 --steps 2 \
      --runs 1 --variants eager-fp32,torch-fp16-graph,tensorrt-fp16 ${BENCH_ARGS:-}
  else
    T=$(cap 330)
    stage bench_gpu "$T" "${BENCH[@]}" --budget-s $(( T - 60 )) --variants default --preset official-256 \
      --batch 4,1 --steps 50 --runs 3 ${BENCH_ARGS:-}
  fi
fi

# The fast recipe (--fast) beside 50 DDIM steps on the torch CUDA path, official-256 batch 4, in one run
# (each configuration in its own process: `cdx bench --isolate`, the default)
if want bench_fast; then
  for cfg in ddim50 fast; do
    if [ "$cfg" = fast ]; then FLAGS=(--fast); elif [ "$DRY" = "1" ]; then FLAGS=(--steps 4); else FLAGS=(--steps 50); fi
    if [ "$DRY" = "1" ]; then
      stage "bench_fast_$cfg" "$(cap 150)" "$PY" -m cdx bench --backends torch --device cpu --preset tiny \
        --stages end_to_end --batch 1 --runs 1 "${FLAGS[@]}" --json "$OUT/bench_fast_$cfg.json"
    else
      stage "bench_fast_$cfg" "$(cap 150)" "$PY" -m cdx bench --backends torch --device cuda \
        --preset official-256 --stages end_to_end --batch 4 --runs 3 "${FLAGS[@]}" --json "$OUT/bench_fast_$cfg.json"
    fi
  done
fi

FAILED=$(awk '$2 != "0" && $2 != "skipped"' "$WORK/stages.txt" | wc -l)
if [ "$FAILED" = "0" ]; then STATUS=ok; else STATUS="$FAILED stage(s) failed"; fi
summarise "$STATUS"
rm -rf "$WORK"
[ "$FAILED" = "0" ]
