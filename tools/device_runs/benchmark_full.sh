#!/bin/bash
# The full benchmark preset on the lent H100, one slice of seeds per device call (each call is at
# most 10 minutes; the cells of all slices are merged here with --report-only):
#   bash tools/device_runs/benchmark_full.sh <seeds, e.g. 0> <workers, e.g. 16> [more benchmark.py args, e.g. --mps]
# Carry .whl (diffusers, hydra, omegaconf, antlr4). Brings back $OUT/cells_<seeds>.tgz: every cell's
# cell.json, stdout tail, metrics, timing, eval curve, turntable (GIF: no ffmpeg there) and strip,
# plus the slice's gpu_util.csv and benchmark_info.json. Unpack into the output folder here, then
#   python benchmark.py full --out benchmarks/shapes-full --report-only
seeds=$1; workers=$2; shift 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
out=/tmp/bench_full
timeout 540 python3 benchmark.py full --out $out --seeds "$seeds" --workers "$workers" "$@" 2>&1 | tee $OUT/bench_$seeds.log | tail -5
cd $out || exit 1
mv gpu_util.csv gpu_util_s$seeds.csv 2>/dev/null; cp benchmark_info.json benchmark_info_s$seeds.json 2>/dev/null
for f in cells/*/*/*/stdout.log; do [ -f "$f.tail" ] || tail -n 30 "$f" > "$f.tail"; done
# only this slice's seeds: on a machine still warm from an earlier slice, /tmp/bench_full holds those too
paths=(); for s in ${seeds//,/ }; do paths+=(cells/*/*/s$s); done
find "${paths[@]}" -name cell.json -o -name failed.json -o -name stdout.log.tail -o -name metrics.json -o -name timing.json \
  -o -name eval_curve.csv -o -name turntable.gif -o -name turntable.mp4 -o -name turntable_strip.png -o -name run_info.json \
  | tar czf $OUT/cells_$seeds.tgz -T - gpu_util_s$seeds.csv benchmark_info_s$seeds.json
ls -la $OUT
