"""The shapes world's vocabulary: its 36 objects, their prompts and captions, the fixed light.

Everything here follows docs/shapes-world.md (the contract). The geometry itself lives
in ``render.py``; this module only names things, so it stays importable without torch work.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")

# Linear RGB albedos in [0, 1]; the order fixes colour indices everywhere (dataset, evaluator).
COLOURS: "OrderedDict[str, tuple[float, float, float]]" = OrderedDict(
    [
        ("red", (0.86, 0.16, 0.16)),
        ("green", (0.20, 0.70, 0.25)),
        ("blue", (0.18, 0.32, 0.86)),
        ("yellow", (0.95, 0.82, 0.15)),
        ("purple", (0.58, 0.25, 0.75)),
        ("orange", (0.96, 0.55, 0.12)),
    ]
)

_L = (2.0, -1.0, 3.0)
_L_NORM = math.sqrt(sum(c * c for c in _L))
# Fixed in the world frame (not the camera's), so a view-independent radiance field can match it.
LIGHT_DIR: tuple[float, float, float] = tuple(c / _L_NORM for c in _L)  # type: ignore[assignment]
AMBIENT = 0.3
DIFFUSE = 0.7
BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)

# Colour-major: index = colour_index * len(SHAPES) + shape_index.
ALL_OBJECTS: list[tuple[str, str]] = [(c, s) for c in COLOURS for s in SHAPES]

VIEWS: tuple[str, ...] = ("front", "side", "back", "overhead")

VOCABULARY: tuple[str, ...] = (
    ("a", "an")
    + tuple(COLOURS)
    + SHAPES
    + ("front", "side", "back", "backside", "overhead", "view", "of")
)


def shape_index(shape: str) -> int:
    """Index of a shape name in SHAPES; ValueError naming the bad value otherwise."""
    try:
        return SHAPES.index(shape)
    except ValueError:
        raise ValueError(f"Unknown shape {shape!r}: the shapes world has {', '.join(SHAPES)}.") from None


def colour_index(colour: str) -> int:
    """Index of a colour name in COLOURS; ValueError naming the bad value otherwise."""
    names = list(COLOURS)
    try:
        return names.index(colour)
    except ValueError:
        raise ValueError(f"Unknown colour {colour!r}: the shapes world has {', '.join(names)}.") from None


def object_index(colour: str, shape: str) -> int:
    """Position of (colour, shape) in ALL_OBJECTS."""
    return colour_index(colour) * len(SHAPES) + shape_index(shape)


def object_prompt(colour: str, shape: str) -> str:
    """'a red cube', 'an orange cone': the prompt of one object, with the English article."""
    colour_index(colour)
    shape_index(shape)
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def caption(colour: str, shape: str, view: str | None = None) -> str:
    """Training caption: the prompt, optionally with a DreamFusion-style view suffix.

    caption("red", "cube", "front") -> "a red cube, front view".
    """
    text = object_prompt(colour, shape)
    if view is None:
        return text
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}: expected one of {', '.join(VIEWS)} or None.")
    return f"{text}, {view} view"


_COLOUR_RE = "|".join(COLOURS)
_SHAPE_RE = "|".join(SHAPES)
_PROMPT_RE = re.compile(
    r"^(?:(?:front|side|back|backside|overhead) view of )?"  # prefix style: "side view of a red cube"
    r"(?:(?:a|an) )?"  # either article (or none), whichever the colour
    rf"(?P<colour>{_COLOUR_RE}) (?P<shape>{_SHAPE_RE})"
    r"(?: ?, ?(?:front|side|back|backside|overhead) view)?"  # suffix style: "a red cube, side view"
    r"\.?$"
)


def parse_prompt(text: str) -> tuple[str, str] | None:
    """(colour, shape) of a shapes-world prompt, or None when the text is not one.

    Accepts either article (or none), any letter case, extra whitespace, a trailing full stop and
    the view phrases of both styles ("a red cube, front view", "backside view of a red cube").
    """
    if not isinstance(text, str):
        return None
    normalised = " ".join(text.strip().lower().split())
    match = _PROMPT_RE.match(normalised)
    if match is None:
        return None
    return match.group("colour"), match.group("shape")
