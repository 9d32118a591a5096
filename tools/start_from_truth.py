"""Does a prior's score keep the true object? Start a voxel-grid run from the world's cube and train on.

    python tools/start_from_truth.py --out outputs/truth-red-cube --colour red --steps 500 \
        -- prior=pixel-cubes guidance.sigma_schedule=random guidance.t_min=20 guidance.t_max=150

It runs ``scorelift <overrides> trainer.max_steps=1`` into ``--out``, replaces the geometry in the
checkpoint with the world's cube (raw density ``--inside`` in the cube; outside it, a corner voxel's
value after that step, about the grid's initial value; colours ``albedo * shade`` of the nearest
face's normal, the world's Lambertian light baked in, as a view-independent field reproduces it), drops the optimizer's state, scores that start
(``mode=test``: the truth as the grid holds it, IoU below 1 from the grid's resolution and
interpolation), and resumes for ``--steps`` more steps with evaluations every ``--eval-every``: the
run's ``eval_curve.csv`` shows how far the guidance moves the truth. Only the cube (the
pixel-cubes prior's shape) and RGB voxel grids (``feature_activation=sigmoid``, the shapes and
pixel-cubes presets) are handled.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from scorelift.shapes_world import world
from scorelift.shapes_world.render import CUBE_H


def cube_grid(colour: str, resolution: int, radius: float, inside: float, outside: float):
    """(raw density [1, 1, R, R, R], sigmoid features [1, 3, R, R, R]) of the world's cube on the
    grid's points over [-radius, radius]^3 (indexed [z, y, x], as the voxel grid stores them)."""
    axis = torch.linspace(-radius, radius, resolution)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    solid = (points.abs() <= CUBE_H).all(dim=-1)
    # The nearest face's outward normal: the axis of the largest |coordinate|, with its sign.
    k = points.abs().argmax(dim=-1, keepdim=True)
    normals = torch.zeros_like(points).scatter_(1, k, points.gather(1, k).sign())
    light = torch.tensor(world.LIGHT_DIR, dtype=torch.float32)
    shade = world.AMBIENT + world.DIFFUSE * (normals @ light).clamp_min(0.0)
    rgb = (torch.tensor(world.COLOURS[colour])[None] * shade[:, None]).clamp(1e-3, 1 - 1e-3)
    density = torch.where(solid, torch.tensor(inside), torch.tensor(outside))
    shape_r = (resolution,) * 3
    return density.reshape(1, 1, *shape_r), torch.logit(rgb).t().reshape(1, 3, *shape_r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the run directory to create")
    ap.add_argument("--colour", default="red", choices=list(world.COLOURS))
    ap.add_argument("--steps", type=int, default=500, help="steps trained from the truth")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--inside", type=float, default=8.0, help="raw density value inside the object")
    ap.add_argument("overrides", nargs="*", help="scorelift overrides (after --)")
    args = ap.parse_args(argv)
    launch = [sys.executable, "-m", "scorelift", *args.overrides, f"hydra.run.dir={args.out}"]
    subprocess.run([*launch, "trainer.max_steps=1", "trainer.eval_every=0"], check=True)
    ckpt_path = Path(args.out) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    state = ckpt["state_dict"]
    grid = state["geometry.density_grid"]
    radius = float(state["geometry.bbox"][1, 0])
    outside = float(grid.flatten()[0])  # a corner voxel, outside every object: about the grid's initial value
    density, features = cube_grid(args.colour, grid.shape[-1], radius, args.inside, outside)
    state["geometry.density_grid"], state["geometry.feature_grid"] = density, features
    for optimizer in ckpt["optimizer_states"]:
        optimizer["state"] = {}  # Adam restarts at the truth
    torch.save(ckpt, ckpt_path)
    subprocess.run([*launch[:-1], f"resume={args.out}", "mode=test"], check=True)
    print("the truth on the grid:", (Path(args.out) / "metrics.json").read_text())
    subprocess.run([*launch[:-1], f"resume={args.out}", f"trainer.max_steps={args.steps + 1}",
                    f"trainer.eval_every={args.eval_every}"], check=True)
    print((Path(args.out) / "eval_curve.csv").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
