"""scorelift.library: building blocks the parts share, built on the interfaces; it registers nothing.

- ``sds``: Score Distillation Sampling (``SDSGuidance``, ``SDSConfig``), registered by the built-in
  part ``sds`` and subclassed by ``ssd`` and third-party guidances;
- ``pipelines``: finding and checking a diffusers pipeline directory before any weight is read, and
  the one-paragraph errors that say what a valid one holds;
- ``text_conditioning``: view-dependent prompt templates, prompt-length checks, cached embeddings;
- ``pixel_prior``: what the pixel-space priors share (no VAE, the model's data range, class labels);
- ``bpe_vocabulary``: CLIP BPE files for a small closed vocabulary (the embedded and tiny priors);
- ``background_options``: the options every background checks alike;
- ``hash_encoding_triton``, ``hash_encoding_tcnn``: the hash-grid encoding's optional CUDA backends.

Part of the plugin API (docs/library.md).
"""
