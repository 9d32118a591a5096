"""Registry, typed configs, scheduled scalars, Updateable and cameras."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from scorelift import registry
from scorelift.interfaces.loss import Loss
from scorelift.config import parse_config
from scorelift.data.cameras import (
    CameraSamplerConfig,
    check_sampler_config,
    evaluation_cameras,
    make_cameras,
    sample_cameras,
    step_generator,
    view_name,
)
from scorelift.errors import ConfigError, PluginError
from scorelift.schedule import Updateable, check_scheduled, scheduled


def test_unknown_plugin_lists_what_exists():
    with pytest.raises(PluginError) as err:
        registry.find("guidance", "nope")
    msg = str(err.value)
    assert "'nope'" in msg and "paas" in msg and "sds" in msg


def test_unknown_kind_is_rejected():
    with pytest.raises(PluginError, match="kinds are"):
        registry.find("widget", "x")


class _ZeroLoss(Loss):
    def __call__(self, render, cameras):
        return render.opacity.sum() * 0


def test_register_conflict_names_both():
    @registry.register("loss", "test-conflict-a")
    class A(_ZeroLoss):
        pass

    with pytest.raises(PluginError) as err:

        @registry.register("loss", "test-conflict-a")
        class B(_ZeroLoss):
            pass

    assert "already taken" in str(err.value) and "A" in str(err.value) and "Rename it" in str(err.value)


def test_register_rejects_a_missing_method_or_a_foreign_class():
    with pytest.raises(PluginError) as err:

        @registry.register("loss", "test-no-call")
        class NoCall(Loss):
            pass

    assert "without implementing __call__" in str(err.value) and "'test-no-call'" in str(err.value)
    with pytest.raises(PluginError, match="not a subclass of scorelift.interfaces.geometry.Geometry"):

        @registry.register("geometry", "test-foreign")
        class Foreign:
            pass

    assert "test-no-call" not in registry.available("loss")["loss"]


def test_builtin_plugins_are_discovered():
    found = registry.available()
    assert {"paas", "sds"} <= set(found["guidance"])
    assert "voxel-grid" in found["geometry"] and "volume" in found["renderer"]
    assert "score-distillation" in found["system"]


@dataclass
class _Cfg:
    scale: float
    steps: list[int]


def test_parse_config_rejects_unknown_missing_and_wrong_type():
    assert parse_config(_Cfg, {"scale": 2, "steps": [1]}, "x").scale == 2.0
    with pytest.raises(ConfigError, match=r"Unknown config key\(s\) 'scal'.*Valid keys are: scale, steps"):
        parse_config(_Cfg, {"scal": 1, "steps": []}, "guidance (sds)")
    with pytest.raises(ConfigError, match=r"Missing config key\(s\) 'steps'"):
        parse_config(_Cfg, {"scale": 1}, "x")
    with pytest.raises(ConfigError, match=r"key 'scale'.*'abc'"):
        parse_config(_Cfg, {"scale": "abc", "steps": []}, "x")


def test_scheduled_scalar_linear_and_step():
    sched = [100, 1.0, 3.0, 300]
    assert scheduled(sched, 0) == 1.0
    assert scheduled(sched, 100) == 1.0
    assert scheduled(sched, 200) == pytest.approx(2.0)
    assert scheduled(sched, 300) == 3.0 and scheduled(sched, 10_000) == 3.0
    step = [500, 1e4, 2e5, 500]
    assert scheduled(step, 499) == 1e4 and scheduled(step, 500) == 2e5
    assert scheduled(0.5, 123) == 0.5
    with pytest.raises(ConfigError, match="ends"):
        check_scheduled([10, 1, 2, 5], "lambda_x")
    with pytest.raises(ConfigError, match="neither a number"):
        check_scheduled([1, 2], "lambda_x")


def test_updateable_walks_nested_parts_once():
    calls = []

    class Leaf(Updateable):
        def update_step(self, step, max_steps):
            calls.append(("leaf", step))

    class Root(Updateable):
        def __init__(self):
            self.a = Leaf()
            self.b = self.a  # shared: updated once

        def update_step(self, step, max_steps):
            calls.append(("root", step))

    Root().do_update_step(7, 10)
    assert calls == [("leaf", 7), ("root", 7)]


def test_camera_position_and_look_at():
    cams = make_cameras(elevation=[0.0, 90.0 - 1e-3, 30.0], azimuth=[0.0, 0.0, 90.0], distance=2.0, fovy_deg=40.0, height=8)
    pos = cams.c2w[:, :3, 3]
    assert torch.allclose(pos[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    e = math.radians(30)
    assert torch.allclose(pos[2], torch.tensor([0.0, 2 * math.cos(e), 2 * math.sin(e)]), atol=1e-5)
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    # the central ray of an even-sized image passes (almost) through the origin
    o, d = make_cameras(20.0, 45.0, 2.0, 40.0, 2).rays()
    centre = d[0].mean(dim=(0, 1))
    centre = centre / centre.norm()
    assert torch.allclose(centre, -o[0, 0, 0] / o[0, 0, 0].norm(), atol=1e-6)


def test_camera_image_orientation_and_fov():
    cams = make_cameras(0.0, 0.0, 2.0, 90.0, 4)  # camera on +x looking at the origin
    _, d = cams.rays()
    assert d[0, 0, 0, 2] > 0 and d[0, -1, 0, 2] < 0  # top row looks up (+z)
    assert d[0, 0, -1, 1] > d[0, 0, 0, 1]  # right column is towards +y (right-handed, z up)
    # fovy 90: the top edge ray (pixel row 0 is half a pixel in) has elevation atan(0.75)
    assert math.degrees(math.atan2(float(d[0, 0, 1, 2]), float(-d[0, 0, 1, 0]))) == pytest.approx(
        math.degrees(math.atan(0.75)), abs=1e-3
    )


def test_view_names_and_eval_cameras():
    assert view_name(70, 0) == "overhead"
    assert view_name(20, 10) == "front" and view_name(20, -44) == "front"
    assert view_name(20, 180) == "back" and view_name(20, -170) == "back"
    assert view_name(20, 90) == "side" and view_name(20, 45) == "side"
    cams = evaluation_cameras()
    assert cams.batch_size == 8 and cams.height == 64
    assert torch.allclose(cams.distance, torch.full((8,), 2.0))
    assert cams.view_names()[0] == "front" and cams.view_names()[4] == "back"


def test_random_cameras_respect_ranges_and_seed():
    cfg = CameraSamplerConfig(batch_size=256)
    a = sample_cameras(cfg, step_generator(3, 17))
    b = sample_cameras(cfg, step_generator(3, 17))
    c = sample_cameras(cfg, step_generator(3, 18))
    assert torch.equal(a.c2w, b.c2w) and not torch.equal(a.c2w, c.c2w)
    assert a.distance.min() >= 1.8 and a.distance.max() <= 2.2
    assert a.elevation.min() >= -10 and a.elevation.max() <= 60
    assert a.azimuth.min() >= -180 and a.azimuth.max() < 180
    assert torch.rad2deg(a.fovy).min() >= 35 - 1e-4 and torch.rad2deg(a.fovy).max() <= 45 + 1e-4


def test_camera_phases_follow_the_milestones():
    """height/width/batch_size per phase: each step's batch is the one a plain config of that
    phase's values draws from the same generator."""
    cfg = CameraSamplerConfig(batch_size=[8, 4, 2], height=[16, 32, 64], width=[16, 32, 64],
                              resolution_milestones=[100, 250])
    check_sampler_config(cfg)
    for step, (b, size) in ((0, (8, 16)), (99, (8, 16)), (100, (4, 32)), (249, (4, 32)), (250, (2, 64)), (5000, (2, 64))):
        cams = sample_cameras(cfg, step_generator(3, step), step)
        assert (cams.batch_size, cams.height, cams.width) == (b, size, size)
        plain = sample_cameras(CameraSamplerConfig(batch_size=b, height=size, width=size), step_generator(3, step))
        assert torch.equal(cams.c2w, plain.c2w) and torch.equal(cams.fovy, plain.fovy)
    single = CameraSamplerConfig(batch_size=3, height=[24, 48], width=48, resolution_milestones=[10])
    check_sampler_config(single)
    assert single.phases() == [(3, 24, 48), (3, 48, 48)]
    with pytest.raises(ConfigError, match=r"data.width=\[16, 32\] has 2 values, but .* makes 3 phases"):
        check_sampler_config(CameraSamplerConfig(width=[16, 32], resolution_milestones=[1, 2]))
    with pytest.raises(ConfigError, match="strictly ascending"):
        check_sampler_config(CameraSamplerConfig(resolution_milestones=[5, 5]))
    with pytest.raises(ConfigError, match="'height' is 0"):
        check_sampler_config(CameraSamplerConfig(height=0))


