#!/bin/bash
# The mesh stage's GPU round in one device call, from the repository root, $OUT set:
#   WHEELS=<folder of the wheels the machine lacks> bash tools/gpu_mesh_round.sh [DEADLINE_S=540] [STEPS=30]
# 1. GPU and versions; installs the carried wheels and scorelift into $SITE (once per machine);
# 2. tests/parts/test_mesh.py within 120 s -> $OUT/test_mesh.log (once per machine);
# 3. the SD-2.1-base-shaped random pipeline, fp16, in $T/sd21 (once per machine) -> $OUT/build_sd.log;
# 4. tools/gpu_mesh_stage.py until DEADLINE_S after the start -> $OUT/mesh_stage.json, .log.
#    On a warm machine whose first call left configurations unfinished, the tool runs the rest
#    (--done) and writes all rows to $OUT/mesh_stage.json.
set -u
t0=$(date +%s)
deadline=${1:-540}
steps=${2:-30}
: "${OUT:?set OUT}"
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.mesh-go/whl}
T=${T:-/tmp}  # where the per-machine state lives
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
exec > >(tee -a "$OUT/call.log") 2>&1
el() { echo $(( $(date +%s) - t0 )); }

echo "== call start $(date -u +%FT%TZ)"
nvidia-smi -L 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
echo "cores $(nproc)"
if [ -f "$SITE/.installed" ]; then echo "reusing $SITE"; else
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$WHEELS"/*.whl . \
    || { echo "install failed"; exit 3; }
  touch "$SITE/.installed"
fi
export PYTHONPATH=$SITE
$PY - <<'PYEOF' || { echo "imports failed"; exit 3; }
import torch, scorelift, diffusers, hydra, omegaconf, transformers, trimesh
from scorelift.run_info import package_versions
print("scorelift from", scorelift.__file__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))
print(";".join(f"{k} {v}" for k, v in package_versions().items() if v))
PYEOF
echo "set-up done at $(el) s"

if [ -f $T/mesh_tests_done ]; then echo "== test_mesh: done by an earlier call"; else
  echo "== tests/parts/test_mesh.py, at most 120 s"
  timeout -k 10 120 $PY -m pytest -q -n 0 -p no:cacheprovider -rA tests/parts/test_mesh.py > "$OUT/test_mesh.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/test_mesh.log"
  echo "pytest exit $rc at $(el) s"
  touch $T/mesh_tests_done
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
if [ $left -lt 30 ]; then echo "== mesh stage: only $left s left, not started"; exit 0; fi
if [ -f $T/mesh_stage.json ]; then
  echo "== the rest of the configurations, at most $left s"
  timeout -k 15 $left $PY tools/gpu_mesh_stage.py --done $T/mesh_stage.json --out "$OUT/mesh_stage.json" --sd $T/sd21 --steps $steps --runs $T/mesh_stage_runs \
    > "$OUT/mesh_stage.log" 2>&1
else
  echo "== tools/gpu_mesh_stage.py, at most $left s"
  timeout -k 15 $left $PY tools/gpu_mesh_stage.py --out "$OUT/mesh_stage.json" --sd $T/sd21 --steps $steps --runs $T/mesh_stage_runs \
    > "$OUT/mesh_stage.log" 2>&1
fi
rc=$?
cat "$OUT/mesh_stage.log" | cut -c1-400
echo "mesh stage exit $rc at $(el) s"
[ -f "$OUT/mesh_stage.json" ] && cp "$OUT/mesh_stage.json" $T/mesh_stage.json
echo "== call end, $(el) s"
