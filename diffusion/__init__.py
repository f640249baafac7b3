"""Generation-time code, on ComfyUI: base model, clean estimate, sampling, previews, steering,
guidance and sample acquisition.

Modules here import ComfyUI (``comfy``) unless their docstring says otherwise; import them only
where ComfyUI is importable (inside ComfyUI, or after ``diffusion.host.setup_comfyui``).
``train/lora/``, the nodes and the CLI use this package; it never imports them.
"""
