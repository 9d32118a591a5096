"""The claims' measures on constructed renders and lattices whose values are known by construction."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scorelift.data.cameras import evaluation_cameras
from scorelift.shapes_world import claim_measures as cm
from scorelift.shapes_world import evaluate as ev
from scorelift.shapes_world.render import render_ground_truth
from scorelift.shapes_world.world import COLOURS, SHAPES

V, H = 2, 64


def _square(x0: int, y0: int, size: int) -> torch.Tensor:
    """[V, H, H] opacity 1 on a size x size square with corner (x0, y0), 0 elsewhere."""
    alpha = torch.zeros(V, H, H)
    alpha[:, y0 : y0 + size, x0 : x0 + size] = 1.0
    return alpha


def _paint(alpha: torch.Tensor, colour) -> torch.Tensor:
    """A flat render: the colour where the opacity is, white elsewhere, [V, 3, H, W]."""
    c = torch.tensor(colour)[None, :, None, None]
    return c * alpha[:, None] + (1 - alpha[:, None])


def test_floaters_is_the_share_of_opacity_outside_the_true_silhouette():
    truth = _square(20, 20, 16)
    assert cm.floaters(truth, truth) == 0.0
    # a 1-px halo around the object is edge blur, not a floater
    assert cm.floaters(_square(19, 19, 18), truth) == 0.0
    # a 4 x 4 blob far from the object: 16 of 16 * 16 + 16 pixels of opacity
    pred = truth.clone()
    pred[:, 50:54, 50:54] = 1.0
    assert cm.floaters(pred, truth) == pytest.approx(16 / (256 + 16))
    pred[:, 50:54, 50:54] = 0.5  # half-opaque floaters count by their opacity
    assert cm.floaters(pred, truth) == pytest.approx(8 / (256 + 8))
    assert cm.floaters(torch.zeros(V, H, H), truth) is None  # nothing rendered: nothing to share out


def test_oversaturation_is_the_chroma_difference_inside_both_masks():
    mask = _square(10, 10, 30)
    truth = _paint(mask, (0.8, 0.2, 0.2))  # chroma 0.6
    assert cm.oversaturation(_paint(mask, (1.0, 0.0, 0.0)), mask, truth, mask) == pytest.approx(0.4)
    assert cm.oversaturation(_paint(mask, (0.6, 0.4, 0.4)), mask, truth, mask) == pytest.approx(-0.4)
    # only the pixels inside both masks count: a grey floater outside the truth changes nothing
    pred_alpha = mask.clone()
    pred_alpha[:, 50:60, 50:60] = 1.0
    pred = _paint(mask, (0.8, 0.2, 0.2))
    pred[:, :, 50:60, 50:60] = 0.5
    assert cm.oversaturation(pred, pred_alpha, truth, mask) == pytest.approx(0.0, abs=1e-6)
    assert cm.oversaturation(truth, torch.zeros(V, H, H), truth, mask) is None


def test_sharpness_ratio_scales_with_contrast_and_drops_with_blur():
    mask = _square(16, 16, 32)
    truth = _paint(mask, (0.2, 0.4, 0.9))
    assert cm.sharpness_ratio(truth, truth) == pytest.approx(1.0)
    # halving the contrast against the white background halves every Sobel gradient exactly
    faded = 1 - 0.5 * (1 - truth)
    assert cm.sharpness_ratio(faded, truth) == pytest.approx(0.5, rel=1e-5)
    # a box blur spreads each edge over more pixels: the mean gradient magnitude falls
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(truth, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    assert cm.sharpness_ratio(blurred, truth) < 0.9
    assert cm.sharpness_ratio(torch.ones(V, 3, H, H), truth) == 0.0
    assert cm.sharpness_ratio(truth, torch.ones(V, 3, H, H)) is None


def test_centring_offset_is_the_centroid_shift_in_image_widths():
    truth = _square(24, 24, 16)
    assert cm.centring_offset(truth, truth) == pytest.approx(0.0, abs=1e-7)
    assert cm.centring_offset(_square(32, 24, 16), truth) == pytest.approx(8 / 64)
    assert cm.centring_offset(_square(30, 32, 16), truth) == pytest.approx(10 / 64)  # 6 right, 8 down
    # a view with no opacity is left out of the mean, not counted as centred
    one_view = _square(32, 24, 16)
    one_view[1] = 0.0
    assert cm.centring_offset(one_view, truth) == pytest.approx(8 / 64)
    assert cm.centring_offset(torch.zeros(V, H, H), truth) is None


def test_disconnected_share_counts_voxels_outside_the_largest_piece():
    solid = torch.zeros(16, 16, 16, dtype=torch.bool)
    solid[2:6, 2:6, 2:6] = True  # 64 voxels
    assert cm.disconnected_share(solid.numpy()) == 0.0
    solid[10:12, 10:12, 10:12] = True  # 8 voxels apart
    assert cm.disconnected_share(solid.numpy()) == pytest.approx(8 / 72)
    solid[6, 6, 6] = True  # touches the big piece at a corner: 26-connected, still two pieces
    assert cm.disconnected_share(solid.numpy()) == pytest.approx(8 / 73)
    assert cm.disconnected_share(torch.zeros(4, 4, 4, dtype=torch.bool).numpy()) is None


class _TwoBalls:
    """A geometry of two solid balls (density 50 inside, 0 outside) in the box [-1, 1]^3."""

    bbox = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])

    def __init__(self, small_radius: float):
        self.small_radius = small_radius

    def density(self, points: torch.Tensor) -> torch.Tensor:
        big = (points - torch.tensor([-0.3, 0.0, 0.0])).norm(dim=-1) < 0.4
        small = (points - torch.tensor([0.6, 0.0, 0.0])).norm(dim=-1) < self.small_radius
        return 50.0 * (big | small).float()


def test_disconnected_mass_of_a_geometry_with_a_floating_ball():
    share = cm.disconnected_mass(_TwoBalls(0.15))
    assert share == pytest.approx(0.15**3 / (0.4**3 + 0.15**3), abs=0.01)  # volume ratio, lattice spacing 2 / 63
    assert cm.disconnected_mass(_TwoBalls(0.0)) == 0.0


def test_seed_diversity_of_identical_disjoint_and_recoloured_seeds():
    left, right = _square(4, 4, 20), _square(36, 36, 20)
    red = (_paint(left, (1.0, 0.0, 0.0)), left)
    same = cm.seed_diversity([red, red, red])
    assert same == dict(geometry_spread=0.0, colour_spread=0.0)
    apart = cm.seed_diversity([red, (_paint(right, (1.0, 0.0, 0.0)), right)])
    assert apart["geometry_spread"] == 1.0 and apart["colour_spread"] is None  # masks never meet
    pink = (_paint(left, (1.0, 0.3, 0.3)), left[:, None])  # [V, 1, H, W] alpha is accepted too
    mixed = cm.seed_diversity([red, red, pink])  # pairs: (red, red) 0, (red, pink) 0.2 twice
    assert mixed["geometry_spread"] == 0.0 and mixed["colour_spread"] == pytest.approx(0.4 / 3)
    assert cm.seed_diversity([red]) == dict(geometry_spread=None, colour_spread=None)


def _truth_views(colour: str, shape: str):
    cams = evaluation_cameras(64)
    s = torch.full((8,), SHAPES.index(shape))
    c = torch.full((8,), list(COLOURS).index(colour))
    return render_ground_truth(s, c, cams, supersample=ev.EVAL_SUPERSAMPLE)


def test_the_truth_itself_has_no_floaters_and_true_colours_edges_and_centre():
    rgb, alpha = _truth_views("blue", "cone")
    m = ev.evaluate_views(rgb, alpha, "blue", "cone")
    assert m["floaters"] == pytest.approx(0.0, abs=1e-9)
    assert m["oversaturation"] == pytest.approx(0.0, abs=1e-6)
    assert m["sharpness_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert m["centring_offset"] == pytest.approx(0.0, abs=1e-6)
    # the same cone, greyed halfway towards its own luminance: less chroma than the truth
    grey = rgb.mean(1, keepdim=True)
    washed = ev.evaluate_views(0.5 * rgb + 0.5 * grey, alpha, "blue", "cone")
    assert washed["oversaturation"] < -0.1 and math.isclose(washed["iou"], 1.0)


def test_re_evaluating_a_run_keeps_its_geometry_measure(tmp_path):
    rgb, alpha = _truth_views("red", "cube")
    ev.write_eval_views(tmp_path, rgb, alpha)
    (tmp_path / "run_info.json").write_text(json.dumps({"prompt": "a red cube"}))
    first = ev.evaluate_run_dir(tmp_path, extra=dict(disconnected_mass=0.25))
    assert first["disconnected_mass"] == 0.25 and first["floaters"] < 0.01
    again = ev.evaluate_run_dir(tmp_path)  # python -m scorelift.shapes_world.evaluate RUN_DIR does this
    assert again["disconnected_mass"] == 0.25
    assert json.loads((tmp_path / "metrics.json").read_text())["disconnected_mass"] == 0.25
    views_rgb, views_alpha = ev.load_run_views(tmp_path)
    assert views_rgb.shape == (8, 3, 64, 64) and views_alpha.shape == (8, 64, 64)
