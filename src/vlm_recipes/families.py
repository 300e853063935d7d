"""The three Qwen-VL families and what differs between them.

Names are transformers' `model_type` strings. Users may also write them with dashes/dots
(`qwen2-vl`, `qwen2.5-vl`, `qwen3-vl`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class Family:
    name: str  # transformers model_type
    patch_size: int  # vision patch side in pixels
    merge_size: int  # patches merged per side into one LLM token
    box_format: str  # "ref_box_1000" | "json_abs_resized" | "json_1000"

    @property
    def pixels_per_token_side(self) -> int:
        # smart_resize rounds image sides to this factor
        return self.patch_size * self.merge_size


FAMILIES = {
    "qwen2_vl": Family("qwen2_vl", patch_size=14, merge_size=2, box_format="ref_box_1000"),
    "qwen2_5_vl": Family("qwen2_5_vl", patch_size=14, merge_size=2, box_format="json_abs_resized"),
    "qwen3_vl": Family("qwen3_vl", patch_size=16, merge_size=2, box_format="json_1000"),
}

_ALIASES = {"qwen2-vl": "qwen2_vl", "qwen2.5-vl": "qwen2_5_vl", "qwen2_5-vl": "qwen2_5_vl",
            "qwen25_vl": "qwen2_5_vl", "qwen3-vl": "qwen3_vl"}


def get_family(name: str) -> Family:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in FAMILIES:
        raise InputError(f"unknown model family {name!r}: use one of {', '.join(FAMILIES)}")
    return FAMILIES[key]
