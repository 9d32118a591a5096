"""The statistics of the GPU speed tools, on numbers worked out by hand (the tools themselves need a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tools.gpu_speed_benchmark import percentile, step_statistics
from tools.gpu_step_profile import busy_time_us, is_gpu_work

pytestmark = pytest.mark.subprocess


def test_percentiles_interpolate_linearly_between_order_statistics():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # sorted 1..5: the q-quantile sits at 1 + 4q
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 5.0
    assert percentile(values, 0.1) == pytest.approx(1.4) and percentile(values, 0.9) == pytest.approx(4.6)


def test_step_statistics_use_only_the_window_of_steps():
    # 20 slow warm-up steps (1 s), then 0.010..0.069 s: the window 20..80 must ignore the warm-up.
    steps = [1.0] * 20 + [0.010 + 0.001 * i for i in range(60)] + [1.0] * 20
    s = step_statistics(steps, 20, 80)
    assert s["steps_in_window"] == 60
    assert s["median_ms"] == pytest.approx(39.5)  # mean of the 30th and 31st values, 39 and 40 ms
    assert s["p10_ms"] == pytest.approx(15.9) and s["p90_ms"] == pytest.approx(63.1)
    assert s["spread"] == pytest.approx((63.1 - 15.9) / 39.5)
    assert s["it_per_s"] == pytest.approx(1000 / 39.5)


def test_busy_time_counts_overlapping_kernels_once():
    # [0, 10] and [5, 12] overlap (12 us together), [20, 25] stands alone, [21, 22] lies inside it.
    assert busy_time_us([(20, 25), (0, 10), (5, 12), (21, 22)]) == 17


def test_a_user_annotation_on_the_gpu_timeline_is_not_gpu_work():
    # Lightning's "Optimizer.step#..." range is mirrored on the GPU timeline, spanning every kernel
    # of the step; counted as a kernel it made the whole step look busy.
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def event(name, device_type, **kw):
        return FunctionEvent(id=0, name=name, thread=0, start_us=0, end_us=10, device_type=device_type, **kw)

    assert is_gpu_work(event("ampere_sgemm", DeviceType.CUDA))
    assert not is_gpu_work(event("Optimizer.step#Adamax.step", DeviceType.CUDA, is_user_annotation=True))
    assert not is_gpu_work(event("cudaLaunchKernel", DeviceType.CPU))


def test_compare_prints_the_speed_up_of_each_method(tmp_path):
    row = {"method": "sjc paas", "median_ms": 80.0, "peak_allocated_gib": 2.5}
    (tmp_path / "a.json").write_text(json.dumps([row]))
    (tmp_path / "b.json").write_text(json.dumps([{**row, "median_ms": 20.0}]))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_speed_benchmark.py"), "--compare",
                          str(tmp_path / "a.json"), str(tmp_path / "b.json")], capture_output=True, text=True, check=True)
    assert "sjc paas" in out.stdout and "4.00x" in out.stdout
