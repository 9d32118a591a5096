"""The fast path (``fast_path``): the switch, its CPU parts (the sliced voxel lookup against the plain
one, channels-last UNet), and on a CUDA machine the graphed denoiser against the eager one and the
pure path, device-side draws, and bit-for-bit repeats of whole runs with it on.

The CUDA tests run on the GPU machine (they are skipped, and counted as skipped, elsewhere)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scorelift import fast_path
from scorelift.cuda_graphs import GraphedInference
from scorelift.data.cameras import step_generator
from scorelift.errors import ConfigError
from scorelift.interfaces.guidance import Guidance
from scorelift.plugins.guidance.paas import PAASGuidance
from scorelift.library.sds import SDSGuidance
from scorelift.plugins.guidance.vsd import VSDGuidance
from scorelift.plugins.geometry.voxel_grid import CPU_SLICE_MIN_POINTS, CPU_SLICES, VoxelGrid, VoxelGridConfig
from scorelift.plugins.renderers.volume import VolumeRenderer
from scorelift.run import run
from tests.conftest import load_prior
from tests.run.test_system import compose_cfg, final_params, small_run_overrides

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the GPU machine)")


def sliced_and_plain_lookup(points: torch.Tensor, threads: int):
    """The voxel grid's lookup of ``points`` with the fast path on and off: (values, grid gradient) each."""
    config = VoxelGridConfig(resolution=24, n_features=3, feature_activation="sigmoid", init_seed=1)
    upstream = torch.randn(points.shape[0], 4, generator=torch.Generator().manual_seed(2))
    results = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for on in (True, False):
            grid = VoxelGrid(config, fast_path=on)
            g = torch.cat([grid.density_grid, grid.feature_grid], dim=1).detach().requires_grad_(True)
            values = grid._sample(g, points)
            (values * upstream).sum().backward()
            results.append((values.detach(), g.grad))
    finally:
        torch.set_num_threads(before)
    return results


def test_cpu_fast_path_lookup_gives_the_same_values_and_a_thread_count_independent_gradient():
    points = torch.rand(5 * CPU_SLICES * CPU_SLICE_MIN_POINTS + 7, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    (fast_values, fast_grad), (plain_values, plain_grad) = sliced_and_plain_lookup(points, threads=2)
    assert torch.equal(fast_values, plain_values)  # the same interpolation of every point, bit for bit
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-5, atol=1e-5)  # summed in 4 parts, not 1
    (_, one_thread_grad), _ = sliced_and_plain_lookup(points, threads=1)
    assert torch.equal(one_thread_grad, fast_grad)  # fixed slices: the thread count changes nothing


