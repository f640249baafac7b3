"""Contact sheets: rows of labelled thumbnails in one PIL image (plain Python, no ComfyUI)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 200
CAPTION_HEIGHT = 14
PAD = 6
GAP = 18  # between the top-k and bottom-k groups of a row


@dataclass
class Tile:
    image: Image.Image
    caption: str


@dataclass
class Row:
    label: str
    groups: Sequence[Sequence[Tile]]  # e.g. (top tiles, bottom tiles)


def contact_sheet(rows: Sequence[Row], thumb: int = 128, title: str = "") -> Image.Image:
    """Draw ``rows``: a label on the left, then each group's tiles (thumbnails with captions)."""
    font = ImageFont.load_default()
    tiles = max((sum(len(group) for group in row.groups) for row in rows), default=0)
    groups = max((sum(1 for group in row.groups if group) for row in rows), default=0)
    width = LABEL_WIDTH + PAD + max(tiles, 1) * (thumb + PAD) + max(groups - 1, 0) * GAP
    title_height = 20 if title else 0
    row_height = thumb + CAPTION_HEIGHT + PAD
    height = title_height + max(len(rows), 1) * row_height + PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, 4), title, fill="black", font=font)
    for r, row in enumerate(rows):
        top = title_height + PAD + r * row_height
        lines = textwrap.wrap(row.label, width=30)[: max(thumb // 12, 1)]
        for i, line in enumerate(lines):
            draw.text((PAD, top + i * 12), line, fill="black", font=font)
        x = LABEL_WIDTH + PAD
        for g, group in enumerate(row.groups):
            if g and group:
                draw.line([(x - GAP // 2 - PAD // 2, top), (x - GAP // 2 - PAD // 2, top + thumb)], fill="gray", width=1)
            for tile in group:
                image = tile.image.convert("RGB")
                image.thumbnail((thumb, thumb))
                sheet.paste(image, (x + (thumb - image.width) // 2, top + (thumb - image.height) // 2))
                draw.text((x, top + thumb + 1), tile.caption[:24], fill="black", font=font)
                x += thumb + PAD
            if group:
                x += GAP
    return sheet
