"""The question asked of the LVLM judge, and the parser of its answer.

One request shows two images (the first shown is "A", the second "B") and asks, per axis
(:data:`creward.models.axes.AXES`), which is more creative: ``"A"``, ``"B"`` or ``"tie"``.
The answer must contain a JSON object mapping every axis name to one of those; it may be
bare, inside prose, or inside a ```json code fence. Anything else is malformed - the parser
returns ``None`` and never guesses.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Mapping

from ..models.axes import AXES

logger = logging.getLogger(__name__)

CHOICES: tuple[str, ...] = ("A", "B", "tie")

# Written definitions of the axes, in AXES order (the order the question lists them in).
AXIS_DEFINITIONS: dict[str, str] = {
    "geometry": "creativity of the object's shape, form, silhouette and structure "
    "(its proportions, how its parts are arranged and joined)",
    "material": "creativity of what the object appears to be made of "
    "(the substances it is built from and how they are combined)",
    "texture": "creativity of the object's surface: its patterns, decoration, ornament and surface detail",
    "overall": "the overall creativity of the object as a whole, all aspects together",
}
assert tuple(AXIS_DEFINITIONS) == AXES, "AXIS_DEFINITIONS must list every axis in AXES order"

_TIE_WORDS = {"tie", "equal", "same", "draw"}
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def build_question(subject: str | None = None) -> str:
    """The text of the question; ``subject`` (e.g. ``"chair"``) names the object if known."""
    thing = f"a {subject}" if subject else "an object"
    lines = [
        f"You are an expert judge of design creativity. You are shown two images, each of {thing}. "
        "The first image is Image A, the second image is Image B.",
        "",
        "Compare how creative the two objects are along each of these axes:",
    ]
    lines += [f"- {axis}: {definition}." for axis, definition in AXIS_DEFINITIONS.items()]
    lines += [
        "",
        "Creative means novel, original and surprising while still coherent"
        + (f" and recognisable as a {subject}" if subject else "")
        + "; not merely strange, broken or low quality. Judge the object itself, not the image quality, "
        "lighting, background or photography.",
        'For each axis answer "A" if Image A is more creative, "B" if Image B is more creative, '
        'or "tie" if neither is clearly more creative.',
        "Reply with only a JSON object with exactly these keys, each value one of \"A\", \"B\", \"tie\":",
        "{" + ", ".join(f'"{axis}": "A|B|tie"' for axis in AXES) + "}",
    ]
    return "\n".join(lines)


def build_messages(image_a_url: str, image_b_url: str, subject: str | None = None) -> list[dict[str, Any]]:
    """OpenAI chat ``messages`` asking the question about two images given as data URLs.

    The images are two ``image_url`` content parts, Image A first. Everything is in one user
    message (some chat templates reject a system message next to images).
    """
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": build_question(subject)},
                {"type": "text", "text": "Image A:"},
                {"type": "image_url", "image_url": {"url": image_a_url}},
                {"type": "text", "text": "Image B:"},
                {"type": "image_url", "image_url": {"url": image_b_url}},
            ],
        }
    ]


def _choice(value: Any) -> str | None:
    """Normalise one answer value to "A", "B" or "tie"; None if it is anything else."""
    if not isinstance(value, str):
        return None
    text = value.strip().strip("\"'.!").strip().lower()
    if text.startswith("image "):
        text = text[len("image ") :].strip()
    if text == "a":
        return "A"
    if text == "b":
        return "B"
    if text in _TIE_WORDS:
        return "tie"
    return None


def _labels_from(obj: Any) -> dict[str, str] | None:
    """Labels from a decoded JSON value: a dict with every axis, or such a dict one level down."""
    if not isinstance(obj, Mapping):
        return None
    keys = {str(key).strip().lower(): value for key, value in obj.items()}
    if all(axis in keys for axis in AXES):
        labels = {axis: _choice(keys[axis]) for axis in AXES}
        if all(labels.values()):
            return labels  # type: ignore[return-value]
        return None
    for value in obj.values():  # e.g. {"answer": {"geometry": "A", ...}}
        if isinstance(value, Mapping):
            found = _labels_from(value)
            if found:
                return found
    return None


def _objects_in(text: str) -> list[Any]:
    """Every JSON object that can be decoded starting at some '{' in ``text``, in order."""
    decoder = json.JSONDecoder()
    found = []
    position = text.find("{")
    while position != -1:
        try:
            obj, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        found.append(obj)
        position = text.find("{", end)
    return found


def parse_answer(text: str | None) -> dict[str, str] | None:
    """Per-axis choices ("A", "B", "tie") from an answer, or None if it is malformed.

    Looks for a JSON object mapping every axis to a choice: in ```json code fences first, then
    anywhere in the text; reasoning in ``<think>`` blocks is ignored. The last complete object
    wins (a model may quote an example before its final answer). Keys are matched case-
    insensitively, values may be "A"/"B"/"tie" in any case (or "Image A", "equal"); extra keys
    are ignored. A missing axis or any other value makes the whole answer malformed.
    """
    if not text:
        return None
    text = _THINK.sub("", text)
    fenced = [obj for block in _FENCE.findall(text) for obj in _objects_in(block)]
    for candidates in (fenced, _objects_in(text)):
        for obj in reversed(candidates):
            labels = _labels_from(obj)
            if labels:
                return labels
    return None
