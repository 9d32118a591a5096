"""scorelift.maths: tensor maths the parts share, with no model and no registered part.

- ``score_math``: classifier-free guidance with a named convention, gradient injection, the VP <-> VE
  noise-level maps, timestep sampling from an explicit generator;
- ``parameterisation``: a denoiser's raw output (eps, v, x0; VP or VE) turned into eps;
- ``resize``: bilinear resizing of image batches that stays deterministic on the GPU;
- ``compositing``: alpha compositing along rays (pure PyTorch, or nerfacc where installed).

Part of the plugin API (docs/library.md); it imports only the base of the core.
"""
