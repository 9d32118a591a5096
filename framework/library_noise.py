"""Drop the handful of library messages every run printed that tell a researcher nothing.

Each filter matches the text of one known message, so anything else those libraries say (a
missing weight, a real deprecation in code we call) still gets through:

- transformers, on import through diffusers without torchvision: "`CLIPImageProcessor` requires
  torchvision (not installed); falling back to ...". We never use its image processors.
- Lightning: the "TPU available" line and its "Tip: ... litlogger" advertisement.
- Lightning's own internal deprecation "`isinstance(treespec, LeafSpec)` is deprecated",
  raised from its _pytree helper on every fit with this torch: nothing in our code to change.
- Lightning, on any machine where SLURM's ``srun`` is installed: "The `srun` command is available
  on your system but is not used". Its hint (start multi-process training under srun) does not
  apply: a run is one process on one device, and on a cluster submitit starts it under srun.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings

_LIGHTNING_STARTS = ("TPU available:", "💡 Tip:")
_TRANSFORMERS_TEXT = "requires torchvision (not installed); falling back to"


class _DropMessages(logging.Filter):
    """Rejects records whose message starts with one of ``prefixes`` and contains ``needle``."""

    def __init__(self, prefixes: tuple[str, ...] = ("",), needle: str = ""):
        super().__init__()
        self.prefixes, self.needle = prefixes, needle

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith(self.prefixes) and self.needle in text)


def quiet_known_library_noise(transformers: bool = True) -> None:
    """Install the filters (idempotent). Call before diffusers or Lightning is first used.

    ``transformers=False``: its filter only if it is imported already (importing it costs a start-up
    that may never need it most of a second; the run calls this again before loading a prior)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in lightning.filters):
        lightning.addFilter(_DropMessages(_LIGHTNING_STARTS))
    if importlib.util.find_spec("transformers") is None or not (transformers or "transformers" in sys.modules):
        return
    from transformers.utils import logging as transformers_logging

    # The message is logged by a child logger and reaches the library's handler by propagation,
    # where a logger filter would not see it: filter the handler.
    root = transformers_logging._get_library_root_logger()
    for handler in root.handlers:
        if not any(isinstance(f, _DropMessages) for f in handler.filters):
            handler.addFilter(_DropMessages(needle=_TRANSFORMERS_TEXT))
