"""The reward of a latent: decode (preview decoder) → CREward scores per axis → weighted value.

Plain PyTorch apart from the decoder it is given; used by steering (scores at checkpoints) and
guidance (the gradient of the value with respect to the latent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..models.axes import AXES, axis_weights
from ..models.errors import CREwardError
from .decoders import PreviewDecoder

Scorer = Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, H, W] in [0, 1] -> scores [B, axes], differentiable


@dataclass(frozen=True)
class RewardSpec:
    """Which axes count and how much: ``weights[i]`` multiplies axis ``axes[i]``."""

    axes: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, spec, axes: Sequence[str] = AXES) -> "RewardSpec":
        """``spec``: an axis name (``texture``), a mix (``geometry=1,texture=0.5``), a list of weights
        (``1,0,0.5,0``) or a mapping; names outside ``axes`` are an error that lists them."""
        axes = tuple(axes)
        if isinstance(spec, str) and spec.strip() in axes:
            weights = tuple(1.0 if axis == spec.strip() else 0.0 for axis in axes)
        else:
            try:
                weights = tuple(float(value) for value in axis_weights(spec, axes).tolist())
            except (CREwardError, ValueError) as error:
                raise CREwardError(f"axis {spec!r}: {error} (this head's axes: {', '.join(axes)})") from error
        if not any(weights):
            raise CREwardError(f"axis {spec!r}: every weight is 0, nothing to steer towards")
        return cls(axes, weights)

    def vector(self, device=None) -> torch.Tensor:
        return torch.tensor(self.weights, dtype=torch.float32, device=device)

    def describe(self) -> str:
        used = [(axis, weight) for axis, weight in zip(self.axes, self.weights) if weight]
        if len(used) == 1 and used[0][1] == 1.0:
            return used[0][0]
        return " + ".join(f"{weight:g}*{axis}" for axis, weight in used)


class LatentReward:
    """Scores of VAE latents, decoded by ``decoder`` and scored by ``scorer``.

    Args:
        scorer: images ``[B, 3, H, W]`` in [0, 1] → scores ``[B, len(spec.axes)]``
            (a ``CREward`` module, called directly so that gradients flow).
        spec: ``RewardSpec``; its axes must be the scorer's.
        decoder: ``PreviewDecoder``.
        batch_size: images per scorer call.
        on_batch: called after every scored chunk (progress, interrupts).
    """

    def __init__(self, scorer: Scorer, spec: RewardSpec, decoder: PreviewDecoder, batch_size: int = 4,
                 on_batch: Callable[[], None] | None = None):
        self.scorer = scorer
        self.spec = spec
        self.decoder = decoder
        self.batch_size = max(1, int(batch_size))
        self.on_batch = on_batch

    @property
    def axes(self) -> tuple[str, ...]:
        return self.spec.axes

    def scores(self, latents: torch.Tensor, images_out: list | None = None) -> torch.Tensor:
        """Float32 scores ``[B, axes]`` on the CPU, chunk by chunk, no gradients.

        ``images_out``: a list that receives the decoded images ``[b, 3, H, W]`` chunk by chunk
        (on the CPU), for callers that also show them."""
        self.decoder.check_latents(latents)
        self.decoder.prepare()
        results = []
        with torch.no_grad():
            for start in range(0, len(latents), self.batch_size):
                images = self.decoder.decode(latents[start:start + self.batch_size])
                results.append(self.scorer(images).float().cpu())
                if images_out is not None:
                    images_out.append(images.float().cpu())
                if self.on_batch is not None:
                    self.on_batch()
        return torch.cat(results)

    def values(self, scores: torch.Tensor) -> torch.Tensor:
        """The weighted reward ``[B]`` of ``scores``."""
        return scores.float() @ self.spec.vector(scores.device)

    def value_with_grad(self, latents: torch.Tensor) -> torch.Tensor:
        """Weighted reward ``[B]`` of ``latents`` with the autograd graph back to them (one call)."""
        self.decoder.prepare()
        images = self.decoder.decode_differentiable(latents)
        scores = self.scorer(images).float()
        return scores @ self.spec.vector(scores.device)
