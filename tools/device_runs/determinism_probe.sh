#!/bin/bash
# GPU determinism check in one device call (H100). Usage:
#   bash tools/device_runs/determinism_probe.sh [PRESET.yaml [TIMEOUT_S [launch.py overrides...]]]
# The preset (default: determinism_probe.yaml, 8 cells, ~7 min) runs twice with
# deterministic=true (every number and every weight must repeat exactly) and once without (for
# the cost), all cells at once under MPS. Carry .whl. Results: $OUT/det.tgz (results.csv,
# curves.csv, benchmark_info.json, weights_sha256.txt, warnings.txt and the log per arm).
PRESET=${1:-tools/device_runs/determinism_probe.yaml}; LIMIT=${2:-190}; shift 2 2>/dev/null; EXTRA=("$@")
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
CELLS=$(python3 -c "import yaml, sys; p = yaml.safe_load(open(sys.argv[1])); print(len(p['prompts']) * len(p['seeds']) * len(p['methods']))" $PRESET)
R=$OUT/r; mkdir -p $R
for arm in det_a det_b default; do
  extra=("${EXTRA[@]}" deterministic=true); [ $arm = default ] && extra=("${EXTRA[@]}")
  timeout $LIMIT python3 benchmark.py $PRESET --out /tmp/$arm --workers $CELLS --mps --set "${extra[@]}" > $R/$arm.log 2>&1; rc=$?
  mkdir -p $R/$arm; cp /tmp/$arm/{results.csv,curves.csv,benchmark_info.json} $R/$arm/ 2>/dev/null
  echo "== $arm: exit $rc"; tail -n 6 $R/$arm.log
  python3 - /tmp/$arm > $R/$arm/weights_sha256.txt <<'PY'
# One digest per cell over every tensor of its final checkpoint's weights, in key order.
import glob, hashlib, sys, torch
for ckpt in sorted(glob.glob(f"{sys.argv[1]}/cells/*/*/*/run/checkpoints/last.ckpt")):
    state, digest = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"], hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode()); digest.update(state[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    print(digest.hexdigest(), ckpt.split("/cells/")[1])
PY
  grep -h -i "error\|warn" /tmp/$arm/cells/*/*/*/stdout.log | sort | uniq -c | head -20 > $R/$arm/warnings.txt
  for f in /tmp/$arm/cells/*/*/*/failed.json; do [ -f "$f" ] && { echo "FAILED: $f"; tail -n 5 "$(dirname $f)/stdout.log"; }; done
done
python3 - $R <<'PY'
# Compare the two deterministic arms on every quality number (timings are expected to differ).
import csv, sys
root = sys.argv[1]
def rows(arm, name, keys):
    return {tuple(r[k] for k in keys): r for r in csv.DictReader(open(f"{root}/{arm}/{name}"))}
for name, keys, cols in [("results.csv", ("method", "prompt", "seed"), ("status", "iou", "colour_error", "identification", "final_loss")),
                         ("curves.csv", ("method", "prompt", "seed", "step"), ("iou", "colour_error", "identification", "loss"))]:
    a, b = rows("det_a", name, keys), rows("det_b", name, keys)
    diff = [k for k in a if k not in b or any(a[k][c] != b[k][c] for c in cols)]
    print(name, "rows", len(a), len(b), "differing", len(diff), diff[:5])
PY
for arm in det_b default; do echo "weights: det_a vs $arm: $(diff $R/det_a/weights_sha256.txt $R/$arm/weights_sha256.txt | grep -c '^<') of $(wc -l < $R/det_a/weights_sha256.txt) cells differ"; done
cd $OUT && tar czf det.tgz r && rm -rf r
