"""CREward for ComfyUI: type-specific creativity reward (geometry, material, texture, overall).

This folder is both the ComfyUI custom-node pack (ComfyUI imports it from ``custom_nodes/``)
and the Python package ``creward`` (``pip install -e .``). ComfyUI's own modules are only
imported when ComfyUI is the host, so the library and CLI work without ComfyUI installed.
"""

import importlib.util
import logging

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./web"


def _running_inside_comfyui() -> bool:
    return importlib.util.find_spec("folder_paths") is not None and importlib.util.find_spec("comfy") is not None


if _running_inside_comfyui():
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]
