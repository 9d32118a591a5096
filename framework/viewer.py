"""A live viewer in the browser, in the convention researchers know from nerfstudio (viser): the
run's own geometry drawn by its own renderer from the camera the user drags, with the step, the
loss and a pause button.

- ``viewer=true`` (shorthand for ``viewer.enabled=true``) opens it while a run trains
  (``LiveViewer``, a Lightning callback); ``scorelift view RUN`` opens it on a finished or running
  run (``scorelift.view_run``).
- It listens on ``viewer.host`` (default 127.0.0.1: this machine only) and ``viewer.port``.
- Rendering happens in the thread that trains (between steps) or in the view command's loop;
  viser's callbacks only note that a client's camera moved. So a render never races the optimizer,
  and with nobody connected the viewer costs a status update every ``viewer.status_every`` steps.
- viser is an optional dependency (the ``viewer`` extra), imported only when a viewer starts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .data.cameras import CameraBatch, look_at_c2w
from .errors import ConfigError
from .maths.splat import quaternion_to_rotation

log = logging.getLogger(__name__)

# OpenCV camera axes (viser: +z forward, +y down) -> OpenGL ones (ours: -z forward, +y up)
CV_TO_GL = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


@dataclass(kw_only=True)
class ViewerConfig:
    """The ``viewer`` section."""

    enabled: bool = False  # open the viewer while the run trains (viewer=true)
    host: str = "127.0.0.1"  # 127.0.0.1: this machine only; 0.0.0.0: every network interface
    port: int = 7007
    resolution: int = 256  # pixels of the longer side of a frame (latent renders: after decoding)
    refresh_every: int = 10  # steps between re-renders for connected clients while training
    status_every: int = 10  # steps between updates of the step and loss shown


def check_viewer_config(node) -> ViewerConfig:
    """The parsed ``viewer`` section; ConfigError for a value out of range or, when it is enabled,
    a missing viser."""
    c = ViewerConfig(**{k: node[k] for k in ViewerConfig.__dataclass_fields__ if k in node})
    if not (isinstance(c.port, int) and 1 <= c.port <= 65535):
        raise ConfigError(f"viewer.port={c.port!r} must be a TCP port, 1 to 65535 (default 7007).")
    if not (isinstance(c.resolution, int) and 16 <= c.resolution <= 4096):
        raise ConfigError(f"viewer.resolution={c.resolution!r} must be 16 to 4096 pixels (default 256).")
    for key in ("refresh_every", "status_every"):
        if not (isinstance(getattr(c, key), int) and getattr(c, key) >= 1):
            raise ConfigError(f"viewer.{key}={getattr(c, key)!r} must be a positive number of steps.")
    if c.enabled:
        require_viser()
    return c


def require_viser() -> None:
    try:
        import viser  # noqa: F401
    except ImportError:
        raise ConfigError("The viewer needs the viser package, which is not installed: pip install "
                          "'scorelift[viewer]' (or pip install viser), or leave the viewer off (viewer=false).") from None


def client_cameras(wxyz, position, fovy: float, aspect: float, resolution: int) -> tuple[CameraBatch, int]:
    """A viser camera (OpenCV axes; ``wxyz``, ``position``: camera-to-world) -> one square camera
    of ``resolution`` pixels whose field of view covers the browser's canvas in both directions,
    and the number of rows of it the canvas shows (its middle ones), so the frame keeps its
    proportions whatever the window's shape."""
    rotation = quaternion_to_rotation(torch.tensor([[float(v) for v in wxyz]]))[0]
    c2w = torch.eye(4)
    c2w[:3, :3] = rotation @ CV_TO_GL
    c2w[:3, 3] = torch.tensor([float(v) for v in position])
    wide = max(1.0, aspect)  # the square covers the wider of the two directions
    fov = 2 * math.atan(math.tan(fovy / 2) * wide)
    rows = max(1, min(resolution, round(resolution / aspect))) if aspect > 1 else resolution
    distance = float(c2w[:3, 3].norm())
    cams = CameraBatch(c2w=c2w[None], fovy=torch.tensor([fov]), elevation=torch.zeros(1), azimuth=torch.zeros(1),
                       distance=torch.tensor([distance]), height=resolution, width=resolution)
    return cams, rows


