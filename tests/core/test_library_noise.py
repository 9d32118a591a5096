"""The library-noise filters drop exactly the known messages and let everything else through."""

from __future__ import annotations

import logging
import warnings

from scorelift.library_noise import quiet_known_library_noise


def _record(name: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)


def test_only_the_known_messages_are_dropped():
    quiet_known_library_noise()
    quiet_known_library_noise()  # idempotent: one filter each, not two
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert len(lightning.filters) == 1
    assert not lightning.filter(_record(lightning.name, "TPU available: False, using: 0 TPU cores"))
    assert not lightning.filter(_record(lightning.name, "💡 Tip: For seamless cloud logging, try installing litlogger"))
    assert lightning.filter(_record(lightning.name, "GPU available: False, used: False"))

    from transformers.utils import logging as transformers_logging

    handlers = transformers_logging._get_library_root_logger().handlers
    assert handlers and all(len(h.filters) == 1 for h in handlers)
    noise = "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
    useful = "Some weights of CLIPTextModel were not initialized from the model checkpoint"
    for handler in handlers:
        assert not handler.filter(_record("transformers.utils.import_utils", noise))
        assert handler.filter(_record("transformers.modeling_utils", useful))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_known_library_noise()  # re-inserts its ignore filter ahead of "default"
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
        warnings.warn("The `srun` command is available on your system but is not used. HINT: ...", UserWarning)
        warnings.warn("some other deprecation", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["some other deprecation"]
