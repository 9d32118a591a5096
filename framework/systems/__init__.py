"""The built-in system. Its class is a Lightning module, imported when a run is built; until then
the registry holds what start-up checks need (``scorelift.systems.settings``)."""

from ..registry import Deferred, register_deferred
from .settings import SystemConfig, check_system_config

register_deferred("system", "score-distillation", Deferred(
    target="scorelift.systems.score_distillation:ScoreDistillationSystem",
    Config=SystemConfig,
    check_config=check_system_config,
    summary="Renders the geometry, scores the renders with the guidance and the prior, adds the losses "
            "(every preset: sjc, dreamfusion, prolificdreamer, magic3d, gaussian, ...).",
))
