"""Starting a run from another, finished run (``init_from=RUN``): the next stage of a job.

Magic3D's mesh stage starts from the coarse density field: its DMTet signed distance is the
field's density below the level the mesh export chooses, its features are the field's. A stage
of a staged system (``scorelift.stages``) starts this way from the stage before it; a user can
start any run from any finished run the same way.

What is taken from the source run: its geometry, and its background where both runs have the
same background (class and shapes). A geometry with ``init_from(field, level)`` (the DMTet) is
given the source geometry and the export level of its density; a geometry of the source's own
class is given its weights; anything else is refused at start-up (``checks.check_init_from``),
naming both geometries.

Only a run's first step is built this way: a resumed run continues from its own checkpoint.
"""

from __future__ import annotations


import torch

from .errors import ConfigError
from .interfaces.geometry import DENSITY_KINDS
from .outputs import checkpoint_files as ckpt_files
from .plan import InitSource


@torch.no_grad()
def start_from(system, source: InitSource) -> str:
    """Build the source run's geometry from its checkpoint and start ``system``'s from it (and its
    background, where the two are alike); returns what it did, in words (for the run's log)."""
    from .outputs.mesh import pick_threshold, sample_density

    checkpoint = source.checkpoint
    if checkpoint is None:  # written by the stage before this one, after the start-up check
        checkpoint = ckpt_files.newest_readable(source.run_dir)
        if checkpoint is None:
            raise ConfigError(f"init_from={str(source.run_dir)!r}: the stage before this one left no readable "
                              f"checkpoint to start from.")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    field = source.geometry_cls(source.geometry_config)
    field.load_state_dict(part_state(state, "geometry"))
    field = field.to(system.device)
    geometry = system.geometry
    if hasattr(geometry, "init_from") and getattr(field, "kind", "field") in DENSITY_KINDS:
        density, lo, spacing = sample_density(field, 128)
        try:
            level = pick_threshold(density, "auto", lo, spacing)
        except ConfigError:
            raise ConfigError(
                f"init_from={str(source.run_dir)!r}: its density field is empty (no ray through it reaches opacity "
                f"0.5; largest density {float(density.max()):.4g}), so there is no surface to start the "
                f"{type(geometry).__name__} from. Train that run longer (resume it with more trainer.max_steps), "
                f"or start from another run.") from None
        geometry.init_from(field, level)
        done = f"Started the {type(geometry).__name__} from the density field of {checkpoint} (density level {level:.4g})."
    else:
        geometry.load_state_dict(field.state_dict())
        done = f"Started the geometry from {checkpoint}."
    background = system.background
    if type(background) is source.background_cls:
        theirs = part_state(state, "background")
        if {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in background.state_dict().items()}:
            background.load_state_dict(theirs)
            done += " The background too."
    return done


def part_state(state: dict, prefix: str) -> dict:
    """The entries of a system's state_dict under ``<prefix>.``, with the prefix taken off."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
