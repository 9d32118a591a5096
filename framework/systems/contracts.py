"""What the system expects back from the plugins it calls in a training step, checked once.

The system calls its guidance and its losses on every step; a plugin that returns the wrong
thing would otherwise fail deep inside the step (a ``KeyError: 'loss'``, or Lightning refusing a
non-scalar loss) with a message that names neither the plugin nor what it should return. The
system calls ``check_guidance_output`` and ``check_loss_output`` on its first training step only
(their cost never recurs); a broken contract raises ``PluginError`` with one paragraph that names
the plugin (kind, registered name, class, module, and the package it was registered by where
the registry knows one), what it returned, and the contract.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from .. import registry
from ..errors import PluginError

GUIDANCE_CONTRACT = (
    "A guidance's __call__ must return a dict with a scalar (0-dim) floating-point tensor under "
    "'loss' whose gradient with respect to the render is the method's dL/d(render) (e.g. "
    "score_math.inject_gradient(z, g)); every other entry is a loggable scalar (a number or a "
    "0-dim tensor), logged as train/<key>."
)
LOSS_CONTRACT = (
    "A loss's __call__(render, cameras) must return a scalar (0-dim) floating-point tensor, the "
    "unweighted loss; the system multiplies it by its lambda_<name> weight."
)


def describe_plugin(kind: str, name: str, plugin: Any) -> str:
    """``guidance 'sds' (class SDSGuidance in module scorelift.plugins.guidance.sds)``, with
    ``registered by <origin>`` added where the registry's origin differs from the module (an
    entry point's origin names its package and version; a local file's, its path)."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    text = f"{kind} {name!r} (class {cls.__qualname__} in module {cls.__module__}"
    entry = registry.available(kind)[kind].get(name)
    if entry is not None and entry.origin != cls.__module__:
        text += f", registered by {entry.origin}"
    return text + ")"


def describe_value(value: Any) -> str:
    """A short account of a returned value: its type, and for tensors their shape and dtype."""
    if isinstance(value, torch.Tensor):
        grad = ", requires_grad" if value.requires_grad else ""
        return f"a tensor of shape {tuple(value.shape)} ({str(value.dtype).replace('torch.', '')}{grad})"
    cls = type(value)
    kind = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {kind} of shape {tuple(shape)}"
    if isinstance(value, dict):
        return f"a {kind} with keys {sorted(map(str, value))}"
    text = repr(value)
    return f"a {kind} ({text[:57] + '...' if len(text) > 60 else text})"


def is_scalar_loss(value: Any) -> bool:
    """A 0-dim floating-point tensor."""
    return isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point()


def is_loggable(value: Any) -> bool:
    """A real number, or a 0-dim real (not complex) tensor: what the system can log as a scalar."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_complex()
    return isinstance(value, numbers.Real)


def check_guidance_output(out: Any, name: str, guidance: Any, render: torch.Tensor | None = None) -> None:
    """PluginError unless ``out`` (what guidance ``name`` returned) keeps the guidance contract.

    ``render``: the image the guidance was given; when it carries a gradient, the loss must too
    (a loss cut off from the render would train nothing).
    """
    if not isinstance(out, dict):
        problems = [f"it returned {describe_value(out)} instead of a dict"]
    else:
        problems = []
        if "loss" not in out:
            problems.append(f"it returned a dict with keys {sorted(map(str, out))} and no 'loss'")
        else:
            loss = out["loss"]
            if not is_scalar_loss(loss):
                problems.append(f"its 'loss' is {describe_value(loss)}")
            elif render is not None and render.requires_grad and torch.is_grad_enabled() and not loss.requires_grad:
                problems.append(
                    f"its 'loss' is {describe_value(loss)} that does not depend on the render (no gradient "
                    f"flows back, so the guidance would train nothing)"
                )
        bad = {key: value for key, value in out.items() if key != "loss" and not is_loggable(value)}
        if bad:
            problems.append(
                "entries that cannot be logged as scalars: "
                + ", ".join(f"{key!r} is {describe_value(value)}" for key, value in bad.items())
            )
    if problems:
        raise PluginError(
            f"The {describe_plugin('guidance', name, guidance)} broke the guidance contract at the first "
            f"training step: {'; '.join(problems)}. {GUIDANCE_CONTRACT} Fix the plugin "
            f"(docs/plugins.md, section 1), or pick another guidance."
        )


def check_loss_output(value: Any, name: str, loss: Any) -> None:
    """PluginError unless ``value`` (what loss ``name`` returned) is a scalar tensor."""
    if not is_scalar_loss(value):
        raise PluginError(
            f"The {describe_plugin('loss', name, loss)} broke the loss contract at the first training "
            f"step: it returned {describe_value(value)}. {LOSS_CONTRACT} Fix the plugin (docs/plugins.md, "
            f"section 1), or remove it from system.losses and system.loss_weights."
        )
