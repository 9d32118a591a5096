#!/bin/bash
# The GPU figures of docs/cpu-and-gpu.md ("Step times"), on any CUDA machine, one step after another
# (about 10 minutes on an H100, most of it nerfacc's first build):
#
#   bash tools/gpu_figures.sh <out dir> [steps per timed run, default 25]
#
# Run it from the repository root in an environment with scorelift installed with its test extra
# (`pip install -e '.[test]'`, after the torch build that matches the machine's CUDA driver). It
# writes into <out dir>:
#   gpu.txt                    the GPU's name, driver and memory (nvidia-smi)
#   nerfacc_test.log           nerfacc's CUDA compositing against the pure-PyTorch path; the test
#                              builds nerfacc's CUDA extension on first use (a few minutes, once;
#                              it needs the CUDA toolkit's nvcc)
#   method_timings.json, .log  median s/it and peak CUDA memory of every method, one run at a time
#                              (tools/gpu_method_timings.py), on the shapes prior and on a pipeline
#                              with Stable Diffusion 2.1-base's shapes and random fp16 weights
#                              (tools/build_random_sd_pipeline.py; its times and memory are real,
#                              its images are not). The renderer's backend is `auto`: nerfacc when
#                              it is installed, else the PyTorch path.
#   hash_grid_tests.log        the hash-grid encoding backends' agreement tests, on CUDA
#   hash_grid_bench.json, .log hash-grid encoding timings, Triton against PyTorch (and tinycudann
#                              when importable; tools/bench_hash_grid.py)
#   status.txt                 each step's exit status; a failed step does not stop the others
# The random SD pipeline and the timed runs go to <out dir>/scratch (several GB), deleted at the end.
set -u
out=${1:?usage: bash tools/gpu_figures.sh <out dir> [steps per timed run]}
steps=${2:-25}
[ -f tools/gpu_method_timings.py ] || { echo "run this from the repository root" >&2; exit 2; }
command -v nvidia-smi > /dev/null || { echo "nvidia-smi not found: this script needs a CUDA machine" >&2; exit 2; }
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "torch sees no CUDA device" >&2; exit 2; }
mkdir -p "$out/scratch" && out=$(cd "$out" && pwd) || exit 2
export PYTHONUNBUFFERED=1

step() {  # step <name> <command...>: output to <name>.log, exit status to status.txt
  local name=$1; shift
  echo "== $name"
  "$@" > "$out/$name.log" 2>&1
  echo "$name: exit $?" | tee -a "$out/status.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt"
step nerfacc_test python -m pytest -q -rs tests/parts/test_renderer.py -k nerfacc
step sd_pipeline_build python tools/build_random_sd_pipeline.py "$out/scratch/sd21-random" --dtype float16
step method_timings python tools/gpu_method_timings.py --out "$out/method_timings.json" \
  --sd "$out/scratch/sd21-random" --steps "$steps" --runs "$out/scratch/runs"
step hash_grid_tests python -m pytest -q -rs tests/parts/test_hash_encoding_backends.py tests/parts/test_hash_grid.py
step hash_grid_bench python tools/bench_hash_grid.py --json "$out/hash_grid_bench.json"
rm -rf "$out/scratch"
tail -n 12 "$out/method_timings.log"
