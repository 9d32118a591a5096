#!/bin/bash
# The claims run in slices that fit a time-limited GPU machine, most wanted claims first:
#
#   bash tools/gpu_claims.sh <out dir> <seconds> [pack dir]
#
# Run it from the repository root with scorelift importable. Each slice is `python -m scorelift.benchmark
# claims --out <out dir> --claims <the claims so far> --workers 16 --mps`, resuming the same folder,
# so cells done by an earlier slice or an earlier call are kept; a slice that finishes starts the
# next, and the whole is stopped (SIGTERM: running cells checkpoint) <seconds> after the start. The
# order: sjc-schedule; + sjc-paas, sjc-regularisers, sds-cfg; + sjc-vs-dreamfusion, vsd; + ssd.
# With [pack dir], the out dir is then packed without checkpoints (apps/benchmark/pack.py) to carry it
# to the next machine. The runner's output goes to <out dir>/driver_log.txt with a Unix time per line.
set -u
out=${1:?usage: bash tools/gpu_claims.sh <out dir> <seconds> [pack dir]}
limit=${2:?usage: bash tools/gpu_claims.sh <out dir> <seconds> [pack dir]}
pack=${3:-}
start=$(date +%s)
export PYTHONUNBUFFERED=1
mkdir -p "$out"
claims=""
for slice in sjc-schedule sjc-paas,sjc-regularisers,sds-cfg sjc-vs-dreamfusion,vsd ssd; do
  claims=${claims:+$claims,}$slice
  left=$(( limit - ($(date +%s) - start) ))
  [ $left -gt 30 ] || break
  echo "== claims $claims, at most $left s"
  timeout -s TERM -k 60 $left python -m scorelift.benchmark claims --out "$out" --claims "$claims" --workers 16 --mps \
    --stop-grace 20 2>&1 | while IFS= read -r line; do echo "$(date +%s) $line"; done | tee -a "$out/driver_log.txt" | tail -n 12
  rc=${PIPESTATUS[0]}
  echo "runner exit $rc"
  [ $rc -le 1 ] || break  # 0 all finished, 1 a cell failed (reported, not retried); else stopped
done
[ -n "$pack" ] && python -m scorelift.benchmark pack "$out" "$pack"
echo "took $(( $(date +%s) - start )) s"
