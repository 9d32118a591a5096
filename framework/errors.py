"""Error types that carry a one-paragraph, user-facing explanation."""


class ScoreliftError(Exception):
    """Base class: the message is meant for the user, not a traceback reader."""


class ConfigError(ScoreliftError, ValueError):
    """A config value, key or combination the framework cannot accept."""


class PluginError(ScoreliftError, LookupError):
    """An unknown plugin name, or a plugin that failed to load or register."""


class PriorLoadError(ScoreliftError, OSError):
    """A diffusion prior (model directory or hub id) that is missing or incomplete."""
