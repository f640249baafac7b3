"""The creativity axes CREward scores, in the order of the head's outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from .errors import CREwardError

if TYPE_CHECKING:
    import torch

AXES: tuple[str, ...] = ("geometry", "material", "texture", "overall")


def parse_weight_list(text: str, axes: Sequence[str] = AXES) -> tuple[float, ...]:
    """``"1,0,0.5,0"`` → one float per axis; ``ValueError`` saying what is expected otherwise.

    Plain Python (no torch), so the command line can check ``--weights`` while parsing.
    """
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"axis weights {text!r} must be numbers separated by commas, e.g. 1,0,0.5,0") from None
    if len(values) != len(axes):
        raise ValueError(f"expected {len(axes)} axis weights ({', '.join(axes)}), got {len(values)} in {text!r}")
    if not all(value == value and abs(value) != float("inf") for value in values):
        raise ValueError(f"axis weights {text!r} must be finite numbers")
    return values


def parse_weight_mix(text: str) -> dict[str, float]:
    """``"geometry=1,texture=0.5"`` → ``{"geometry": 1.0, "texture": 0.5}`` (names checked by the caller)."""
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise CREwardError(f"axis weights {text!r}: {part.strip()!r} is not axis=number, e.g. texture=0.5") from None
    return weights


def axis_index(axis: str) -> int:
    """Position of ``axis`` in the head's output."""
    try:
        return AXES.index(axis)
    except ValueError:
        raise CREwardError(f"unknown axis {axis!r}; expected one of {', '.join(AXES)}") from None


def axis_weights(spec: str | Mapping[str, float] | Sequence[float], axes: Sequence[str] = AXES) -> "torch.Tensor":
    """Turn an axis choice into a weight vector over ``axes``.

    Accepts an axis name (``"texture"``), a mapping ``{"geometry": 1.0, "texture": 0.5}`` or the
    same as text (``"geometry=1,texture=0.5"``), a sequence of len(axes) numbers, or a
    comma-separated string ``"1,0,0.5,0"``.
    """
    import torch

    if isinstance(spec, str) and "=" in spec:
        spec = parse_weight_mix(spec)
    if isinstance(spec, str):
        if "," in spec or spec.replace(".", "", 1).lstrip("-").isdigit():
            try:
                spec = parse_weight_list(spec, axes)
            except ValueError as error:
                raise CREwardError(str(error)) from None
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
