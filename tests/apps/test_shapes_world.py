"""Shapes world: exact silhouettes and shading, dataset determinism, prompts, and the evaluator."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scorelift.data.cameras import evaluation_cameras, make_cameras
from scorelift.shapes_world import evaluate as ev
from scorelift.shapes_world.dataset import sample_training_batch, write_dataset
from scorelift.shapes_world.render import render_ground_truth, render_shading
from scorelift.shapes_world.world import (
    ALL_OBJECTS,
    COLOURS,
    LIGHT_DIR,
    SHAPES,
    VOCABULARY,
    caption,
    object_prompt,
    parse_prompt,
)

SIZE = 64
D, FOVY = 2.0, 40.0
FOCAL = 0.5 * SIZE / math.tan(math.radians(FOVY) / 2)  # pixels


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run this module single-threaded, then restore.

    The renderer issues many small tensor ops; on a shared, loaded 2-core CPU, OpenMP's thread
    synchronisation made them over 10x slower with 2 threads than with 1 (62 s against 5 s here).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _render(shape: str, colour: str = "red", elev=20.0, azim=0.0, d=D, fovy=FOVY, size=SIZE, rot=0.0, ss=2):
    cams = make_cameras(elev, azim, d, fovy, size)
    s = torch.tensor([SHAPES.index(shape)])
    c = torch.tensor([list(COLOURS).index(colour)])
    rgb, alpha = render_ground_truth(s, c, cams, supersample=ss, rotation_deg=rot)
    return rgb[0], alpha[0, 0]


def _assert_area(alpha: torch.Tensor, area: float, perimeter: float):
    """Coverage area of an anti-aliased render of a curved outline against the analytic area.

    With 2 x 2 supersampling the coverage of an edge pixel is quantised to quarters; along a
    curved outline the errors mostly cancel, and 0.1 px per perimeter pixel still catches a
    1 % error in size.
    """
    measured = float(alpha.sum())
    assert abs(measured - area) <= 0.1 * perimeter, (measured, area)


def _assert_centred_square(alpha: torch.Tensor, half: float, ss: int = 2):
    """An axis-aligned square of half-size `half` pixels, centred: exact sub-pixel count.

    Sub-pixel centres sit at (k + 0.5) / ss; those strictly inside the square are counted
    exactly, so the render must match to float rounding (no tolerance from the edges).
    """
    centres = (torch.arange(SIZE * ss, dtype=torch.float64) + 0.5) / ss - SIZE / 2
    side = float((centres.abs() < half).sum()) / ss  # covered side length in pixels
    assert float(alpha.sum()) == pytest.approx(side * side, abs=1e-3)


# --- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("elev,azim,d", [(20.0, 0.0, 2.0), (-10.0, 137.0, 1.8), (55.0, -60.0, 2.2), (90.0, 0.0, 2.0)])
def test_sphere_is_a_disc_of_known_angular_radius(elev, azim, d):
    _, alpha = _render("sphere", elev=elev, azim=azim, d=d)
    radius = FOCAL * math.tan(math.asin(0.45 / d))
    _assert_area(alpha, math.pi * radius**2, 2 * math.pi * radius)


def test_cube_from_the_front_is_its_front_face():
    _, alpha = _render("cube", elev=0.0, azim=0.0)
    _assert_centred_square(alpha, FOCAL * 0.35 / (D - 0.35))


def test_overhead_silhouettes():
    """From straight above: cylinder top cap, cone base, pyramid base, torus annulus."""
    _, alpha = _render("cylinder", elev=90.0)
    r = FOCAL * 0.35 / (D - 0.35)
    _assert_area(alpha, math.pi * r * r, 2 * math.pi * r)

    _, alpha = _render("cone", elev=90.0)
    r = FOCAL * 0.40 / (D + 0.35)
    _assert_area(alpha, math.pi * r * r, 2 * math.pi * r)

    _, alpha = _render("pyramid", elev=90.0)
    _assert_centred_square(alpha, FOCAL * 0.38 / (D + 0.30))

    # Torus: rays from the camera tangent to the tube circle (centre R from the axis, radius r).
    _, alpha = _render("torus", elev=90.0)
    centre_angle = math.atan(0.33 / D)
    half_width = math.asin(0.13 / math.hypot(0.33, D))
    outer = FOCAL * math.tan(centre_angle + half_width)
    inner = FOCAL * math.tan(centre_angle - half_width)
    _assert_area(alpha, math.pi * (outer**2 - inner**2), 2 * math.pi * (outer + inner))
    assert float(alpha[SIZE // 2, SIZE // 2]) == 0.0  # the hole


def test_supersampling_averages_the_finer_grid():
    """s x s supersampling = the render at s times the resolution, box-filtered (same ray centres)."""
    cams = make_cameras([20.0, 35.0], [10.0, -100.0], [2.0, 1.9], [40.0, 37.0], SIZE)
    shape, colour = torch.tensor([1, 4]), torch.tensor([2, 5])
    rgb2, a2 = render_ground_truth(shape, colour, cams, supersample=2)
    rgb1, a1 = render_ground_truth(shape, colour, cams.with_resolution(2 * SIZE), supersample=1)
    assert torch.allclose(rgb2, F.avg_pool2d(rgb1, 2), atol=1e-5)
    assert torch.allclose(a2, F.avg_pool2d(a1, 2), atol=1e-6)


def test_rotation_turns_the_object_about_z():
    # The cube turned by 90 deg is the same object, lit by the same world-fixed light.
    rgb0, alpha0 = _render("cube", azim=30.0)
    rgb90, alpha90 = _render("cube", azim=30.0, rot=90.0)
    assert (alpha0 - alpha90).abs().max() < 1e-4 and (rgb0 - rgb90).abs().max() < 1e-4
    # Turning the object by +t shows the silhouette seen from azimuth -t; the shading differs,
    # since the light stays in the world.
    rgb_a, alpha_a = _render("pyramid", azim=-25.0)
    rgb_b, alpha_b = _render("pyramid", azim=0.0, rot=25.0)
    assert (alpha_a - alpha_b).abs().max() < 1e-4
    assert (rgb_a - rgb_b).abs().max() > 0.05


# --- appearance ----------------------------------------------------------------------------


def test_lambert_shading_on_cube_faces():
    light = torch.tensor(LIGHT_DIR)
    assert float(light.norm()) == pytest.approx(1.0)
    albedo = torch.tensor(COLOURS["green"])
    rgb, alpha = _render("cube", "green", elev=0.0, azim=0.0)
    expected = albedo * (0.3 + 0.7 * max(0.0, float(light[0])))  # front face, normal +x
    assert float(alpha[SIZE // 2, SIZE // 2]) == 1.0
    assert torch.allclose(rgb[:, SIZE // 2, SIZE // 2], expected, atol=1e-5)
    rgb, _ = _render("cube", "green", elev=90.0)
    expected = albedo * (0.3 + 0.7 * float(light[2]))  # top face, normal +z
    assert torch.allclose(rgb[:, SIZE // 2, SIZE // 2], expected, atol=1e-5)
    rgb, _ = _render("cube", "green", elev=0.0, azim=90.0)
    expected = albedo * 0.3  # the +y face turns away from the light (l_y < 0): ambient only
    assert torch.allclose(rgb[:, SIZE // 2, SIZE // 2], expected, atol=1e-5)


def test_white_background_and_value_range():
    rgb, alpha = _render("torus", "blue", elev=35.0, azim=70.0)
    assert torch.equal(rgb[:, 0, 0], torch.ones(3)) and float(alpha[0, 0]) == 0.0
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


def test_render_shading_is_colour_free():
    cams = make_cameras(20.0, 45.0, 2.0, 40.0, 32)
    shade, alpha = render_shading(torch.tensor([3]), cams)
    for c, albedo in enumerate(COLOURS.values()):
        rgb, alpha_c = render_ground_truth(torch.tensor([3]), torch.tensor([c]), cams)
        assert torch.allclose(rgb, torch.tensor(albedo)[None, :, None, None] * shade + 1 - alpha, atol=1e-6)
        assert torch.equal(alpha, alpha_c)


def test_bad_indices_are_rejected():
    cams = make_cameras(20.0, 0.0, 2.0, 40.0, 8)
    with pytest.raises(ValueError, match="shape_idx"):
        render_ground_truth(torch.tensor([6]), torch.tensor([0]), cams)
    with pytest.raises(ValueError, match="colour_idx"):
        render_ground_truth(torch.tensor([0]), torch.tensor([0, 1]), cams)


# --- world vocabulary and prompts -------------------------------------------------------------


def test_objects_and_prompts():
    assert len(ALL_OBJECTS) == 36 and ALL_OBJECTS[0] == ("red", "sphere") and ALL_OBJECTS[6] == ("green", "sphere")
    assert object_prompt("red", "cube") == "a red cube"
    assert object_prompt("orange", "cone") == "an orange cone"
    assert caption("red", "cube", "front") == "a red cube, front view"
    assert caption("purple", "torus") == "a purple torus"
    with pytest.raises(ValueError, match="diagonal"):
        caption("red", "cube", "diagonal")
    words = set(VOCABULARY)
    for c, s in ALL_OBJECTS:
        for view in (None, "front", "side", "back", "overhead"):
            assert set(caption(c, s, view).replace(",", "").split()) <= words


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a red cube", ("red", "cube")),
        ("an orange cone", ("orange", "cone")),
        ("an red cube", ("red", "cube")),
        ("a orange cone", ("orange", "cone")),
        ("  A Red CUBE  ", ("red", "cube")),
        ("a  purple   torus", ("purple", "torus")),
        ("a red cube, front view", ("red", "cube")),
        ("a green pyramid, overhead view", ("green", "pyramid")),
        ("a blue cylinder, back view", ("blue", "cylinder")),
        ("front view of a red cube", ("red", "cube")),
        ("side view of an orange sphere", ("orange", "sphere")),
        ("backside view of a yellow torus", ("yellow", "torus")),
        ("Overhead view of a blue cone", ("blue", "cone")),
        ("a DSLR photo of a peacock", None),
        ("a pink cube", None),
        ("a red dodecahedron", None),
        ("a red cube and a blue sphere", None),
        ("", None),
    ],
)
def test_parse_prompt(text, expected):
    assert parse_prompt(text) == expected


# --- dataset -------------------------------------------------------------------------------


def test_dataset_is_deterministic_and_follows_the_contract():
    a = sample_training_batch(200, torch.Generator().manual_seed(7))
    b = sample_training_batch(200, torch.Generator().manual_seed(7))
    assert torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"]
    assert a["images"].shape == (200, 3, 64, 64)
    cams = a["cameras"]
    assert float(cams.distance.min()) >= 1.8 and float(cams.distance.max()) <= 2.2
    fovy = torch.rad2deg(cams.fovy)
    assert float(fovy.min()) >= 35.0 - 1e-4 and float(fovy.max()) <= 45.0 + 1e-4
    assert float(cams.elevation.min()) >= -10.0 and float(cams.elevation.max()) <= 60.0
    views = cams.view_names()
    n_empty = n_view = 0
    for i, text in enumerate(a["captions"]):
        if text == "":
            n_empty += 1
            continue
        colour, shape = list(COLOURS)[int(a["colour_idx"][i])], SHAPES[int(a["shape_idx"][i])]
        assert parse_prompt(text) == (colour, shape)
        if "view" in text:
            n_view += 1
            assert text == caption(colour, shape, views[i])
    assert 5 <= n_empty <= 40  # p = 0.1 of 200
    assert 60 <= n_view <= 120  # p = 0.5 of the ~180 non-empty
    c = sample_training_batch(200, torch.Generator().manual_seed(8))
    assert not torch.equal(a["images"], c["images"])


def test_write_dataset(tmp_path):
    write_dataset(tmp_path, 4, seed=1)
    lines = (tmp_path / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and (tmp_path / json.loads(lines[0])["file"]).is_file()


# --- evaluator -----------------------------------------------------------------------------


def _truth_views(colour: str, shape: str, rot: float = 0.0, ss: int = ev.EVAL_SUPERSAMPLE):
    cams = evaluation_cameras(64)
    s = torch.full((8,), SHAPES.index(shape))
    c = torch.full((8,), list(COLOURS).index(colour))
    return render_ground_truth(s, c, cams, supersample=ss, rotation_deg=rot)


@pytest.mark.parametrize("colour,shape", [("red", "cube"), ("orange", "torus"), ("green", "cone")])
def test_ground_truth_scores_perfectly(colour, shape):
    rgb, alpha = _truth_views(colour, shape)
    m = ev.evaluate_views(rgb, alpha, colour, shape)
    assert m["iou"] == pytest.approx(1.0) and m["colour_error"] == pytest.approx(0.0, abs=1e-6)
    assert m["identification"] == 1.0


def test_training_style_renders_score_nearly_perfectly():
    """2 x 2-supersampled truth differs from the evaluator's 3 x 3 truth only at edge pixels."""
    rgb, alpha = _truth_views("green", "torus", ss=2)
    m = ev.evaluate_views(rgb, alpha, "green", "torus")
    assert m["iou"] > 0.95 and m["colour_error"] < 0.02 and m["identification"] == 1.0


