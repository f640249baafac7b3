"""Latents → images for scoring: differentiable decoding (guidance, LoRA training) and cheap
chunked previews (steering checkpoints).

Imports nothing from ComfyUI at module level, but takes ComfyUI ``VAE`` objects.
"""

from __future__ import annotations

import torch


def decode_differentiable(vae, latent: torch.Tensor) -> torch.Tensor:
    """VAE latent ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1], keeping the autograd graph.

    ``comfy.sd.VAE.decode`` would batch, tile on OOM and copy into a fresh buffer; here the
    decoder runs directly (same ``process_output`` mapping to [0, 1]).
    """
    z = latent.to(device=vae.device, dtype=vae.vae_dtype)
    images = vae.process_output(vae.first_stage_model.decode(z).float())
    if images.ndim == 5:  # video VAEs: first frame
        images = images[:, :, 0]
    return images


def latent_channels_of(vae) -> int | None:
    """Latent channels a ComfyUI VAE (or TAESD) decodes, when it says."""
    value = getattr(vae, "latent_channels", None)
    return value if isinstance(value, int) else None


class PreviewDecoder:
    """Cheap, chunked decoding of VAE latents into images for scoring during sampling.

    Wraps a ComfyUI ``VAE`` (``decode_differentiable``) or a TAESD module (``comfy.taesd.taesd.TAESD``,
    as ComfyUI's TAESD previews load it from ``models/vae_approx``). ``chunk`` latents are decoded
    at a time, so a large particle count never decodes all at once.

    Args:
        module: the ComfyUI VAE or TAESD.
        kind: ``"vae"`` or ``"taesd"`` (shown in logs and lineage texts).
        name: what was loaded (file name), for messages.
        chunk: latents per decode call.
        latent_format: for TAESD, the model's latent format: TAESD decodes the model's latent space
            (what ComfyUI's previews give it), so VAE latents are scaled with ``process_in`` first.

    Every method takes VAE latents (what ``VAEDecode`` takes).
    """

    def __init__(self, module, kind: str, name: str = "", chunk: int = 4, latent_format=None):
        if kind not in ("vae", "taesd"):
            raise ValueError(f"kind should be 'vae' or 'taesd', got {kind!r}")
        if chunk < 1:
            raise ValueError(f"chunk should be positive, got {chunk}")
        self.module = module
        self.kind = kind
        self.name = name or kind
        self.chunk = chunk
        self.latent_format = latent_format

    @property
    def latent_channels(self) -> int | None:
        if self.kind == "taesd":
            conv = self.module.taesd_decoder[1] if hasattr(self.module, "taesd_decoder") else None
            weight = getattr(conv, "weight", None)
            return int(weight.shape[1]) if weight is not None else None
        return latent_channels_of(self.module)

    def check_latents(self, latents: torch.Tensor, input_name: str = "latent") -> None:
        """A clear error when the decoder cannot take these latents (channels, 4-D image latents)."""
        from ..models.errors import CREwardError

        if latents.ndim != 4:
            raise CREwardError(
                f"{input_name}: expected image latents [batch, channels, height, width], got shape {tuple(latents.shape)} "
                "(video and audio latents are not supported by CREward steering)"
            )
        channels = self.latent_channels
        if channels is not None and latents.shape[1] != channels:
            raise CREwardError(
                f"the {self.kind} {self.name!r} decodes {channels}-channel latents but the latent has {latents.shape[1]} channels: "
                "connect the VAE (or TAESD) that belongs to this model"
            )

    def prepare(self) -> None:
        """Make sure a ComfyUI VAE's weights sit on its device (ComfyUI may have offloaded them)."""
        patcher = getattr(self.module, "patcher", None)
        if self.kind == "vae" and patcher is not None:
            import comfy.model_management

            comfy.model_management.load_models_gpu([patcher])

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.kind == "taesd":
            parameter = next(self.module.parameters())
            z = self.latent_format.process_in(latents) if self.latent_format is not None else latents
            images = self.module.decode(z.to(device=parameter.device, dtype=parameter.dtype))
            return ((images.float() + 1.0) / 2.0).clamp(0, 1)
        return decode_differentiable(self.module, latents).clamp(0, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1], chunk by chunk, without gradients."""
        self.check_latents(latents)
        with torch.no_grad():
            return torch.cat([self._decode(latents[start:start + self.chunk]) for start in range(0, len(latents), self.chunk)])

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """Like ``decode`` but keeping the autograd graph (one call; the caller chunks)."""
        self.check_latents(latents)
        return self._decode(latents)

    def describe(self) -> str:
        return f"{self.kind} {self.name}" if self.name != self.kind else self.kind


def taesd_for(latent_format, device=None):
    """The TAESD decoder ComfyUI's previews would use for ``latent_format`` (``models/vae_approx``), or None.

    Imports ComfyUI (``folder_paths``, ``comfy.taesd``).
    """
    import folder_paths
    from comfy.taesd.taesd import TAESD

    name = getattr(latent_format, "taesd_decoder_name", None)
    if not name or name.startswith("taehv") or name.startswith("taew") or name.startswith("taeltx"):
        return None
    file = next((fn for fn in folder_paths.get_filename_list("vae_approx") if fn.startswith(name)), None)
    if file is None:
        return None
    path = folder_paths.get_full_path("vae_approx", file)
    taesd = TAESD(None, path, latent_channels=latent_format.latent_channels)
    if device is not None:
        taesd = taesd.to(device)
    return PreviewDecoder(taesd.eval(), "taesd", file, latent_format=latent_format)


def preview_decoder(choice: str, latent_format, vae=None, device=None, chunk: int = 4) -> PreviewDecoder:
    """The decoder for steering previews: ``choice`` is ``auto`` (TAESD when ``models/vae_approx``
    has one for this latent format, else ``vae``), ``taesd`` or ``vae``. Clear errors name what is missing."""
    from ..models.errors import CREwardError

    if choice not in ("auto", "taesd", "vae"):
        raise CREwardError(f"preview decoder {choice!r}: expected auto, taesd or vae")
    if choice in ("auto", "taesd"):
        decoder = taesd_for(latent_format, device)
        if decoder is not None:
            decoder.chunk = chunk
            return decoder
        if choice == "taesd":
            name = getattr(latent_format, "taesd_decoder_name", None) or "a TAESD decoder"
            raise CREwardError(
                f"preview decoder 'taesd': no {name}.* in models/vae_approx for this model's latent format "
                f"({type(latent_format).__name__}); put the TAESD file there or connect a VAE and choose 'vae'"
            )
    if vae is None:
        raise CREwardError(
            "no decoder for the previews: connect a VAE (or put the TAESD for this model in models/vae_approx and choose 'auto')"
        )
    return PreviewDecoder(vae, "vae", "VAE", chunk)
