"""Log records on the console, formatted as a Hydra app formats them (a run copies them into its launch.log)."""

from __future__ import annotations

import logging

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def setup_console_logging() -> None:
    """INFO and up to the console (once per process: a handler already there is kept)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
