"""Loading diffusers pipelines as priors: finding the directory, checking its layout and files before
any weight is read, and the one-paragraph errors that say what a valid directory holds.

Every prior loader uses these (``stable-diffusion``, ``diffusers-unet``, ``deepfloyd-if``,
``score-sde``); ``layout`` arguments let each loader name its own valid layout in its errors.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch

from ..errors import ConfigError, PriorLoadError
from ..prompts import prompt_words
from .text_conditioning import check_prompt_length

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# What a complete pipeline directory must hold (sub-folder -> files, any one of each group).
REQUIRED_PARTS: dict[str, list[tuple[str, ...]]] = {
    "unet": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")],
    "vae": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                               "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")],
    "text_encoder": [("config.json",), ("model.safetensors", "pytorch_model.bin",
                                        "model.fp16.safetensors", "pytorch_model.fp16.bin")],
    "tokenizer": [("vocab.json", "tokenizer.json")],
    "scheduler": [("scheduler_config.json",)],
}

VALID_LAYOUT = (
    "A valid prior is a diffusers StableDiffusionPipeline directory (the save_pretrained layout): "
    "model_index.json plus the sub-folders unet/, vae/, text_encoder/ (each a config.json and weights), "
    "tokenizer/ and scheduler/ (scheduler_config.json). Point `prior.model` at such a directory "
    "(e.g. `prior.model=/path/to/stable-diffusion-2-1-base`), or at a Hugging Face hub id with "
    "`prior.local_files_only=false` on a machine with network access, or pick the offline prior "
    "`prior=tiny-random`."
)


def load_error(model: str, reason: str, layout: str = VALID_LAYOUT) -> PriorLoadError:
    """What failed for ``model`` and what a valid directory holds (``layout``: each loader's own)."""
    return PriorLoadError(f"Cannot load the diffusion prior from {model!r}: {reason}. {layout}")


def looks_like_path(model: str) -> bool:
    """True when ``model`` can only be a filesystem path (a hub id is ``name`` or ``org/name``)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def check_pipeline_dir(path: Path, model: str, parts: dict[str, list[tuple[str, ...]]] = REQUIRED_PARTS,
                       layout: str = VALID_LAYOUT) -> None:
    """Raise PriorLoadError naming ``model`` if ``path`` is not a complete pipeline directory: a
    model_index.json and, for each sub-folder of ``parts``, one file of each group of names."""
    if not path.exists():
        raise load_error(model, f"the directory {str(path)!r} does not exist", layout)
    if not path.is_dir():
        raise load_error(model, f"{str(path)!r} is a file, not a directory", layout)
    if not (path / "model_index.json").is_file():
        raise load_error(model, f"{str(path)!r} has no model_index.json", layout)
    for part, groups in parts.items():
        folder = path / part
        if not folder.is_dir():
            raise load_error(model, f"{str(path)!r} has no {part}/ sub-folder", layout)
        for group in groups:
            if not any((folder / name).is_file() for name in group):
                raise load_error(model, f"{str(folder)!r} lacks {' or '.join(group)}", layout)


def dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` where diffusers deprecates ``torch_dtype``
    (0.42 does), else ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # fp16 halves memory and time on GPUs; CPUs have no fast fp16 kernels.
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"prior.dtype={name!r} is not known; use auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def read_json(path: Path, model: str, layout: str = VALID_LAYOUT) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise load_error(model, f"{str(path)!r} is not a readable JSON file ({type(exc).__name__}: {exc})", layout) from None


def check_safetensors(path: Path, model: str, layout: str = VALID_LAYOUT) -> None:
    """A safetensors file whose header promises more bytes than the file holds is a truncated
    download: say so before diffusers fails on it (reads the header only)."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        raise load_error(model, f"{str(path)!r} is not a valid safetensors file (truncated or corrupt)", layout) from None
    if 8 + header_len + end > size:
        raise load_error(
            model, f"{str(path)!r} is truncated ({size} bytes of {8 + header_len + end}); download it again", layout
        )


def locate_pipeline(model: str, local_files_only: bool, layout: str = VALID_LAYOUT) -> Path | None:
    """The local directory ``model`` names (a path, or a hub id's cached snapshot); None for a hub
    id that may be downloaded at load time. PriorLoadError for a hub id that is not cached offline."""
    local = Path(model).expanduser()
    if local.exists() or looks_like_path(model):
        return local
    if not local_files_only:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001  (LocalEntryNotFoundError, a malformed id, ...)
        raise load_error(
            model,
            "it is not a local directory, it is not in the local Hugging Face cache, and nothing is "
            "downloaded (offline: `prior.local_files_only` is true)",
            layout,
        ) from None


def inspect_pipeline(path: Path, model: str) -> dict:
    """Check a pipeline directory without loading weights: layout, readable configs, whole
    safetensors files. Returns its latent_channels, latent_size and pixel_size."""
    check_pipeline_dir(path, model)
    read_json(path / "model_index.json", model)
    unet = read_json(path / "unet" / "config.json", model)
    vae = read_json(path / "vae" / "config.json", model)
    read_json(path / "text_encoder" / "config.json", model)
    read_json(path / "scheduler" / "scheduler_config.json", model)
    for part in ("unet", "vae", "text_encoder"):
        for weights in sorted((path / part).glob("*.safetensors")):
            check_safetensors(weights, model)
    try:
        latent_size = int(unet["sample_size"])
        latent_channels = int(unet["in_channels"])
        pixel_size = latent_size * 2 ** (len(vae["block_out_channels"]) - 1)
    except (KeyError, TypeError, ValueError) as exc:
        raise load_error(model, f"its unet/ or vae/ config.json lacks a usable {exc}") from None
    return {"space": "latent", "conditioning": "text", "has_unconditional": True,
            "latent_channels": latent_channels, "latent_size": latent_size, "pixel_size": pixel_size}


def read_vocabulary(path: Path, model: str) -> dict:
    """What a pipeline folder's optional ``vocabulary.json`` declares it knows: ``{"prompts": [the
    prompts it was trained on], "extra_words": [other words of its captions, e.g. view words]}``
    -> {"vocabulary": prompts, "vocabulary_words": every known word}; {} without the file."""
    file = path / "vocabulary.json"
    if not file.is_file():
        return {}
    data = read_json(file, model)
    prompts, extra = data.get("prompts"), data.get("extra_words", [])
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts + list(extra))):
        raise load_error(model, "its vocabulary.json must hold a non-empty list of prompts (and optionally "
                                "extra_words, a list of words)")
    words = {w for text in [*prompts, *extra] for w in prompt_words(text)}
    return {"vocabulary": tuple(prompts), "vocabulary_words": frozenset(words)}


