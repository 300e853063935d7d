"""Bidirectional attention in the language model of a Qwen-VL model, for masked diffusion.

transformers (5.x) has one switch for this, used here: `is_causal = False` on the TEXT config.
The text model's forward (`merge_with_config_defaults`) then
  * builds its mask with `create_causal_mask`, which for `is_causal=False` returns a
    padding-only bidirectional mask (4-D for sdpa/eager, the 2-D padding mask or None for
    flash attention), and
  * passes `is_causal=False` to every attention call, so sdpa without a mask and the
    flash-attention kernels run non-causal too. Being a call argument, it is also what a
    gradient-checkpointing recomputation sees, after this context has exited.
Setting only the mask, or only the modules' `is_causal`, leaves one of the paths causal (the trap
of wrapping the stock model, as dllm's Qwen3-VL example does).

The vision tower has its own config, and its attention is non-causal already; it is not touched.
The switch is a context manager, so the same model generates causally outside it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

_MISSING = object()


def language_model(model: nn.Module) -> nn.Module:
    """The text decoder (`...model.language_model`), also inside a peft wrapper."""
    for name, module in model.named_modules():
        if name.endswith("language_model") and hasattr(module, "layers"):
            return module
    raise TypeError(f"{type(model).__name__} has no `language_model` with decoder layers: "
                    "bidirectional attention supports the Qwen2-VL, Qwen2.5-VL and Qwen3-VL classes")


@contextmanager
def bidirectional_attention(model: nn.Module) -> Iterator[None]:
    """Inside the block every non-padding token of the language model attends to every other.

    Re-entrant: each exit restores exactly what its entry found (no attribute is left behind in
    a config that may be saved later).
    """
    config = language_model(model).config
    saved = config.__dict__.get("is_causal", _MISSING)
    config.is_causal = False
    try:
        yield
    finally:
        if saved is _MISSING:
            del config.is_causal
        else:
            config.is_causal = saved


def is_bidirectional(model: nn.Module) -> bool:
    return getattr(language_model(model).config, "is_causal", True) is False