def test_without_the_fast_path_the_cpu_lookup_and_unet_are_the_plain_ones(tiny_pipeline_dir):
    points = torch.rand(CPU_SLICES * CPU_SLICE_MIN_POINTS * 2, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _, (plain_values, plain_grad) = sliced_and_plain_lookup(points, threads=2)
    grid = VoxelGrid(VoxelGridConfig(resolution=24, n_features=3, feature_activation="sigmoid", init_seed=1))
    g = torch.cat([grid.density_grid, grid.feature_grid], dim=1).detach().requires_grad_(True)
    reference = F.grid_sample(g, points.reshape(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border",
                              align_corners=True).reshape(4, -1).t()
    upstream = torch.randn(points.shape[0], 4, generator=torch.Generator().manual_seed(2))
    (reference * upstream).sum().backward()
    assert torch.equal(plain_values, reference.detach()) and torch.equal(plain_grad, g.grad)
    plain = load_prior(tiny_pipeline_dir, fast_path=False)
    fast = load_prior(tiny_pipeline_dir)
    conv = next(m for m in plain.unet.modules() if isinstance(m, torch.nn.Conv2d))
    fast_conv = next(m for m in fast.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous() and fast_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not isinstance(fast._eps_model, GraphedInference)  # no CUDA graphs on the CPU


def test_fast_path_must_be_a_boolean(tiny_pipeline_dir, tmp_path):
    base = small_run_overrides(tiny_pipeline_dir, 8, "sjc", "paas", 2)
    with pytest.raises(ConfigError, match=r"fast_path='maybe' must be true or false"):
        run(compose_cfg(base + ["fast_path=maybe"]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_generators_stay_on_the_cpu_without_cuda_and_for_parts_that_do_not_declare_device_draws():
    class OldStyleGuidance(Guidance):  # a plugin written when every generator was a CPU one
        pass

    assert fast_path.draw_device(VolumeRenderer(), "cpu", True) == torch.device("cpu")
    assert fast_path.draw_device(OldStyleGuidance.__new__(OldStyleGuidance), "cuda:0", True) == torch.device("cpu")
    assert all(cls.draws_on_device for cls in (PAASGuidance, SDSGuidance, VSDGuidance, VolumeRenderer))
    assert fast_path.draw_device(VolumeRenderer(), "cuda:0", True) == torch.device("cuda:0")
    assert fast_path.draw_device(VolumeRenderer(), "cuda:0", False) == torch.device("cpu")


def test_graphed_inference_runs_eagerly_on_the_cpu_and_under_autograd():
    calls = []

    def double(x):
        calls.append(x.shape)
        return 2 * x

    graphed = GraphedInference(double, "double")
    x = torch.randn(3, 4)
    assert torch.equal(graphed(x), 2 * x) and calls == [(3, 4)] and graphed.graphs == {}


def test_a_cpu_step_generator_draws_what_it_drew_before_the_fast_path():
    # The fast path left CPU draws alone: the same seed formula and Mersenne Twister stream.
    g = step_generator(3, 17, 1)
    expected = torch.Generator().manual_seed((3 * 1_000_003 + 17 * 7_919 + 1 * 104_729) % (2**63 - 1))
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=expected))


# ----------------------------------------------------------------------------------- CUDA


@needs_cuda
def test_graphed_unet_equals_the_eager_unet_on_fresh_inputs(tiny_pipeline_dir):
    prior = load_prior(tiny_pipeline_dir, "cuda", dtype="float32")
    assert isinstance(prior._eps_model, GraphedInference)
    text = prior.condition("a red cube", ["front", "side"])
    for trial in range(3):  # capture on the first call, replay on the next with new numbers
        z = torch.randn(2, 4, 8, 8, device="cuda")
        t = torch.randint(0, 1000, (2,), device="cuda")
        e_c, e_u = prior.predict_eps(z, t, text.cond, text.uncond)
        with torch.no_grad():
            x = prior._layout(torch.cat([z, z]), True)
            eager = prior.unet(x, torch.cat([t, t]), encoder_hidden_states=torch.cat([text.cond, text.uncond])).sample
        torch.testing.assert_close(torch.cat([e_c, e_u]), eager.float(), rtol=0, atol=0)
    assert len(prior._eps_model.graphs) == 1 and not prior._eps_model.failed


@needs_cuda
def test_graphed_unet_matches_the_pure_path_within_rounding(tiny_pipeline_dir):
    fast = load_prior(tiny_pipeline_dir, "cuda", dtype="float32")
    plain = load_prior(tiny_pipeline_dir, "cuda", dtype="float32", fast_path=False)
    assert not isinstance(plain._eps_model, GraphedInference)
    text = plain.condition("a red cube", ["front", "side"])
    z = torch.randn(2, 4, 8, 8, device="cuda")
    t = torch.tensor([20, 900], device="cuda")
    a = torch.cat(fast.predict_eps(z, t, text.cond, text.uncond))
    b = torch.cat(plain.predict_eps(z, t, text.cond, text.uncond))
    assert ((a - b).norm() / b.norm()).item() < 1e-3  # channels-last convolutions round differently (TF32 off: ~1e-6)


@needs_cuda
def test_device_jitter_is_seeded_uniform_and_inside_each_interval():
    renderer = VolumeRenderer().train()
    t_near = torch.zeros(4096, device="cuda")
    t_far = torch.full((4096,), 2.0, device="cuda")
    draws = []
    for _ in range(2):
        g = step_generator(0, 5, 1, "cuda")
        draws.append(torch.rand((4096, 200), generator=g, device=g.device))
    assert torch.equal(draws[0], draws[1]) and draws[0].device.type == "cuda"
    t, delta = renderer._intervals(t_near, t_far, 200, draws[0])
    start = t - draws[0] * delta
    assert ((t >= start) & (t <= start + delta)).all()
    assert abs(draws[0].mean().item() - 0.5) < 0.005 and abs(draws[0].var().item() - 1 / 12) < 0.002


@needs_cuda
@pytest.mark.parametrize("system,guidance", [("sjc", "paas"), ("dreamfusion", "sds"), ("prolificdreamer", "vsd")])
def test_cuda_runs_with_the_fast_path_repeat_bit_for_bit(system, guidance, tiny_pipeline_dir, tmp_path):
    base = [o.replace("device=cpu", "device=cuda") for o in small_run_overrides(tiny_pipeline_dir, 8, system, guidance, 6)]
    for name, extra in {"a": ["fast_path=true"], "b": ["fast_path=true"], "off": ["fast_path=false"]}.items():
        run(compose_cfg(base + extra + ["deterministic=true"]), tmp_path / name)
    a, b, off = (final_params(tmp_path / n) for n in ("a", "b", "off"))
    assert all(torch.equal(a[k], b[k]) for k in a), "deterministic=true with the fast path must repeat bit for bit"
    # The fast path was really on: its draws come from CUDA's generator, so the weights differ from
    # the pure path's (which repeats itself too, as the deterministic tests show).
    assert any(not torch.equal(a[k], off[k]) for k in a)