def test_wrong_colour_or_shape_is_identified_as_wrong():
    rgb, alpha = _truth_views("blue", "pyramid")
    wrong_colour = ev.evaluate_views(rgb, alpha, "purple", "pyramid")
    assert wrong_colour["identification"] == 0.0 and wrong_colour["colour_error"] > 0.05
    assert wrong_colour["iou"] == pytest.approx(1.0)
    wrong_shape = ev.evaluate_views(rgb, alpha, "blue", "cone")
    assert wrong_shape["identification"] == 0.0 and wrong_shape["iou"] < 0.9


def test_a_shape_only_target_is_scored_in_the_colour_it_is_identified_as():
    assert ev.parse_target("a cube") == (None, "cube") and ev.parse_target(" An  Torus. ") == (None, "torus")
    assert ev.parse_target("a red cube") == ("red", "cube") and ev.parse_target("a chair") is None
    rgb, alpha = _truth_views("green", "cube")
    m = ev.evaluate_views(rgb, alpha, None, "cube")
    assert m["identified_colour"] == "green" and m["identification"] == 1.0
    assert m["iou"] == pytest.approx(1.0) and m["colour_error"] == pytest.approx(0.0, abs=1e-6)
    # Five views of a green cube and three of a red one: identified green; every view is a cube.
    red, _ = _truth_views("red", "cube")
    rgb[5:] = red[5:]
    m = ev.evaluate_views(rgb, alpha, None, "cube")
    assert m["identified_colour"] == "green" and m["identification"] == 1.0 and m["colour_error"] > 0.05
    rgb, alpha = _truth_views("blue", "sphere")
    m = ev.evaluate_views(rgb, alpha, None, "cube")
    assert m["identification"] == 0.0 and m["identified_colour"] == "blue" and m["iou"] < 0.9
    assert ev.identified_colour([ev.object_index("red", "cube")] * 2 + [ev.object_index("blue", "cube")] * 2, "cube") == "red"


