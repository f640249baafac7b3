"""ComfyUI nodes: thin adapters over ``creward.models``. Imported only when ComfyUI is the host."""

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
