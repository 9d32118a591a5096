"""Shared checks for the background plugins."""

from __future__ import annotations

from ..errors import ConfigError

ACTIVATIONS = ("none", "sigmoid")


def check_common(name: str, n_features: int, activation: str) -> None:
    """Reject a non-positive n_features or an unknown activation, naming the bad value."""
    if n_features < 1:
        raise ConfigError(f"background ({name}) n_features={n_features} must be at least 1.")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"background ({name}) activation={activation!r} is not one of {', '.join(ACTIVATIONS)}: "
            f"'none' for latent backgrounds (SJC), 'sigmoid' for RGB in [0, 1]."
        )