def test_rotated_cube_found_by_rotation_search():
    rgb, alpha = _truth_views("yellow", "cube", rot=30.0)
    m = ev.evaluate_views(rgb, alpha, "yellow", "cube")
    assert m["iou"] == pytest.approx(1.0) and m["rotation_deg"] == 30
    assert m["colour_error"] < 1e-5 and m["identification"] == 1.0


def test_empty_result_scores_zero():
    m = ev.evaluate_views(torch.ones(8, 3, 64, 64), torch.zeros(8, 1, 64, 64), "red", "sphere")
    assert m["iou"] == 0.0 and m["colour_error"] == 1.0


def test_run_dir_round_trip(tmp_path):
    rgb, alpha = _truth_views("purple", "torus")
    ev.write_eval_views(tmp_path, rgb, alpha)
    (tmp_path / "run_info.json").write_text(json.dumps({"prompt": "A purple torus, side view"}))
    m = ev.evaluate_run_dir(tmp_path)
    assert (m["colour"], m["shape"]) == ("purple", "torus")
    assert m["iou"] > 0.99 and m["colour_error"] < 0.005 and m["identification"] == 1.0  # 8-bit PNGs
    assert json.loads((tmp_path / "metrics.json").read_text())["iou"] == m["iou"]
    assert ev.main([str(tmp_path)]) == 0


