"""Gaussian splats as the standard 3D Gaussian splatting ``.ply`` (what common splat viewers open),
written and read with numpy alone.

One binary little-endian ``vertex`` element, float32 properties in 3DGS's order: x y z, nx ny nz
(zeros), f_dc_0.. (one per feature channel), f_rest_* (the higher spherical-harmonic coefficients,
channel by channel: f_rest_{c * (K - 1) + k - 1} is coefficient k of channel c), opacity (a logit),
scale_0..2 (log standard deviations), rot_0..3 (the quaternion, w x y z). RGB splats are in 3DGS's
colour convention (colour = 0.5 + 0.2821 f_dc at degree 0); latent splats (no viewer can show
them) keep their C channels as f_dc_0..C-1.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)


def property_names(n_features: int, n_rest: int) -> list[str]:
    """The vertex properties of a file of ``n_features`` channels and ``n_rest`` = K - 1 higher
    SH coefficients per channel, in order."""
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{c}" for c in range(n_features)]
            + [f"f_rest_{i}" for i in range(n_features * n_rest)] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


def write_ply(geometry, path: Path) -> dict:
    """Write a Gaussian geometry's splats to ``path`` atomically; returns {"path", "n_gaussians", "sh_degree"}."""
    with torch.no_grad():
        means = geometry.means.detach().float().cpu()
        N, C = means.shape[0], geometry.sh_dc.shape[1]
        rest = geometry.sh_rest.detach().float().cpu()  # [N, K - 1, C]
        columns = [means, torch.zeros(N, 3), geometry.sh_dc.detach().float().cpu(),
                   rest.transpose(1, 2).reshape(N, -1),  # channel-major, as 3DGS writes it
                   geometry.opacity_logits.detach().float().cpu()[:, None],
                   geometry.log_scales.detach().float().cpu(),
                   torch.nn.functional.normalize(geometry.quats.detach().float().cpu(), dim=-1)]
    names = property_names(C, rest.shape[1])
    table = torch.cat(columns, dim=1).numpy().astype("<f4")
    records = np.empty(N, dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        records[n] = table[:, i]
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {N}",
                        *[f"property float {n}" for n in names], "end_header"]) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(records.tobytes())
    tmp.replace(path)  # atomic: a viewer never opens half a file
    if geometry.feature_kind != "rgb":
        log.info("The splats hold %d latent channels (f_dc_0..%d): a splat viewer shows them as colours, not as "
                 "the prior would decode them.", C, C - 1)
    sh_degree = int(round(math.sqrt(rest.shape[1] + 1))) - 1
    return {"path": str(path), "n_gaussians": N, "sh_degree": sh_degree}


def read_ply(path: Path) -> dict[str, torch.Tensor]:
    """A 3DGS ``.ply`` -> {"means" [N, 3], "log_scales" [N, 3], "quats" [N, 4], "opacity_logits" [N],
    "sh_dc" [N, C], "sh_rest" [N, K - 1, C]}. ConfigError naming what is missing or malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{str(path)!r} cannot be read as a splat file ({exc.strerror or exc}).") from None
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ConfigError(f"{str(path)!r} is not a PLY file (no 'ply' ... 'end_header' header).")
    lines = data[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ConfigError(f"{str(path)!r}: only binary little-endian PLY files of splats are read (the format 3D "
                          f"Gaussian splatting writes).")
    count, names, element = None, [], None
    for line in lines:
        words = line.split()
        if words[:1] == ["element"]:
            element = words[1]
            if element == "vertex":
                count = int(words[2])
        elif words[:1] == ["property"] and element == "vertex":
            if words[1] != "float":
                raise ConfigError(f"{str(path)!r}: vertex property {words[-1]!r} is {words[1]}, not float.")
            names.append(words[-1])
    needed = ["x", "y", "z", "f_dc_0", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in needed if n not in names]
    if count is None or missing:
        raise ConfigError(f"{str(path)!r} is not a 3D Gaussian splatting file: its vertex element lacks "
                          f"{missing or ['the vertex element']}.")
    records = np.frombuffer(data, dtype=[(n, "<f4") for n in names], count=count, offset=end + len(b"end_header\n"))

    def cols(prefix: str) -> torch.Tensor:
        found = sorted((int(n[len(prefix):]), n) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())
        return torch.from_numpy(np.stack([records[n] for _, n in found], axis=1).astype(np.float32)) if found \
            else torch.zeros((count, 0))

    dc = cols("f_dc_")
    rest = cols("f_rest_")
    C = dc.shape[1]
    if rest.shape[1] % C:
        raise ConfigError(f"{str(path)!r}: {rest.shape[1]} f_rest values per splat do not split into {C} channels.")
    K1 = rest.shape[1] // C
    xyz = np.stack([records["x"], records["y"], records["z"]], axis=1).astype(np.float32)
    return {"means": torch.from_numpy(xyz),
            "log_scales": cols("scale_"), "quats": cols("rot_"),
            "opacity_logits": torch.from_numpy(records["opacity"].astype(np.float32)),
            "sh_dc": dc, "sh_rest": rest.reshape(count, C, K1).transpose(1, 2).contiguous()}
