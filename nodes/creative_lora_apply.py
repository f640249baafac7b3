"""``CREwardCreativeLoRA``: per-axis creativity sliders made of creative LoRAs.

One LoRA slot per axis (geometry, material, texture, overall), each with a signed strength:
positive = more creative on that axis, negative = less. Files are applied with ComfyUI's own
LoRA loading (``comfy.sd.load_lora_for_models``); their metadata is read to warn when a LoRA was
trained on another base model or for another axis. A slot with "None" or strength 0 changes
nothing.
"""

from __future__ import annotations

import logging

from ..models.axes import AXES
from ..models.errors import CREwardError

logger = logging.getLogger(__name__)

CATEGORY = "CREward/creative LoRA"
NONE = "None"


def _loras() -> list[str]:
    import folder_paths

    return [NONE, *folder_paths.get_filename_list("loras")]


class CREwardCreativeLoRA:
    """Apply up to one creative LoRA per axis with a signed strength each."""

    def __init__(self):
        self.cache: dict = {}  # path -> (mtime, tensors), like LoraLoader's loaded_lora

    @classmethod
    def INPUT_TYPES(cls):
        loras = _loras()
        required = {"model": ("MODEL", {"tooltip": "The model to apply the creative LoRAs to."})}
        for axis in AXES:
            required[f"{axis}_lora"] = (loras, {
                "default": NONE,
                "tooltip": f"A creative LoRA trained for {axis} creativity (models/loras/), or None.",
            })
            required[f"{axis}_strength"] = ("FLOAT", {
                "default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
                "tooltip": f"How much more creative on {axis}: positive raises it, negative lowers it, 0 = off.",
            })
        return {
            "required": required,
            "optional": {"clip": ("CLIP", {"tooltip": "Optional text encoder; passed through (patched if a LoRA has "
                                           "text-encoder weights)."})},
        }

    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("model", "clip", "summary")
    OUTPUT_TOOLTIPS = (
        "The model with the creative LoRAs applied.",
        "The CLIP input (patched when a LoRA holds text-encoder weights); None when not connected.",
        "Which LoRAs were applied with which strength, and any warnings.",
    )
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Creativity sliders: one creative LoRA per axis (geometry, material, texture, overall) with a signed strength "
        "(negative = less creative on that axis). Warns when a LoRA was trained on another base model."
    )
    SEARCH_ALIASES = ["creativity slider", "creative lora"]

    def apply(self, model, clip=None, **slots):
        import folder_paths

        from ..train.lora.apply import apply_creative_loras, describe

        entries = []
        for axis in AXES:
            name = slots.get(f"{axis}_lora", NONE)
            strength = float(slots.get(f"{axis}_strength", 0.0))
            if name in (None, "", NONE):
                continue
            path = folder_paths.get_full_path("loras", name)
            if path is None:
                raise CREwardError(f"{axis}_lora: {name!r} is not in models/loras/ ({', '.join(_loras()[1:6]) or 'empty'})")
            entries.append((axis, path, strength))
        model, clip, applied = apply_creative_loras(model, clip, entries, self.cache)
        summary = describe(applied)
        return {"ui": {"text": [summary]}, "result": (model, clip, summary)}