def render_side(system, resolution: int) -> int:
    """Pixels of the square render whose (decoded) frame is ``resolution`` pixels wide: a latent
    render is decoded at the VAE's scale (8 for Stable Diffusion), so it is drawn that much smaller."""
    scale = int(getattr(system.prior, "vae_scale_factor", 1)) if system.is_latent else 1
    return max(8, resolution // max(1, scale))


def frame(system, cams: CameraBatch, rows: int) -> np.ndarray:
    """The system's render from ``cams`` (one camera) as [rows', W, 3] uint8, its middle rows."""
    rgb, _ = system.render_images(cams.to(system.device))  # [1, 3, H', W'] in [0, 1]
    image = rgb[0].permute(1, 2, 0).clamp(0, 1)
    keep = round(rows * image.shape[0] / cams.height)
    top = (image.shape[0] - keep) // 2
    return (image[top:top + keep] * 255).round().to(torch.uint8).cpu().numpy()


class LiveView:
    """A viser server showing one system: a status panel (step, loss), a pause checkbox, and a
    frame rendered for each client's camera by ``serve`` (call it from the thread that owns the
    system)."""

    def __init__(self, cfg: ViewerConfig, title: str, start_elevation: float = 20.0, start_distance: float = 2.5):
        import viser

        self.cfg = cfg
        self.server = viser.ViserServer(host=cfg.host, port=cfg.port, label=title, verbose=False)
        self.port = self.server.get_port()
        self.status = self.server.gui.add_markdown("**step** - · **loss** -")  # updated by set_status
        self.paused = self.server.gui.add_checkbox("Pause training", initial_value=False)
        self._moved: set[int] = set()
        self._lock = threading.Lock()
        start = look_at_c2w(torch.tensor([start_elevation]), torch.tensor([30.0]), torch.tensor([start_distance]))[0]
        self._start_position = start[:3, 3].tolist()

        @self.server.on_client_connect
        def _connected(client) -> None:
            client.camera.up_direction = (0.0, 0.0, 1.0)  # the world's up (+z)
            client.camera.position = self._start_position
            client.camera.look_at = (0.0, 0.0, 0.0)
            self._mark(client.client_id)

            @client.camera.on_update
            def _moved(camera) -> None:
                self._mark(client.client_id)

    def _mark(self, client_id: int) -> None:
        with self._lock:
            self._moved.add(client_id)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    def has_clients(self) -> bool:
        return bool(self.server.get_clients())

    def set_status(self, step: int, loss: float | None) -> None:
        loss_text = "-" if loss is None or not math.isfinite(loss) else f"{loss:.4g}"
        self.status.content = f"**step** {step} · **loss** {loss_text}"

    def serve(self, system, everyone: bool = False) -> int:
        """Render a frame for every client whose camera moved since its last frame (all of them
        with ``everyone``); returns how many were rendered."""
        clients = self.server.get_clients()
        with self._lock:
            todo = set(clients) if everyone else self._moved & set(clients)
            self._moved -= todo
        for client_id in todo:
            client = clients[client_id]
            camera = client.camera
            cams, rows = client_cameras(camera.wxyz, camera.position, camera.fov, camera.aspect,
                                        render_side(system, self.cfg.resolution))
            client.scene.set_background_image(frame(system, cams, rows), format="jpeg")
        return len(todo)

    def wait_while_paused(self, system, stop=None) -> None:
        """Hold the caller (training) while the pause box is ticked, still serving frames; a stop
        signal (``stop.requested``) ends the pause."""
        while self.paused.value and not (stop is not None and stop.requested):
            self.serve(system)
            time.sleep(0.05)

    def close(self) -> None:
        self.server.stop()


def start_view(cfg: ViewerConfig, title: str) -> LiveView:
    view = LiveView(cfg, title)
    log.info("Viewer: %s (open it in a browser; %s)", view.url,
             "this machine only" if cfg.host in ("127.0.0.1", "localhost") else f"listening on {cfg.host}")
    return view
