#!/bin/bash
# One device call (H100, <10 min): (1) throughput of 16 concurrent benchmark cells (mps_probe.yaml)
# time-sliced and under MPS; (2) nerfacc's CUDA compositing against the pure path (its extension
# JIT-builds first, on all cores). Carry .whl and .whl_nerfacc. Results: $OUT/probe.tgz.
R=$OUT/r; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/nfa .whl_nerfacc/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv > $R/gpu.txt
which nvidia-cuda-mps-control >> $R/gpu.txt 2>&1
for arm in off on; do
  flag=""; [ $arm = on ] && flag=--mps
  s=$(date +%s)
  timeout 170 python3 benchmark.py tools/device_runs/mps_probe.yaml --out /tmp/probe_$arm --workers 16 $flag > $R/probe_$arm.log 2>&1
  echo "arm $arm exit $? wall $(( $(date +%s) - s )) s" >> $R/probe_summary.txt
  mkdir -p $R/probe_$arm
  cp /tmp/probe_$arm/{results.csv,benchmark_info.json,gpu_util.csv,report.md} $R/probe_$arm/ 2>/dev/null
  for t in /tmp/probe_$arm/cells/*/*/*/run/timing.json; do echo "$t $(tr -d '\n ' < $t)"; done > $R/probe_$arm/timings.txt
done
( cd /tmp && PYTHONPATH=/tmp/site:/tmp/nfa MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 timeout 210 python3 -c "
import time; t = time.time(); import nerfacc.cuda._backend as b; print('nerfacc extension loaded:', b._C is not None, round(time.time() - t, 1), 's')
" > $R/nerfacc_build.log 2>&1 )
PYTHONPATH=/tmp/site:/tmp/nfa timeout 60 python3 -m pytest -q -rs tests/test_renderer.py -k nerfacc > $R/nerfacc_test.log 2>&1
cd $OUT && tar czf probe.tgz r && rm -rf r
