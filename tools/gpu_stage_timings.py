"""Step time and peak memory of the mesh stage or of the splats beside the density fields', one
run at a time.

    python tools/gpu_stage_timings.py --set mesh|splats --out timings.json --sd /tmp/sd21 [--steps 30]

Each configuration runs ``--steps`` optimizer steps through launch.py (SDS, fp32 parts, the
prior's own precision); its timing.json gives the median step time (the first 5 steps excluded,
CUDA synchronised) and the peak memory (CUDA max allocated), read as tools/gpu_method_timings.py
reads them. The mesh stage starts from its sphere (no init_from): its cost per step depends on
the mesh's size, which the sphere's resolution sets. The splats start at their count, with no
densification within the timed steps, drawn by each backend of the splatter; the set ends with a
whole system=gaussian run of 500 steps (``--whole-steps``) timed end to end. Build the
SD-2.1-base-shaped random pipeline with tools/build_random_sd_pipeline.py first; without --sd
only the shapes prior is timed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from gpu_method_timings import timed_run  # noqa: E402  (one timed launch.py run, as the methods' timings)

SIZE_512 = ["data.height=512", "data.width=512", "system.views.resolution=512"]


def splats(n: int, backend: str) -> list[str]:
    """system=gaussian with n Gaussians from the start (scaled so that they cover about the same
    surface whatever n) and no densification while timed, drawn by ``backend``."""
    scale = 0.02 * (50_000 / n) ** 0.5
    return ["system=gaussian", f"geometry.n_gaussians={n}", f"geometry.max_gaussians={n}", f"geometry.init_scale={scale:.4g}",
            "geometry.init_opacity=0.3", "geometry.densify_from=100000", f"renderer.backend={backend}"]


MESH = {  # name -> (overrides, priors it runs on: "shapes", "sd")
    "density field, voxel grid 100^3, 64 x 64 renders": (["system=dreamfusion", "geometry.resolution=100"], ("shapes", "sd")),
    "density field, voxel grid 100^3, 512 x 512 renders": (["system=dreamfusion", "geometry.resolution=100", *SIZE_512], ("sd",)),
    "mesh stage, DMTet 64^3, 64 x 64 renders": (["system=magic3d-fine", "geometry.resolution=64"], ("shapes", "sd")),
    "mesh stage, DMTet 64^3, 512 x 512 renders": (["system=magic3d-fine", "geometry.resolution=64", *SIZE_512], ("sd",)),
    "mesh stage, DMTet 128^3, 512 x 512 renders": (["system=magic3d-fine", "geometry.resolution=128", *SIZE_512], ("sd",)),
}
SPLATS = {
    "hash grid, 512 x 512 renders": (["system=dreamfusion", "geometry=hash-grid", *SIZE_512], ("sd",)),
    "splats 50k, gsplat, 512 x 512 renders": ([*splats(50_000, "gsplat"), *SIZE_512], ("sd",)),
    "splats 50k, pure PyTorch, 512 x 512 renders": ([*splats(50_000, "torch"), *SIZE_512], ("sd",)),
    "splats 500k, gsplat, 512 x 512 renders": ([*splats(500_000, "gsplat"), *SIZE_512], ("sd",)),
    "splats 500k, pure PyTorch, 512 x 512 renders": ([*splats(500_000, "torch"), *SIZE_512], ("sd",)),
    "splats 5k, pure PyTorch, 64 x 64 renders": (splats(5_000, "torch"), ("shapes",)),
}
SETS = {"mesh": MESH, "splats": SPLATS}
WHOLE = {"splats": ("system=gaussian, 500 steps, 512 x 512 renders, densified", ["system=gaussian", *SIZE_512])}

def time_config(name: str, overrides: list[str], prior: list[str], steps: int, run_dir: Path) -> dict:
    return {"config": name, "prior": " ".join(prior) or "prior=shapes", "steps": steps, **timed_run(
        ["guidance=sds", *overrides, *prior, f"trainer.max_steps={steps}", "system.views.n_frames=4", "evaluators=[]",
         "trainer.checkpoint_every=100000"], run_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(SETS), default="mesh")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sd", help="the SD-2.1-base-shaped pipeline directory")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--whole-steps", type=int, default=500)
    ap.add_argument("--runs", default="/tmp/stage_timing_runs")
    ap.add_argument("--done", help="the JSON of an earlier call: its finished rows are kept and their configurations "
                                   "skipped (failed ones run again)")
    args = ap.parse_args()
    priors = {"shapes": []} | ({"sd": ["prior=stable-diffusion", f"prior.model={args.sd}"]} if args.sd else {})
    rows = json.loads(Path(args.done).read_text()) if args.done and Path(args.done).is_file() else []
    rows = [r for r in rows if r.get("returncode") == 0]  # a failed row runs again
    done = {(r["config"], r["prior"]) for r in rows}
    todo = [(key, prior, name, overrides, args.steps) for key, prior in priors.items()
            for name, (overrides, on) in SETS[args.set].items() if key in on]
    if args.set in WHOLE and args.sd:
        name, overrides = WHOLE[args.set]
        todo.append(("sd", priors["sd"], name, overrides, args.whole_steps))
    for key, prior, name, overrides, steps in todo:
        if (name, " ".join(prior) or "prior=shapes") in done:
            continue
        # (a folder name without '=': Hydra's command line would read hydra.run.dir=.../system=x as two)
        run_dir = Path(args.runs) / key / re.sub(r"[^A-Za-z0-9._-]+", "_", name.split(",")[0]) / str(len(rows))
        rows.append(time_config(name, overrides, prior, steps, run_dir))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))  # what finished, should the call be cut short
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
