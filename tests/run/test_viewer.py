"""The live viewer in a real browser: ``scorelift view RUN`` serves a finished run whose voxel grid
holds a red cube, headless Chromium opens the page, and its screenshot shows the cube where the
viewer's starting camera sees it (red in the middle of the page, the white background around);
bad viewer settings fail at start-up. Chromium comes from ``tests/chromium.sh`` (Debian's package,
installed when missing, as the SLURM tests install theirs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.run.test_system import small_run_overrides

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[2]
LATENT = 8  # the conftest tiny pipeline's latent size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def red_pixels(image: np.ndarray) -> np.ndarray:
    """[H, W] True where a screenshot's pixel is the cube's red."""
    rgb = image[..., :3].astype(int)
    return (rgb[..., 0] > 120) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)


def screenshot_when(chromium: str, url: str, shows, tmp_path: Path, timeout: float = 90.0) -> np.ndarray:
    """Open ``url`` in headless Chromium (software WebGL) and take 800 x 600 screenshots through
    the DevTools protocol until ``shows(image)`` holds (the frame arrives over the viewer's
    websocket when its server has rendered it) or ``timeout`` passes; returns the last one."""
    import base64
    import io
    import json
    import urllib.request

    import imageio.v3 as iio
    from websockets.sync.client import connect

    debug_port = free_port()
    browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                                "--enable-unsafe-swiftshader", "--window-size=800,600", f"--remote-debugging-port={debug_port}",
                                f"--user-data-dir={tmp_path / 'chromium'}", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, pages = time.monotonic() + timeout, []
        while not pages and time.monotonic() < deadline:
            try:
                listed = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json", timeout=5).read())
                pages = [p for p in listed if p.get("type") == "page" and p.get("url", "").startswith(url)]
            except OSError:
                time.sleep(0.5)
        assert pages, "Chromium opened no page"
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as devtools:
            image, n = None, 0
            while time.monotonic() < deadline:
                n += 1
                devtools.send(json.dumps({"id": n, "method": "Page.captureScreenshot", "params": {"format": "png"}}))
                reply = json.loads(devtools.recv(timeout=30))
                while reply.get("id") != n:
                    reply = json.loads(devtools.recv(timeout=30))
                image = iio.imread(io.BytesIO(base64.b64decode(reply["result"]["data"])))
                if shows(image):
                    break
                time.sleep(1.0)
        iio.imwrite(tmp_path / "shot.png", image)  # kept for a reader of a failed run (pytest --basetemp)
        return image
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def red_cube_run(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """A 2-step dreamfusion run (RGB voxel grid) whose checkpoint then gets a red cube: density 20
    inside |x|, |y|, |z| <= 0.35, ~0 outside, colour (0.86, 0.16, 0.16) everywhere."""
    run_dir = tmp_path_factory.mktemp("viewer") / "run"
    done = subprocess.run([sys.executable, str(REPO / "launch.py"),
                           *small_run_overrides(tiny_pipeline_dir, LATENT, "dreamfusion", "sds", 2),
                           "system.views.n_frames=2", "evaluators=[]", f"hydra.run.dir={run_dir}"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    density = state["state_dict"]["geometry.density_grid"]
    n = density.shape[-1]
    axis = torch.linspace(-1.0, 1.0, n)  # small_run_overrides: bbox_radius 1
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    inside = (x.abs() <= 0.35) & (y.abs() <= 0.35) & (z.abs() <= 0.35)
    state["state_dict"]["geometry.density_grid"] = torch.where(inside, 21.0, -4.0).expand_as(density).clone()
    red = torch.logit(torch.tensor([0.86, 0.16, 0.16]))
    features = state["state_dict"]["geometry.feature_grid"]
    state["state_dict"]["geometry.feature_grid"] = red.view(1, 3, 1, 1, 1).expand_as(features).clone()
    torch.save(state, ckpt)
    return run_dir


def test_the_browser_shows_the_runs_object(red_cube_run, tmp_path):
    chromium = subprocess.run(["bash", str(REPO / "tests" / "chromium.sh")], capture_output=True, text=True,
                              timeout=900)
    assert chromium.returncode == 0, chromium.stderr[-2000:]
    port = free_port()
    before = snapshot(red_cube_run)
    viewer = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "view", str(red_cube_run),
                               f"viewer.port={port}", "viewer.resolution=128"], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, seen = time.monotonic() + 120, ""
        while "Viewer: http://127.0.0.1" not in seen and time.monotonic() < deadline and viewer.poll() is None:
            seen += viewer.stdout.readline()
        assert f"Viewer: http://127.0.0.1:{port}" in seen, seen[-3000:]
        image = screenshot_when(chromium.stdout.strip().splitlines()[-1], f"http://127.0.0.1:{port}",
                                lambda img: red_pixels(img)[150:450, 200:600].sum() > 500, tmp_path)
    finally:
        viewer.send_signal(signal.SIGTERM)
        rest = viewer.communicate(timeout=30)[0]
    assert viewer.returncode == 0, rest[-2000:]
    H, W = image.shape[:2]
    red = red_pixels(image)
    middle = red[H // 4: 3 * H // 4, W // 4: 3 * W // 4]
    assert middle.sum() > 500, middle.sum()  # the cube, in the middle of the page
    assert red[:, : W // 10].mean() < 0.01 and red[:, -W // 10:].mean() < 0.01  # white left and right of it
    assert snapshot(red_cube_run) == before  # looking at a run writes nothing into it


@pytest.mark.parametrize("over, words", [
    ("viewer.port=70000", ["viewer.port=70000", "1 to 65535"]),
    ("viewer.resolution=4", ["viewer.resolution=4", "16 to 4096"]),
])
def test_bad_viewer_settings_fail_at_start_up(red_cube_run, over, words):
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "view", str(red_cube_run), over], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def test_training_with_the_viewer_open_trains_exactly_as_without(tiny_pipeline_dir, tmp_path):
    """viewer=true starts the server at the first step and stops it at the end; with nobody
    connected the run's parameters are bit-identical to a run without it."""
    finals = {}
    for name, extra in (("plain", []), ("viewed", ["viewer=true", f"viewer.port={free_port()}"])):
        run_dir = tmp_path / name
        done = subprocess.run([sys.executable, str(REPO / "launch.py"),
                               *small_run_overrides(tiny_pipeline_dir, LATENT, "sjc", "paas", 4),
                               "system.views.n_frames=2", "evaluators=[]", f"hydra.run.dir={run_dir}", *extra],
                              cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        finals[name] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        if name == "viewed":
            assert "Viewer: http://127.0.0.1:" in done.stderr + done.stdout
    assert all(torch.equal(finals["plain"][k], finals["viewed"][k]) for k in finals["plain"])


def test_the_view_shows_the_loss_the_run_logged_at_its_step(tmp_path):
    from scorelift.view_run import logged_loss

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,loss,step,train/loss_guidance\n0,3.5,9,3.4\n0,,10,\n0,2.25,19,2.2\n0,1.5,29,1.4\n")
    assert logged_loss(tmp_path, 25) == 2.25  # the last row with a loss at or before the checkpoint's step
    assert logged_loss(tmp_path, 100) == 1.5
    assert logged_loss(tmp_path, 5) is None and logged_loss(tmp_path / "none", 5) is None


def quaternion_of(rotation: torch.Tensor) -> list[float]:
    """w, x, y, z of a rotation matrix (the largest-diagonal branch suffices for these views)."""
    m = rotation.double()
    w = torch.sqrt(torch.clamp(1 + m[0, 0] + m[1, 1] + m[2, 2], min=1e-12)) / 2
    return [float(w), float((m[2, 1] - m[1, 2]) / (4 * w)), float((m[0, 2] - m[2, 0]) / (4 * w)),
            float((m[1, 0] - m[0, 1]) / (4 * w))]


@pytest.mark.parametrize("elevation, azimuth", [(20.0, 30.0), (45.0, -120.0), (-5.0, 170.0)])
def test_the_browsers_camera_becomes_the_same_camera_in_the_renderers_axes(elevation, azimuth):
    """viser gives camera-to-world in OpenCV axes (+z forward, +y down): a camera on the sphere
    looking at the origin, given that way, must come out as look_at_c2w's OpenGL camera; a square
    canvas keeps the field of view, a wide one widens it to cover the canvas and shows fewer rows."""
    import math

    from scorelift.data.cameras import look_at_c2w
    from scorelift.viewer import CV_TO_GL, client_cameras

    gl = look_at_c2w(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.5]))[0]
    cv_rotation = gl[:3, :3] @ CV_TO_GL  # CV_TO_GL is its own inverse
    cams, rows = client_cameras(quaternion_of(cv_rotation), gl[:3, 3].tolist(), math.radians(40), 1.0, 64)
    assert torch.allclose(cams.c2w[0], gl, atol=1e-5)
    assert rows == 64 and cams.fovy[0].item() == pytest.approx(math.radians(40))
    wide, rows = client_cameras(quaternion_of(cv_rotation), gl[:3, 3].tolist(), math.radians(40), 2.0, 64)
    assert rows == 32 and math.tan(wide.fovy[0].item() / 2) == pytest.approx(2 * math.tan(math.radians(20)))