def check_local_pipeline(path: Path, model: str, prompt: str, templates: dict[str, str]) -> dict:
    """``inspect_pipeline`` and the prompt's length against the pipeline's own tokenizer (loaded
    only for a prompt that could be too long: see ``surely_fits``)."""
    facts = inspect_pipeline(path, model)
    if not surely_fits(path, prompt, templates):
        check_prompt_length(fast_tokenizer(path) or load_tokenizer(path, model), prompt, templates)
    return facts


class FastTokenCounter:
    """The two things the length check asks of a tokenizer (``model_max_length``, and
    ``__call__(text).input_ids``), from a pipeline's ``tokenizer/tokenizer.json`` through the
    ``tokenizers`` library (imported in milliseconds, where transformers takes most of a second).
    The same pipeline's tokenizer as transformers builds it, so the same counts (checked against
    CLIPTokenizer in the tests)."""

    def __init__(self, tokenizer, limit: int):
        self.tokenizer, self.model_max_length = tokenizer, limit

    def __call__(self, text: str, truncation: bool = False):
        return types.SimpleNamespace(input_ids=self.tokenizer.encode(text).ids)


def tokenizer_limit(path: Path) -> int | None:
    """The pipeline's ``tokenizer/tokenizer_config.json`` model_max_length, or None if unreadable."""
    try:
        return int(json.loads((path / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fast_tokenizer(path: Path) -> FastTokenCounter | None:
    """A FastTokenCounter for the pipeline at ``path``, or None where it has no tokenizer.json
    (or its limit cannot be read): the caller loads the tokenizer through transformers then."""
    limit = tokenizer_limit(path)
    if limit is None:
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer" / "tokenizer.json"))
    except Exception:  # noqa: BLE001  (no file, an unreadable one, no tokenizers package: the slow path)
        return None
    tokenizer.no_padding()  # a saved tokenizer may pad or cut to its limit; a count must see it all
    tokenizer.no_truncation()
    return FastTokenCounter(tokenizer, limit)


def surely_fits(path: Path, prompt: str, templates: dict[str, str]) -> bool:
    """True when the prompt, alone and in every view's template, cannot exceed the tokenizer's
    limit (``tokenizer/tokenizer_config.json``'s model_max_length): a byte-level BPE token covers
    at least one byte of the text, so a text of n UTF-8 bytes is at most n + 2 tokens (with the
    start and end tokens). Spares the common short prompt the tokenizer's load (transformers'
    import: most of a second)."""
    limit = tokenizer_limit(path)
    if limit is None:
        return False
    texts = [prompt, *(t.format(prompt=prompt) for t in templates.values())]
    return max(len(t.encode("utf-8")) for t in texts) + 2 <= limit


def load_tokenizer(path: Path, model: str):
    """The pipeline's tokenizer alone (milliseconds), to check prompt lengths before the weights load."""
    import transformers

    index = read_json(path / "model_index.json", model)
    entry = index.get("tokenizer")
    name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else "AutoTokenizer"
    cls = getattr(transformers, str(name), None) or transformers.AutoTokenizer
    try:
        return cls.from_pretrained(str(path / "tokenizer"), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        first_line = (str(exc).splitlines() or [""])[0]
        raise load_error(model, f"its tokenizer/ cannot be loaded ({type(exc).__name__}: {first_line})") from None
