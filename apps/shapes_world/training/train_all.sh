#!/usr/bin/env bash
# Train the shapes prior end to end on one CUDA GPU and write the pipeline directory.
#
#   bash apps/shapes_world/training/train_all.sh                 # defaults below
#   VAE_SECONDS=100 UNET_SECONDS=240 bash apps/shapes_world/training/train_all.sh
#
# Stages (each a python -m scorelift.shapes_world.training.* command, see README.md):
#   1. train_vae      -> $WORK/vae, vae_metrics.json, vae_recon.png
#   2. train_unet     -> $WORK/unet, text_encoder, tokenizer, unet_metrics.json
#   3. build_pipeline -> $PIPE (fp16, StableDiffusionPipeline layout)
#   4. sample_accuracy-> $WORK/sample_accuracy.json, $PIPE/samples.png
#   5. build_pipeline --card-only -> $PIPE/MODEL_CARD.md
# SMOKE=1 runs every stage with tiny models and few steps (CPU, about a minute).
# Set SKIP_VAE=1 to reuse an existing $WORK/vae, INIT_FROM=dir to continue training the UNet and
# text encoder from a work or pipeline directory.
set -euo pipefail
export PYTHONUNBUFFERED=1
WORK=${WORK:-outputs/shapes_prior}
PIPE=${PIPE:-apps/shapes_world/prior}
VAE_SECONDS=${VAE_SECONDS:-100}
VAE_IMAGES=${VAE_IMAGES:-60000}
UNET_SECONDS=${UNET_SECONDS:-240}
UNET_IMAGES=${UNET_IMAGES:-150000}
UNET_BATCH=${UNET_BATCH:-256}
UNET_SEED=${UNET_SEED:-0}
N_PER_PROMPT=${N_PER_PROMPT:-8}
STEPS=${STEPS:-50}
SMOKE_FLAG=""
if [ -n "${SMOKE:-}" ]; then SMOKE_FLAG="--smoke"; N_PER_PROMPT=1; STEPS=2; fi
mkdir -p "$WORK"

if [ -z "${SKIP_VAE:-}" ]; then
  python -m scorelift.shapes_world.training.train_vae --work "$WORK" --steps 100000 --time-limit "$VAE_SECONDS" \
    --n-images "$VAE_IMAGES" $SMOKE_FLAG
fi
python -m scorelift.shapes_world.training.train_unet --work "$WORK" --steps 1000000 --time-limit "$UNET_SECONDS" \
  --n-images "$UNET_IMAGES" --batch "$UNET_BATCH" --seed "$UNET_SEED" ${INIT_FROM:+--init-from "$INIT_FROM"} $SMOKE_FLAG
python -m scorelift.shapes_world.training.build_pipeline --work "$WORK" --out "$PIPE"
python -m scorelift.shapes_world.training.sample_accuracy --pipeline "$PIPE" --n-per-prompt "$N_PER_PROMPT" \
  --steps "$STEPS" --view-prompts --json "$WORK/sample_accuracy.json" --grid "$PIPE/samples.png"
python -m scorelift.shapes_world.training.build_pipeline --work "$WORK" --out "$PIPE" --card-only
