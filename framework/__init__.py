"""scorelift core: registry, config parsing, interfaces, cameras and the training system.

The parts (geometry, renderers, guidance, losses, priors) live in the ``plugins`` package and
in third-party packages registered through the ``scorelift.plugins`` entry-point group.
"""

__version__ = "0.1.0"
