"""Model builders, captions and data helpers shared by the shapes-prior training scripts.

The prior is a Stable-Diffusion-format pipeline (see docs/shapes-world.md):
- VAE: AutoencoderKL, RGB [B, 3, 64, 64] in [-1, 1] -> latents [B, 4, 16, 16] (3 blocks, factor 4);
- text: CLIPTokenizer over the world's words + a small CLIPTextModel, hidden states [B, L, D];
- UNet2DConditionModel at 16 x 16, epsilon prediction, cross-attention on [B, L, D];
- scheduler: SD's scaled-linear betas 0.00085 .. 0.012 over 1000 steps.

Two size presets: "full" (the committed prior, under 40 MB in fp16) and "smoke" (tiny, for the
CPU tests). Every function here is device-agnostic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import world
from ..dataset import sample_training_batch

IMAGE_SIZE = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 4
TOKENIZER_MAX_LENGTH = 16  # longest caption ("backside view of an orange cylinder") is 8 tokens with BOS/EOS

PRESETS: dict[str, dict] = {
    "full": dict(
        vae_channels=(64, 128, 128),
        vae_layers=1,
        vae_groups=32,
        text_hidden=192,
        text_layers=3,
        text_heads=4,
        unet_channels=(96, 192, 192),
        unet_layers=1,
        unet_heads=4,
        unet_groups=32,
    ),
    "smoke": dict(
        vae_channels=(8, 16, 16),
        vae_layers=1,
        vae_groups=4,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        unet_channels=(16, 32, 32),
        unet_layers=1,
        unet_heads=2,
        unet_groups=8,
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
    return dict(PRESETS[name])


# --- models -----------------------------------------------------------------------------------


def build_vae(p: dict):
    """AutoencoderKL 64x64x3 <-> 16x16x4 (3 blocks: two 2x down-samplings, factor 4).

    scaling_factor / shift_factor start neutral; train_vae.py measures and sets them.
    """
    from diffusers import AutoencoderKL

    n = len(p["vae_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(p["vae_channels"]),
        layers_per_block=p["vae_layers"],
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=p["vae_groups"],
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


def build_tokenizer(out_dir: str | Path):
    """CLIPTokenizer whose vocabulary makes every world word a single token (files in out_dir)."""
    from scorelift.library.bpe_vocabulary import build_clip_tokenizer

    return build_clip_tokenizer(list(world.VOCABULARY), out_dir, model_max_length=TOKENIZER_MAX_LENGTH)


def build_text_encoder(p: dict, tokenizer):
    """A small CLIPTextModel: token ids [B, L] -> last_hidden_state [B, L, text_hidden]."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=p["text_hidden"],
        intermediate_size=4 * p["text_hidden"],
        projection_dim=p["text_hidden"],
        num_hidden_layers=p["text_layers"],
        num_attention_heads=p["text_heads"],
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        # The ids of this tokenizer, not CLIP's 49406/49407: the pooled output looks up the EOS.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def build_unet(p: dict, cross_attention_dim: int):
    """UNet2DConditionModel: z_t [B, 4, 16, 16], t [B], text [B, L, D] -> eps [B, 4, 16, 16].

    Cross-attention at 16x16 and 8x8 (and the 4x4 mid block); plain ResNets at 4x4.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(p["unet_channels"]),
        layers_per_block=p["unet_layers"],
        cross_attention_dim=cross_attention_dim,
        # diffusers' legacy naming: for this class attention_head_dim is the number of heads.
        attention_head_dim=p["unet_heads"],
        norm_num_groups=p["unet_groups"],
    )


def build_scheduler():
    """DDIM with Stable Diffusion's training schedule, so sigma/alpha match real SD exactly."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- captions ---------------------------------------------------------------------------------

# Prefix-style phrases (SJC's / stable-dreamfusion's "backside view of ...") per contract view word.
_PREFIX = {"front": "front", "side": "side", "back": "backside", "overhead": "overhead"}
N_VIEW_VARIANTS = 1 + 2 * len(world.VIEWS)  # none, 4 suffix styles, 4 prefix styles


def caption_variant(colour: str, shape: str, other_article: bool, variant: int) -> str:
    """One of the captions the prior is trained on.

    variant 0: ``a red cube``; 1..4: the contract's DreamFusion suffix ``a red cube, {view} view``
    for world.VIEWS[variant - 1]; 5..8: the prefix style ``{front|side|backside|overhead} view of
    a red cube`` (what SJC-style guidance sends). other_article swaps a/an ("an red cube"): the
    contract says the prior must accept both articles.
    """
    prompt = world.object_prompt(colour, shape)
    if other_article:
        article, rest = prompt.split(" ", 1)
        prompt = ("a" if article == "an" else "an") + " " + rest
    if variant == 0:
        return prompt
    view = world.VIEWS[(variant - 1) % len(world.VIEWS)]
    if variant <= len(world.VIEWS):
        return f"{prompt}, {view} view"
    return f"{_PREFIX[view]} view of {prompt}"


