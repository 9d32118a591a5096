#!/bin/bash
# determinism_probe.sh on an SD 2.1-base-shaped pipeline with random fp16 weights (built here,
# ~1 min): determinism_sd_probe.yaml's 5 cells twice with deterministic=true, once without.
# One device call, ~8 min; carry .whl. Results: $OUT/det.tgz.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
PYTHONPATH=/tmp/site timeout 100 python3 tools/build_random_sd_pipeline.py /tmp/sd21 --dtype float16 > /tmp/sd_build.log 2>&1 || { tail /tmp/sd_build.log; exit 1; }
bash tools/device_runs/determinism_probe.sh tools/device_runs/determinism_sd_probe.yaml 150 prior.model=/tmp/sd21
