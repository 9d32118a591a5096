"""The prompt key's own check (text, not blank), shared by the start-up checks and the priors."""

from __future__ import annotations

import re

from .errors import ConfigError


def check_prompt(prompt) -> str:
    """The prompt, stripped; ConfigError if it is not text or is empty (a conditioned prior)."""
    if isinstance(prompt, (int, float)) and not isinstance(prompt, bool):
        prompt = str(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(
            f"The prompt is empty ({prompt!r}); set `prompt` to a description such as 'a red cube'."
        )
    return prompt.strip()


def given_prompt(prompt) -> str | None:
    """The prompt stripped, or None where there is none (null or blank: an unconditional prior's
    run); ConfigError for a value that is not text (a list, a mapping, true/false)."""
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        return None
    return check_prompt(prompt)


def prompt_words(text: str) -> list[str]:
    """The lower-case words of a prompt, punctuation dropped: what a prior's vocabulary is compared on."""
    return re.findall(r"[a-z0-9]+", text.lower())
