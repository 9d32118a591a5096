#!/bin/bash
# A GPU round of the mesh stage or of the splats in one device call, from the repository root, $OUT set:
#   WHEELS=<the packages the machine lacks> bash tools/gpu_round.sh mesh|splats [DEADLINE_S=540] [STEPS=30]
# WHEELS: a folder of wheels, or a .tar.xz of them unpacked into one folder (``site/``): half the
# size, for a call whose working tree leaves little of the 64 MiB a call may carry.
# 1. GPU and versions; installs the carried wheels and scorelift into $SITE (once per machine);
# 2. splats only: gsplat's first use, which compiles its CUDA kernels into $TORCH_EXTENSIONS_DIR
#    (timed; once per machine) -> $OUT/gsplat_build.log;
# 3. the set's tests on CUDA within 150 s (once per machine): tests/parts/test_mesh.py, or
#    test_splat.py, test_splat_cuda.py and test_gaussians.py -> $OUT/test_<set>.log;
# 4. the SD-2.1-base-shaped random pipeline, fp16, in $T/sd21 (once per machine) -> $OUT/build_sd.log;
# 5. tools/gpu_stage_timings.py --set <set> until DEADLINE_S after the start -> $OUT/<set>_stage.json, .log.
#    On a warm machine whose first call left configurations unfinished or failed, the tool runs
#    those (--done) and writes all rows to $OUT/<set>_stage.json; DONE=<an earlier call's
#    <set>_stage.json> carries the finished rows of an earlier machine.
set -u
t0=$(date +%s)
set_name=${1:?mesh or splats}
deadline=${2:-540}
steps=${3:-30}
: "${OUT:?set OUT}"
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.mesh-go/whl}
T=${T:-/tmp}  # where the per-machine state lives
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# The tree arrives without .git: the commit it was copied from is carried in .gpu-go/commit
# (`git rev-parse HEAD > .gpu-go/commit` before the call), so that run_info.json records it.
[ -f .gpu-go/commit ] && export SCORELIFT_GIT_COMMIT=$(cat .gpu-go/commit)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/call.log") 2>&1
el() { echo $(( $(date +%s) - t0 )); }

echo "== call start $(date -u +%FT%TZ)"
nvidia-smi -L 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
echo "cores $(nproc)"
if [ -f "$SITE/.installed" ]; then echo "reusing $SITE"; elif [ -f "$WHEELS" ]; then
  mkdir -p "$SITE" && tar -xJf "$WHEELS" -C "$SITE" --strip-components=1 \
    && $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE/.scorelift" . \
    && cp -r "$SITE/.scorelift/." "$SITE/" || { echo "install failed"; exit 3; }
  touch "$SITE/.installed"
else
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$WHEELS"/*.whl . \
    || { echo "install failed"; exit 3; }
  touch "$SITE/.installed"
fi
export PYTHONPATH=$SITE
$PY - <<'PYEOF' || { echo "imports failed"; exit 3; }
import torch, scorelift, diffusers, hydra, omegaconf, transformers, trimesh, plyfile
from scorelift.run_info import package_versions
print("scorelift from", scorelift.__file__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))
print(";".join(f"{k} {v}" for k, v in package_versions().items() if v))
PYEOF
echo "set-up done at $(el) s"

export TORCH_EXTENSIONS_DIR=$T/torch_extensions MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ "$set_name" = splats ]; then
  if [ -f $T/gsplat_built ]; then echo "== gsplat: built by an earlier call"; else
    echo "== gsplat's first use (compiles its kernels into $TORCH_EXTENSIONS_DIR, MAX_JOBS=$MAX_JOBS)"
    timeout -k 10 420 $PY - > "$OUT/gsplat_build.log" 2>&1 <<'PYEOF'
import time, torch
from scorelift.library.gsplat_backend import load_gsplat, gsplat_problems
print("problems:", gsplat_problems())
t = time.perf_counter()
fn, why = load_gsplat(torch.device("cuda"))
print(f"first use: {time.perf_counter() - t:.1f} s; usable: {bool(fn)}; {why}")
PYEOF
    rc=$?; tail -n 5 "$OUT/gsplat_build.log"; echo "gsplat build exit $rc at $(el) s"
    $PY -c "import time,torch; t=time.perf_counter(); from scorelift.library.gsplat_backend import load_gsplat; fn,why=load_gsplat(torch.device('cuda')); print(f'second process, cached build: {time.perf_counter()-t:.1f} s, usable {bool(fn)} {why}')" 2>&1 | tail -n 2
    du -sh $TORCH_EXTENSIONS_DIR 2>&1
    touch $T/gsplat_built
  fi
  tests="tests/parts/test_splat.py tests/parts/test_splat_cuda.py tests/parts/test_gaussians.py"
else
  tests="tests/parts/test_mesh.py"
fi

if [ -f $T/${set_name}_tests_done ]; then echo "== $set_name tests: done by an earlier call"; else
  echo "== $tests, at most 150 s"
  timeout -k 10 150 $PY -m pytest -q -n 0 -p no:cacheprovider -rA $tests > "$OUT/test_$set_name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/test_$set_name.log"
  echo "pytest exit $rc at $(el) s"
  touch $T/${set_name}_tests_done
fi

if [ -f $T/sd21/model_index.json ] && [ -f $T/sd21.done ]; then echo "== $T/sd21: built by an earlier call"; else
  echo "== building $T/sd21 (float16)"
  s=$(date +%s)
  rm -rf $T/sd21
  $PY tools/build_random_sd_pipeline.py $T/sd21 --dtype float16 > "$OUT/build_sd.log" 2>&1
  rc=$?
  cat "$OUT/build_sd.log" | tail -n 8
  echo "build exit $rc in $(( $(date +%s) - s )) s (at $(el) s)"
  [ -f $T/sd21/model_index.json ] && touch $T/sd21.done
  du -sh $T/sd21 2>&1
fi

left=$(( deadline - $(el) ))
json=${set_name}_stage.json
if [ $left -lt 30 ]; then echo "== $set_name timings: only $left s left, not started"; exit 0; fi
done_arg=""
[ -n "${DONE:-}" ] && [ -f "$DONE" ] && cp "$DONE" $T/$json  # an earlier machine's rows, carried
[ -f $T/$json ] && done_arg="--done $T/$json"
echo "== tools/gpu_stage_timings.py --set $set_name $done_arg, at most $left s"
timeout -k 15 $left $PY tools/gpu_stage_timings.py --set $set_name $done_arg --out "$OUT/$json" --sd $T/sd21 --steps $steps \
  --runs $T/${set_name}_stage_runs > "$OUT/${set_name}_stage.log" 2>&1
rc=$?
cut -c1-400 "$OUT/${set_name}_stage.log"
echo "$set_name timings exit $rc at $(el) s"
[ -f "$OUT/$json" ] && cp "$OUT/$json" $T/$json
echo "== call end, $(el) s"
