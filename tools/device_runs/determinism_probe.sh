#!/bin/bash
# GPU determinism check in one device call (H100, ~3 min): determinism_probe.yaml's 6 cells run
# twice with deterministic=true (every number must repeat exactly) and once without (for the cost).
# Carry .whl. Results: $OUT/det.tgz (results.csv, curves.csv, benchmark_info.json, timing.json per arm).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
for arm in det_a det_b default; do
  extra=(--set deterministic=true); [ $arm = default ] && extra=()
  timeout 100 python3 benchmark.py tools/device_runs/determinism_probe.yaml --out /tmp/$arm --workers 6 --mps "${extra[@]}" > $R/$arm.log 2>&1
  mkdir -p $R/$arm; cp /tmp/$arm/{results.csv,curves.csv,benchmark_info.json} $R/$arm/ 2>/dev/null
  grep -h -i "error\|warn" /tmp/$arm/cells/*/*/*/stdout.log | sort | uniq -c | head -20 > $R/$arm/warnings.txt
done
cd $OUT && tar czf det.tgz r && rm -rf r
