"""Creative LoRAs: reward-guided LoRA training with CREward (the paper's creative LoRAs).

Plain Python (import anywhere): ``config`` (the run's settings), ``export`` (file format, metadata,
``read_lora_info``), ``curve`` (reward-curve image), ``prompts``, ``base_model`` (architecture and
weight signature of a ComfyUI model), ``cli`` (``creward train lora``; imports ComfyUI only after
``--comfyui PATH`` put it on ``sys.path``).

Need ComfyUI importable (the trainer works on ComfyUI's own model classes, so any checkpoint
ComfyUI loads can be trained): ``injection`` (LoRAs as ComfyUI weight adapters), ``session``
(running inside ComfyUI's sampling set-up; one-step estimate; checkpointing helpers),
``generate`` (KSampler-identical sampling), ``trainer`` (``train_creative_lora``), ``apply``
(signed per-axis LoRAs with base-model checks).
"""