def test_run_dir_prompt_from_config_and_bad_prompt(tmp_path):
    rgb, alpha = _truth_views("red", "sphere")
    ev.write_eval_views(tmp_path, rgb, alpha)
    (tmp_path / "config.yaml").write_text("seed: 0\nprompt: a red sphere\n")
    assert ev.evaluate_run_dir(tmp_path)["identification"] == 1.0
    (tmp_path / "config.yaml").write_text("prompt: a DSLR photo of a peacock\n")
    with pytest.raises(ValueError, match="peacock"):
        ev.evaluate_run_dir(tmp_path)


def test_bad_view_shapes_are_rejected():
    with pytest.raises(ValueError, match="rgb views"):
        ev.evaluate_views(torch.ones(8, 3, 32, 32), torch.zeros(8, 1, 32, 32), "red", "cube")


def test_classify_samples_recognises_ground_truth():
    """Truth from random training cameras (random d and fovy) lands in its own class.

    Uses the bank cached under ~/.cache/scorelift (rendered once, about 15 s on 2 CPU cores).
    """
    batch = sample_training_batch(144, torch.Generator().manual_seed(3), p_empty=0.0)
    result = ev.classify_samples(batch["images"], batch["captions"])
    assert result["accuracy"] >= 0.9, result
    pairs = zip(batch["colour_idx"].tolist(), batch["shape_idx"].tolist())
    prompts = {object_prompt(list(COLOURS)[c], SHAPES[s]) for c, s in pairs}
    assert set(result["per_prompt"]) == prompts and len(result["predictions"]) == 144
    wrong = ev.classify_samples(batch["images"][:4], "a blue sphere")
    assert wrong["accuracy"] <= 0.5
    with pytest.raises(ValueError, match="peacock"):
        ev.classify_samples(batch["images"][:1], ["a peacock"])


def test_classify_contract_grid_and_bank_cache(tmp_path, monkeypatch):
    """On a small grid: renders at grid cameras are classified exactly; the bank file reads back."""
    monkeypatch.setenv("SCORELIFT_CACHE", str(tmp_path))
    monkeypatch.setattr(ev, "_classify_bank_cache", {})
    monkeypatch.setattr(ev, "_CLASSIFY_ELEVATIONS", (0, 30))
    monkeypatch.setattr(ev, "_CLASSIFY_AZIMUTHS", (0, 90, 180, 270))
    cams = ev.classify_cameras(40.0)
    objects = torch.arange(36)
    images, _ = render_ground_truth(objects % 6, objects // 6, cams[[i % 8 for i in range(36)]])
    prompts = [object_prompt(*o) for o in ALL_OBJECTS]
    result = ev.classify_samples(images, prompts, fovys=(40.0,))
    assert result["accuracy"] == 1.0 and result["predictions"] == prompts
    assert len(list(tmp_path.glob("shapes_world_classify_bank_*.pt"))) == 1
    monkeypatch.setattr(ev, "_classify_bank_cache", {})
    assert ev.classify_samples(images, prompts, fovys=(40.0,))["predictions"] == prompts
