"""Which head and backbone produced a set of scores.

Scores from different heads (or the same head on another backbone) are on unrelated scales, so
anything that keeps scores for later (reference sets, score files of the dataset job) records a
``ScorerIdentity``: the head file's name (for people), the head's content hash (``head_hash`` in
``creward.models.head``: the same weights give the same hash whatever the file is called), the
backbone name and the axes. Two identities *match* when hash, backbone and axes agree; the file
name may differ.

As a dict (JSON, file metadata)::

    {"head": "creward_clip.safetensors", "head_hash": "<64 hex digits>", "backbone": "clip",
     "axes": ["geometry", "material", "texture", "overall"]}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import CREwardError

SHORT_HASH = 12


@dataclass(frozen=True)
class ScorerIdentity:
    """Head name and content hash, backbone name and axes of a CREward scorer."""

    head: str
    head_hash: str
    backbone: str
    axes: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "axes", tuple(self.axes))

    @classmethod
    def of_model(cls, model) -> "ScorerIdentity":
        """The identity of a loaded ``creward.models.CREward``."""
        from .head import head_hash

        info = model.head_info
        digest = info.content_hash or head_hash(model.head.state_dict())
        return cls(Path(info.path).name if info.path else "(in memory)", digest, model.spec.name, tuple(model.axes))

    @classmethod
    def of_head_file(cls, path: str | os.PathLike, backbone: str | None = None) -> "ScorerIdentity":
        """The identity of a head file (only the head is read; no backbone is loaded)."""
        from .head import read_head_file

        _, info = read_head_file(path, backbone)
        if info.backbone is None:
            raise CREwardError(f"{path} does not say which backbone it was trained on (official .ckpt): pass --backbone NAME")
        return cls(Path(path).name, info.content_hash, info.backbone, tuple(info.axes))

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "scorer identity") -> "ScorerIdentity":
        """Parse the dict form; ``CREwardError`` naming ``source`` and the bad field otherwise."""
        if not isinstance(data, Mapping):
            raise CREwardError(f"{source}: expected an object with head, head_hash, backbone and axes, got {type(data).__name__}")
        missing = [key for key in ("head", "head_hash", "backbone", "axes") if key not in data]
        if missing:
            raise CREwardError(f"{source}: missing {', '.join(missing)} (expected head, head_hash, backbone, axes)")
        axes = data["axes"]
        if not isinstance(axes, list) or not axes or not all(isinstance(axis, str) for axis in axes):
            raise CREwardError(f"{source}: 'axes' should be a list of axis names, got {axes!r}")
        for key in ("head", "head_hash", "backbone"):
            if not isinstance(data[key], str) or not data[key]:
                raise CREwardError(f"{source}: {key!r} should be a non-empty string, got {data[key]!r}")
        return cls(data["head"], data["head_hash"], data["backbone"], tuple(axes))

    def as_dict(self) -> dict:
        return {"head": self.head, "head_hash": self.head_hash, "backbone": self.backbone, "axes": list(self.axes)}

    def matches(self, other: "ScorerIdentity") -> bool:
        return (self.head_hash, self.backbone, self.axes) == (other.head_hash, other.backbone, other.axes)

    def describe(self) -> str:
        """``head creward_clip.safetensors (sha256 1a2b3c4d5e6f, backbone clip)``."""
        return f"head {self.head} (sha256 {self.head_hash[:SHORT_HASH]}, backbone {self.backbone})"
