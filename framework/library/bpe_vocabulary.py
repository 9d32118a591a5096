"""Writes CLIP byte-level BPE files (vocab.json, merges.txt) for a small closed vocabulary.

The shapes prior and the tiny test pipelines use the real ``transformers.CLIPTokenizer``; it
only needs these two files. Every word of the vocabulary becomes one token: each word is built
by merges from its characters (CLIP marks the last character of a word with
``</w>``), and single characters stay in the vocabulary so unknown words still tokenize.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
BASE_CHARACTERS = string.ascii_lowercase + string.digits + ",.-'"


def bpe_files(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token -> id) and ordered merges that make each of ``words`` a single token."""
    tokens: list[str] = []
    seen: set[str] = set()

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            tokens.append(token)

    for ch in BASE_CHARACTERS:
        add(ch)
    for ch in BASE_CHARACTERS:
        add(ch + "</w>")
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words if w}):
        pieces = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], merges)
        for p in pieces:
            add(p)
        # New merges rank after all existing ones, so words added earlier keep their tokens.
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            add(pieces[0])
    for special in SPECIAL_TOKENS:
        add(special)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _apply_merges(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """What CLIP's BPE makes of ``pieces`` with ``merges`` (lowest rank first)."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def write_clip_tokenizer_files(words: list[str], out_dir: str | Path) -> Path:
    """Write vocab.json and merges.txt for ``words`` into ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe_files(words)
    (out / "vocab.json").write_text(json.dumps(vocab, indent=0, sort_keys=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n")
    return out


def build_clip_tokenizer(words: list[str], out_dir: str | Path, model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` over ``words`` (files written to ``out_dir``)."""
    from transformers import CLIPTokenizer

    out = write_clip_tokenizer_files(words, out_dir)
    # from_pretrained reads vocab.json / merges.txt the same way in transformers 4 and 5.
    return CLIPTokenizer.from_pretrained(str(out), model_max_length=model_max_length, pad_token="<|endoftext|>")
