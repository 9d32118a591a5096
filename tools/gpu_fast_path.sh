#!/bin/bash
# The fast path's figures on any CUDA machine, in one go (about 8 minutes on an H200):
#
#   bash tools/gpu_fast_path.sh <out dir> [before checkout] [what: tests,speed,before,off,profile,hash] [seconds]
#
# Run it from the repository root with scorelift importable (installed, or on PYTHONPATH). It
# builds the SD-2.1-base-shaped random fp16 pipeline (tools/build_random_sd_pipeline.py, several
# GB) in $SCRATCH (default /tmp/scorelift-gpu-scratch, removed at the end), then, for each item
# of <what> (default: all), in this order:
#   tests    pytest tests/run/test_fast_path.py on CUDA (graphed UNet == eager, device draws, repeats)
#            (tests run first: the timings of a broken fast path mean nothing)
#   speed    tools/gpu_speed_benchmark.py, this checkout            -> speed_after.json
#   before   the same with <before checkout>'s launch.py (PYTHONPATH=$BEFORE_PYTHONPATH if set)
#                                                                   -> speed_before.json
#   off      this checkout with fast_path=false                     -> speed_off.json
#   profile  tools/gpu_step_profile.py for each method              -> profile_<method>.json
#   hash     tests/parts/test_hash_encoding_backends.py and tools/bench_hash_grid.py (tinycudann if importable)
# Each step's exit status goes to status.txt; a failed step does not stop the others. With
# [seconds], every step is cut short (exit 124) once that many seconds have passed since the start.
set -u
out=${1:?usage: bash tools/gpu_fast_path.sh <out dir> [before checkout] [what]}
before=${2:-}
what=${3:-tests,speed,before,off,profile,hash}
deadline=$(( $(date +%s) + ${4:-86400} ))
[ -f tools/gpu_speed_benchmark.py ] || { echo "run this from the repository root" >&2; exit 2; }
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "torch sees no CUDA device" >&2; exit 2; }
scratch=${SCRATCH:-/tmp/scorelift-gpu-scratch}
mkdir -p "$out" "$scratch" && out=$(cd "$out" && pwd) || exit 2
export PYTHONUNBUFFERED=1
sd=$scratch/sd21
want() { [[ ",$what," == *",$1,"* ]]; }
step() {  # step <name> <command...>: output to <name>.log, exit status to status.txt
  local name=$1; shift
  local left=$(( deadline - $(date +%s) ))
  [ $left -gt 5 ] || { echo "$name: not run (out of time)" | tee -a "$out/status.txt"; return; }
  echo "== $name ($(date +%T), ${left} s left)"
  timeout -k 10 $left "$@" > "$out/$name.log" 2>&1
  echo "$name: exit $?" | tee -a "$out/status.txt"
  tail -n 4 "$out/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
step sd_build python tools/build_random_sd_pipeline.py "$sd" --dtype float16
want tests && step tests python -m pytest -q -rs tests/run/test_fast_path.py
want speed && step speed python tools/gpu_speed_benchmark.py --sd "$sd" --out "$out/speed_after.json" --runs "$scratch/runs"
if want before && [ -n "$before" ]; then
  step before env PYTHONPATH="${BEFORE_PYTHONPATH:-$before}" python tools/gpu_speed_benchmark.py --repo "$before" \
    --sd "$sd" --out "$out/speed_before.json" --runs "$scratch/runs"
  python tools/gpu_speed_benchmark.py --compare "$out/speed_before.json" "$out/speed_after.json" > "$out/compare.txt" 2>&1
fi
want off && step off python tools/gpu_speed_benchmark.py --sd "$sd" --out "$out/speed_off.json" --runs "$scratch/runs" --set fast_path=false
if want profile; then
  prior="prior=stable-diffusion prior.model=$sd"
  step profile_sjc python tools/gpu_step_profile.py --out "$out/profile_sjc.json" system=sjc guidance=paas $prior
  step profile_sds python tools/gpu_step_profile.py --out "$out/profile_sds.json" system=dreamfusion guidance=sds $prior
  step profile_pd python tools/gpu_step_profile.py --out "$out/profile_prolificdreamer.json" system=prolificdreamer $prior
  step profile_shapes python tools/gpu_step_profile.py --out "$out/profile_shapes_sjc.json" system=sjc guidance=paas
fi
if want hash; then
  step hash_tests python -m pytest -q -rs tests/parts/test_hash_encoding_backends.py
  step hash_bench python tools/bench_hash_grid.py --json "$out/hash_grid_bench.json"
fi
rm -rf "$scratch"
for name in speed before off; do [ -f "$out/$name.log" ] && { echo "== $name"; tail -n 7 "$out/$name.log"; }; done
grep -h "GPU busy" "$out"/profile_*.log 2>/dev/null
cat "$out/compare.txt" 2>/dev/null
cat "$out/status.txt"