class CaptionSampler:
    """Draws training captions as token ids on the device, with no Python loop per sample.

    All 36 x 2 x 9 captions are tokenized once into ``table`` [36, 2, 9, L]; a batch indexes it.
    Per sample (contract): empty w.p. p_empty (classifier-free guidance), else the prompt with a
    view phrase w.p. p_view. Of the view captions a fraction p_prefix uses the prefix style, and
    w.p. p_other_article the other article is used (both additions are ours, see caption_variant).
    """

    def __init__(self, tokenizer, device, p_view=0.5, p_empty=0.1, p_prefix=0.25, p_other_article=0.1):
        colours = list(world.COLOURS)
        self.texts = [
            [[caption_variant(colours[o // len(world.SHAPES)], world.SHAPES[o % len(world.SHAPES)], bool(a), v)
              for v in range(N_VIEW_VARIANTS)] for a in range(2)]
            for o in range(len(world.ALL_OBJECTS))
        ]
        flat = [t for obj in self.texts for art in obj for t in art]
        ids = tokenize(tokenizer, flat, device)  # [36 * 2 * 9, L]
        self.table = ids.view(len(world.ALL_OBJECTS), 2, N_VIEW_VARIANTS, -1)
        self.empty = tokenize(tokenizer, [""], device)[0]  # [L]
        self.p_view, self.p_empty, self.p_prefix, self.p_other_article = p_view, p_empty, p_prefix, p_other_article

    def sample(self, colour_idx, shape_idx, view_idx, generator, p_empty=None) -> tuple[torch.Tensor, torch.Tensor]:
        """colour_idx, shape_idx, view_idx: [B] long on the device (view_idx into world.VIEWS).

        p_empty overrides the sampler's own probability of the empty caption.

        Returns (ids [B, L], variant [B]) where variant -1 marks the empty caption.
        """
        B = colour_idx.shape[0]
        u = torch.rand(4, B, device=colour_idx.device, generator=generator)
        obj = colour_idx * len(world.SHAPES) + shape_idx  # world.ALL_OBJECTS is colour-major
        article = (u[0] < self.p_other_article).long()
        variant = torch.where(
            u[1] < self.p_view, 1 + view_idx + len(world.VIEWS) * (u[2] < self.p_prefix).long(), torch.zeros_like(obj)
        )
        ids = self.table[obj, article, variant]
        empty = u[3] < (self.p_empty if p_empty is None else p_empty)
        ids = torch.where(empty[:, None], self.empty[None], ids)
        return ids, torch.where(empty, torch.full_like(variant, -1), variant)

    def text(self, colour_idx: int, shape_idx: int, article: int, variant: int) -> str:
        return "" if variant < 0 else self.texts[colour_idx * len(world.SHAPES) + shape_idx][article][variant]


def tokenize(tokenizer, captions: list[str], device) -> torch.Tensor:
    """Captions -> ids [n, L], padded exactly as StableDiffusionPipeline pads (max_length)."""
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(device)


# --- data -------------------------------------------------------------------------------------


def render_dataset(n: int, seed: int, device, chunk: int = 4096, log=print) -> dict:
    """n ground-truth renders of the contract's training distribution (no captions).

    Returns dict(images [n, 3, 64, 64] float16 in [0, 1], colour_idx [n], shape_idx [n], view_idx [n]
    (index into world.VIEWS), all on device). Deterministic in (n, seed, chunk).
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float16, device=device)
    colour_idx = torch.empty(n, dtype=torch.long, device=device)
    shape_idx = torch.empty(n, dtype=torch.long, device=device)
    view_idx = torch.empty(n, dtype=torch.long, device=device)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        # Captions are drawn per step by draw_captions; the dataset's own are not used.
        b = sample_training_batch(m, g, device=device, p_view=0.0, p_empty=0.0)
        images[start : start + m] = b["images"].to(torch.float16)
        colour_idx[start : start + m] = b["colour_idx"]
        shape_idx[start : start + m] = b["shape_idx"]
        view_idx[start : start + m] = torch.tensor([world.VIEWS.index(v) for v in b["cameras"].view_names()])
        if log is not None and (start // chunk) % 16 == 0:
            log(f"rendered {start + m}/{n}")
    return dict(images=images, colour_idx=colour_idx, shape_idx=shape_idx, view_idx=view_idx)


def all_prompts() -> list[str]:
    """The 36 prompts in world.ALL_OBJECTS order (colour-major)."""
    return [world.object_prompt(c, s) for c, s in world.ALL_OBJECTS]


# --- latent normalisation folded into the VAE ------------------------------------------------


@torch.no_grad()
def fold_latent_normalisation(vae, channel_mean: torch.Tensor, channel_std: torch.Tensor) -> None:
    """Make the VAE's posterior mean per-channel zero-mean and unit-std, exactly, inside the convs.

    channel_mean, channel_std: [C] statistics of the posterior mean over the data.
    quant_conv outputs moments [mean (C), logvar (C)]; the new latent is z' = (z - m) / s:
      mean'   = (W_mu x + b_mu - m) / s     -> scale rows of W_mu, b_mu; subtract m / s
      logvar' = logvar - 2 log s            -> only the bias changes
    and post_quant_conv(z) = W z + b must see z = s z' + m:
      W' = W diag(s), b' = b + W m.
    The decoded image of every latent is unchanged (up to float rounding); diffusers' SD pipeline
    ignores shift_factor, so folding the per-channel mean here keeps the pipeline exact.
    """
    C = channel_mean.numel()
    m = channel_mean.to(vae.quant_conv.weight)
    s = channel_std.to(vae.quant_conv.weight)
    qw, qb = vae.quant_conv.weight, vae.quant_conv.bias  # [2C, 2C, 1, 1], [2C]
    qw[:C] /= s[:, None, None, None]
    qb[:C] = (qb[:C] - m) / s
    qb[C:] -= 2.0 * torch.log(s)
    pw, pb = vae.post_quant_conv.weight, vae.post_quant_conv.bias  # [C, C, 1, 1], [C]
    pb += (pw[:, :, 0, 0] @ m)
    pw *= s[None, :, None, None]


def write_json(path: str | Path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def psnr(mse: float) -> float:
    """PSNR in dB of images in [0, 1] from their mean squared error."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def software_versions() -> dict:
    import platform

    import diffusers
    import transformers

    v = dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
             transformers=transformers.__version__)
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(0)
    return v
