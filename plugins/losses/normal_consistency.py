"""Normal consistency of a mesh: neighbouring faces should face the same way.

    loss = mean over interior edges of (1 - n_a . n_b)

with n_a, n_b the unit normals of the two faces sharing the edge: 0 for a flat surface, 2 for a
fold back onto itself. It smooths the mesh stage's surface without shrinking it (Magic3D,
threestudio's ``lambda_normal_consistency``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorelift.data.cameras import CameraBatch
from scorelift.interfaces.loss import Loss
from scorelift.interfaces.renderer import RenderOutput
from scorelift.maths.meshes import face_normals, face_pairs
from scorelift.registry import register


@dataclass(kw_only=True)
class NormalConsistencyConfig:
    """The ``normal-consistency`` loss has no options; it reads the rendered mesh (a rasteriser's)."""


@register("loss", "normal-consistency")
class NormalConsistencyLoss(Loss):
    """render.extras["mesh"] {"vertices" [M, 3], "faces" [K, 3]} -> scalar in [0, 2]."""

    # one line for `scorelift --list`
    summary = "Mesh smoothness: 1 - cosine between the normals of faces that share an edge."

    Config = NormalConsistencyConfig
    reads = ("mesh",)

    def __call__(self, render: RenderOutput, cameras: CameraBatch) -> torch.Tensor:
        vertices, faces = render.extras["mesh"]["vertices"], render.extras["mesh"]["faces"]
        pairs = face_pairs(faces)
        if pairs.shape[0] == 0:
            return vertices.sum() * 0.0  # no surface yet: nothing to smooth, and no NaN
        n = face_normals(vertices, faces)
        return (1.0 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(dim=-1)).mean()
