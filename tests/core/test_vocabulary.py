"""A prior that declares the prompts it knows refuses, at start-up, a prompt with a word none of
them has (naming the nearest ones it knows), unless allow_unknown_prompt=true; the embedded shapes
prior declares the world's 36 objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scorelift.checks import check_vocabulary
from scorelift.errors import ConfigError
from scorelift.library.pipelines import read_vocabulary
from scorelift.plan import PriorFacts
from scorelift.shapes_world.world import ALL_OBJECTS, object_prompt

PRIOR = Path(__file__).resolve().parents[2] / "apps" / "shapes_world" / "prior"


def facts(prompts, extra=()):
    return PriorFacts(space="latent", conditioning="text", has_unconditional=True, vocabulary=tuple(prompts),
                      vocabulary_words=frozenset(w for p in [*prompts, *extra] for w in p.split()))


@pytest.mark.parametrize("prompt", ["a red cube", "A Red Cube.", "red cube", "a blue cube, side view", "  a  red   torus "])
def test_prompts_of_known_words_pass(prompt):
    cfg = OmegaConf.create({"allow_unknown_prompt": False, "prior": {"model": "m"}})
    check_vocabulary(cfg, prompt, facts(["a red cube", "a blue cube", "a red torus"], ["side", "view"]))


def test_an_unknown_word_is_refused_with_the_nearest_prompts_unless_allowed():
    known = facts(["a red cube", "a blue cube", "a red torus"])
    cfg = OmegaConf.create({"allow_unknown_prompt": False, "prior": {"model": "/models/three"}})
    with pytest.raises(ConfigError) as err:
        check_vocabulary(cfg, "a red dog", known)
    message = str(err.value)
    for words in ("prompt='a red dog'", "(/models/three) knows 3 prompts", "'dog' is a word of none",
                  "'a red cube'", "allow_unknown_prompt=true"):
        assert words in message, (words, message)
    check_vocabulary(OmegaConf.create({"allow_unknown_prompt": True}), "a red dog", known)  # allowed
    check_vocabulary(cfg, "a red dog", PriorFacts(space="latent", conditioning="text", has_unconditional=True))


def test_the_shapes_prior_declares_the_worlds_36_objects():
    declared = read_vocabulary(PRIOR, str(PRIOR))
    assert list(declared["vocabulary"]) == [object_prompt(c, s) for c, s in ALL_OBJECTS]
    assert {"front", "side", "back", "overhead", "view"} <= declared["vocabulary_words"]
    assert "hamburger" not in declared["vocabulary_words"]
    assert json.loads((PRIOR / "vocabulary.json").read_text())["prompts"][0] == "a red sphere"
