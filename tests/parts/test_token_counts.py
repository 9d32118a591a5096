"""The start-up length check counts tokens with the pipeline's tokenizer.json through the
``tokenizers`` library (fast to import) where transformers' tokenizer would take most of a second
to import: the counts must be the ones transformers' CLIPTokenizer gives, on the embedded shapes
prior (whose saved tokenizer pads and cuts to 16) and the tests' tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorelift.library.pipelines import fast_tokenizer, surely_fits

PRIOR = Path(__file__).resolve().parents[2] / "apps" / "shapes_world" / "prior"
TEXTS = ["a red cube", "a red cube, side view", "A Hamburger!!", "red " * 40 + "cube", "überlange Würste, ça va",
         "  spaced   out  ", "an orange torus, overhead view"]


@pytest.mark.parametrize("which", ["shapes", "tiny"])
def test_fast_counts_equal_clip_tokenizers(which, tiny_pipeline_dir):
    from transformers import CLIPTokenizer

    path = PRIOR if which == "shapes" else Path(tiny_pipeline_dir)
    fast = fast_tokenizer(path)
    slow = CLIPTokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
    assert fast is not None and fast.model_max_length == slow.model_max_length
    for text in TEXTS:
        assert len(fast(text).input_ids) == len(slow(text, truncation=False).input_ids), text


def test_a_short_prompt_surely_fits_and_a_long_one_is_counted(tmp_path):
    templates = {"side": "{prompt}, side view"}
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 77}')
    assert surely_fits(tmp_path, "a red cube", templates)  # 20 bytes + 2 <= 77
    assert not surely_fits(tmp_path, "red " * 20, templates)  # 90 bytes: could be too long
    assert not surely_fits(tmp_path / "nowhere", "a red cube", templates)  # no limit known: count