def test_inverted_camera_range_is_rejected():
    with pytest.raises(ConfigError, match=r"elevation_range=\[60.0, -10.0\] is inverted"):
        check_sampler_config(CameraSamplerConfig(elevation_range=[60.0, -10.0]))
    with pytest.raises(ConfigError, match="distance_range"):
        check_sampler_config(CameraSamplerConfig(distance_range=[0.0, 1.0]))


def test_a_broken_entry_point_is_reported_and_the_rest_works(monkeypatch):
    import importlib.metadata

    registry.discover()
    ep = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group=None: [ep])
    monkeypatch.setattr(registry, "_load_failures", [])
    registry._import_entry_points()
    (failure,) = registry.load_failures()
    assert "'broken'" in failure and "no_such_module_xyz" in failure and "ModuleNotFoundError" in failure
    assert "uninstall" in failure and "built-in plugins still work" in failure
    assert "sds" in registry.available("guidance")["guidance"]


def test_video_falls_back_to_a_small_gif_without_ffmpeg(tmp_path, monkeypatch):
    """Without imageio-ffmpeg (as on machines with no ffmpeg wheel) a GIF at the frames' own size."""
    import sys

    import imageio.v3 as iio

    from scorelift.outputs.images import write_video

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes `import imageio_ffmpeg` fail
    frames = torch.linspace(0, 1, 6)[:, None, None, None].expand(6, 3, 16, 16)
    path = write_video(tmp_path / "turntable.mp4", frames, fps=10)
    assert path == tmp_path / "turntable.gif" and not (tmp_path / "turntable.mp4").exists()
    gif = iio.imread(path, index=None)
    assert gif.shape == (6, 16, 16, 3)
    assert abs(int(gif[3, 0, 0, 0]) - round(0.6 * 255)) <= 1
