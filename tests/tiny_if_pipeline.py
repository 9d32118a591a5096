"""A tiny random-weight DeepFloyd IF stage-I pipeline for the ``deepfloyd-if`` prior's tests.

``build_tiny_if_pipeline`` writes a real diffusers ``IFPipeline`` in the ``save_pretrained``
layout (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/; no safety checker,
feature extractor or watermarker), shaped like IF-I: a 3 -> 6 channel pixel UNet2DConditionModel
(eps and a learned variance) with SimpleCrossAttn blocks and a text-projection, a T5 encoder, a
T5 (Unigram) tokenizer over the shapes world's words, and IF's DDPM scheduler (squaredcos_cap_v2,
learned_range). Its weights are random; a UNet call on a 16 x 16 image takes milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from scorelift.plugins.priors.tiny_random import SHAPES_WORLD_WORDS

TINY_IF_SIZE = 16  # pixels: IF-I's UNet takes 64 x 64
TINY_IF_TEXT_DIM = 32  # T5 hidden size (IF's T5-XXL: 4096)
MAX_LENGTH = 77  # IF's prompt length (diffusers' IFPipeline pads and truncates to 77)

# Words beyond the shapes world's, so that test prompts ("a small red cube") tokenize without <unk>.
EXTRA_WORDS = ("small", "big", "shiny", "on", "the", "table", "and", "with")

# IF-I's scheduler (DDPMScheduler in the hub's scheduler_config.json): cosine betas, a learned
# variance range, dynamic thresholding when sampling (thresholding plays no part in guidance).
IF_SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
    prediction_type="epsilon", thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
    clip_sample=True,
)  # fmt: skip


def t5_vocabulary(words: Sequence[str]) -> list[tuple[str, float]]:
    """A Unigram vocabulary in T5's order: <pad>=0, </s>=1, <unk>=2, then the pieces.

    Lower case only: IF lower-cases prompts before tokenizing (as the prior does), and
    transformers' T5Tokenizer rebuilds its normaliser on loading, so a lower-casing normaliser
    would not survive a save/load round trip anyway. Each word is one piece with the word-start
    marker; "," and "." are pieces of their own, so "a red cube, front view" has no <unk>.
    """
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0), (",", -3.0), (".", -3.0)]
    seen = set()
    for w in words:
        w = w.lower()
        if w not in seen:
            seen.add(w)
            pieces.append(("\u2581" + w, -1.0))
    return pieces


def build_tiny_if_pipeline(
    out_dir: Path,
    *,
    sample_size: int = TINY_IF_SIZE,
    seed: int = 0,
    prediction_type: str = "epsilon",
    words: Sequence[str] = SHAPES_WORLD_WORDS + EXTRA_WORDS,
) -> Path:
    """Write a random-weight IFPipeline (stage I) to ``out_dir`` and return ``out_dir``.

    The same ``seed`` writes the same weights (the global RNG is left untouched). UNet: 3 x
    ``sample_size``^2 in, 6 channels out (eps, then the learned variance); text: [B, 77, 32]
    T5 embeddings through IF's text projection (``encoder_hid_dim``) and attention pooling
    (``addition_embed_type="text"``).
    """
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = T5Tokenizer(vocab=t5_vocabulary(words), extra_ids=0, model_max_length=MAX_LENGTH)
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=TINY_IF_TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
            feed_forward_proj="gated-gelu",  # T5 v1.1, IF's encoder
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ))
        # IF-I's block types, scaled down: residual down/up-sampling blocks, simple cross-attention
        # (self- and cross-attention keys in one Attention: to_q/to_k/to_v/to_out.0, add_k_proj/add_v_proj).
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=3, out_channels=6,
            block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
            encoder_hid_dim=TINY_IF_TEXT_DIM, encoder_hid_dim_type="text_proj",
            addition_embed_type="text", addition_embed_type_num_heads=2,
            resnet_time_scale_shift="scale_shift", resnet_skip_time_act=True, act_fn="gelu",
            time_embedding_act_fn="gelu", mid_block_scale_factor=1.414,
        )
        scheduler = DDPMScheduler(**{**IF_SCHEDULER, "prediction_type": prediction_type})
        pipe = IFPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(out), safe_serialization=True)
    return out
