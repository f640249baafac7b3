"""The creativity axes CREward scores, in the order of the head's outputs."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .errors import CREwardError

AXES: tuple[str, ...] = ("geometry", "material", "texture", "overall")


def axis_index(axis: str) -> int:
    """Position of ``axis`` in the head's output."""
    try:
        return AXES.index(axis)
    except ValueError:
        raise CREwardError(f"unknown axis {axis!r}; expected one of {', '.join(AXES)}") from None


def axis_weights(spec: str | Mapping[str, float] | Sequence[float], axes: Sequence[str] = AXES) -> torch.Tensor:
    """Turn an axis choice into a weight vector over ``axes``.

    Accepts an axis name (``"texture"``), a mapping ``{"geometry": 1.0, "texture": 0.5}``,
    a sequence of len(axes) numbers, or a comma-separated string ``"1,0,0.5,0"``.
    """
    if isinstance(spec, str):
        if "," in spec or spec.replace(".", "", 1).lstrip("-").isdigit():
            try:
                spec = [float(part) for part in spec.split(",")]
            except ValueError:
                raise CREwardError(f"axis weights {spec!r} must be numbers separated by commas") from None
        else:
            weights = torch.zeros(len(axes))
            if spec not in axes:
                raise CREwardError(f"unknown axis {spec!r}; expected one of {', '.join(axes)}")
            weights[list(axes).index(spec)] = 1.0
            return weights
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(axes))
        if unknown:
            raise CREwardError(f"unknown axes {unknown}; expected some of {', '.join(axes)}")
        return torch.tensor([float(spec.get(axis, 0.0)) for axis in axes])
    values = [float(value) for value in spec]
    if len(values) != len(axes):
        raise CREwardError(f"expected {len(axes)} axis weights ({', '.join(axes)}), got {len(values)}")
    return torch.tensor(values)
