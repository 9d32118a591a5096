"""Text conditioning shared by the text-to-image priors (Stable Diffusion, DeepFloyd IF):
view-dependent prompt templates, prompt-length checks against the tokenizer, and cached text
embeddings (in memory and, optionally, on disk keyed by the model and the prompt).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ..errors import ConfigError
from ..interfaces.prior import Conditioning

log = logging.getLogger(__name__)

VIEW_NAMES = ("front", "side", "back", "overhead")


def default_view_templates() -> dict[str, str]:
    """View-dependent prompting, DreamFusion style (as the shapes prior's captions)."""
    return {
        "front": "{prompt}, front view",
        "side": "{prompt}, side view",
        "back": "{prompt}, back view",
        "overhead": "{prompt}, overhead view",
    }


def check_view_templates(templates: dict[str, str]) -> None:
    for view, template in templates.items():
        if view not in VIEW_NAMES:
            raise ConfigError(
                f"prior.view_templates has the key {view!r}; the view names are {', '.join(VIEW_NAMES)}."
            )
        if "{prompt}" not in template:
            raise ConfigError(
                f"prior.view_templates.{view}={template!r} lacks the placeholder {{prompt}} "
                f"(write e.g. '{{prompt}}, {view} view')."
            )
    if templates and set(templates) != set(VIEW_NAMES):
        missing = [v for v in VIEW_NAMES if v not in templates]
        raise ConfigError(
            f"prior.view_templates lacks {', '.join(missing)}; give a template for every view "
            f"({', '.join(VIEW_NAMES)}) or an empty mapping for no view words."
        )


def prompt_length_error(
    prompt: str, n: int, limit: int, view: str | None = None, template: str | None = None
) -> ConfigError:
    if view is None:
        return ConfigError(
            f"The prompt {prompt!r} is {n} tokens long (start and end tokens included), but the "
            f"prior's tokenizer takes at most {limit}; shorten the prompt."
        )
    return ConfigError(
        f"The prompt {prompt!r} with the {view} view words of prior.view_templates.{view} ({template!r}) is "
        f"{n} tokens long (start and end tokens included), but the prior's tokenizer takes at most {limit}; "
        f"shorten the prompt (or the view templates)."
    )


def check_prompt_length(tokenizer, prompt: str, templates: dict[str, str]) -> None:
    """ConfigError if ``prompt`` alone or with any view's words exceeds the tokenizer's limit."""
    limit = int(tokenizer.model_max_length)
    n = len(tokenizer(prompt, truncation=False).input_ids)
    if n > limit:
        raise prompt_length_error(prompt, n, limit)
    for view, template in templates.items():
        n = len(tokenizer(template.format(prompt=prompt), truncation=False).input_ids)
        if n > limit:
            raise prompt_length_error(prompt, n, limit, view, template)




class TextPrompts:
    """The text side of a text-conditioned prior. The prior sets ``tokenizer``, ``text_encoder``,
    ``device``, ``dtype``, ``cfg`` (with ``view_templates`` and ``text_cache_dir``) and calls
    ``init_text_cache(local, source)`` once its encoder is loaded; ``text_attention_mask`` says
    whether the encoder is called with the tokenizer's attention mask (T5 is; SD's CLIP is not)."""

    text_attention_mask: bool = False

    def init_text_cache(self, local: Path | None, source: str) -> None:
        self._text_cache: dict[str, torch.Tensor] = {}
        self._text_key = self._text_encoder_fingerprint(local, source)

    def _text_encoder_fingerprint(self, local: Path | None, source: str) -> str:
        """Key of the on-disk text cache: the model plus (for a local directory) its text-encoder
        and tokenizer files' sizes and times, so a retrained model never reads stale embeddings."""
        parts = [source]
        if local is not None:
            for sub in ("text_encoder", "tokenizer"):
                for f in sorted((local / sub).glob("*")):
                    st = f.stat()
                    parts.append(f"{sub}/{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def token_count(self, prompt: str) -> int:
        """Tokens of ``prompt`` including the start and end tokens."""
        return len(self.tokenizer(prompt, truncation=False).input_ids)

    def validate_prompt(self, prompt: str) -> None:
        """ConfigError for an empty prompt or one longer than the tokenizer's limit, alone or
        with any view's words (the checks ``inspect`` makes at start-up, on a built prior)."""
        super().validate_prompt(prompt)
        check_prompt_length(self.tokenizer, prompt.strip(), self.cfg.view_templates)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """N prompts -> [N, L, D] embeddings in the UNet's dtype on ``device``.

        "" is the unconditional prompt. Each prompt is encoded once: an in-memory cache, and
        an on-disk one (``text_cache_dir``) keyed by the model and the prompt.
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        for p in list(missing):
            cached = self._read_disk_cache(p)
            if cached is not None:
                self._text_cache[p] = cached
                missing.remove(p)
        if missing:
            emb = self._run_text_encoder(missing)
            for p, e in zip(missing, emb):
                self._text_cache[p] = e
                self._write_disk_cache(p, e)
        return torch.stack([self._text_cache[p] for p in prompts])

    @torch.no_grad()
    def _run_text_encoder(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        mask = None
        # As diffusers' pipelines: only encoders trained with a mask get one (SD's CLIP does not).
        if self.text_attention_mask:
            mask = tokens.attention_mask.to(self.device)
        out = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)
        return out.last_hidden_state.to(self.dtype)

    def _disk_path(self, prompt: str) -> Path | None:
        if not self.cfg.text_cache_dir:
            return None
        key = hashlib.sha256(f"{self._text_key}\n{prompt}".encode()).hexdigest()[:32]
        return Path(self.cfg.text_cache_dir).expanduser() / f"{key}.pt"

    def _read_disk_cache(self, prompt: str) -> torch.Tensor | None:
        path = self._disk_path(prompt)
        if path is None or not path.is_file():
            return None
        try:
            return torch.load(path, map_location=self.device, weights_only=True).to(self.dtype)
        except Exception:  # a truncated file from an interrupted run: recompute it
            log.warning("Ignoring unreadable text-embedding cache file %s", path)
            return None

    def _write_disk_cache(self, prompt: str, emb: torch.Tensor) -> None:
        path = self._disk_path(prompt)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(emb)}")
        torch.save(emb.detach().cpu().clone(), tmp)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file

    def view_prompt(self, prompt: str, view: str) -> str:
        """``prompt`` with the view words of ``view`` (front/side/back/overhead) per view_templates."""
        templates = self.cfg.view_templates
        if not templates:
            return prompt
        if view not in templates:
            raise ValueError(f"Unknown view name {view!r}; the view names are {', '.join(VIEW_NAMES)}.")
        return templates[view].format(prompt=prompt)

    def condition(self, prompt: str, view_names: list[str]) -> Conditioning:
        """Embeddings for ``prompt`` seen from B views -> Conditioning with [B, L, D] tensors.
        The prompt was checked at start-up (``inspect`` / ``validate_prompt``), not here: this runs
        every training step."""
        prompt = prompt.strip()
        views = [self.view_prompt(prompt, v) for v in view_names]
        emb = self.encode_text(views + [prompt, ""])
        B = len(view_names)
        return Conditioning(
            cond=emb[:B],
            uncond=emb[B + 1 : B + 2].expand(B, -1, -1),
            cond_view_independent=emb[B : B + 1].expand(B, -1, -1),
        )
